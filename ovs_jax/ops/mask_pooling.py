"""Average pooling of a feature map under binarised mask proposals (ODISE / FC-CLIP `MaskPooling`).

Masks are bilinearly resized (half-pixel centres, no antialias) to the feature grid when they differ,
binarised at logit > 0 (σ > 0.5) and not differentiated through; an empty mask pools to 0 (+1e-8).
Used by MAFT+ twice: the in-vocabulary branch pools the pixel decoder's mask features, the
out-of-vocabulary branch pools CLIP's trunk features.
"""
import jax
import jax.numpy as jnp

from ovs_jax.ops.resize import resize_nchw


def mask_pool(features, mask_logits):
  """features (B, h, w, C), mask_logits (B, Q, H, W) -> (B, Q, C) float32 mask averages."""
  b, h, w, _ = features.shape
  m = jax.lax.stop_gradient(mask_logits).astype(jnp.float32)
  if m.shape[2:] != (h, w):
    m = resize_nchw(m, h, w)
  m = (m > 0).astype(jnp.float32)
  m = m / (m.sum((2, 3), keepdims=True) + 1e-8)
  return jnp.einsum('bhwc,bqhw->bqc', features.astype(jnp.float32), m)
