"""CLIP's global contrastive loss (SimZSS's L_g): symmetric InfoNCE between paired image and text
embeddings with a learnable, clamped logit scale.

Under jit with the batch sharded over devices and hosts, `image @ text.T` is the (B, B) matrix of
the GLOBAL batch (XLA gathers what it needs), so every image is contrasted with every caption of
the step: OpenCLIP's `gather_with_grad` behaviour without explicit collectives.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on exp(logit_scale)


def logit_scale(log_scale, max_scale: float = MAX_LOGIT_SCALE):
  """exp(log_scale) clamped to ≤ max_scale (no gradient past the clamp, as CLIP's in-place clamp)."""
  return jnp.minimum(jnp.exp(log_scale.astype(jnp.float32)), max_scale)


def symmetric_infonce(image, text, scale):
  """image, text (B, D) L2-normalised, pair i on the diagonal; scale a scalar ->
  ½ (CE over texts for each image + CE over images for each text), mean over the batch."""
  logits = scale * (image.astype(jnp.float32) @ text.astype(jnp.float32).T)  # (B, B)
  diagonal = jnp.diagonal(logits)
  per_image = jax.nn.logsumexp(logits, axis=1) - diagonal
  per_text = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (per_image.mean() + per_text.mean())
