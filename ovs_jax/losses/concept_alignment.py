"""SimZSS's local concept loss L_l (Stegmüller et al., ICLR 2025, §3; DESIGN §6): each caption
concept is bound to the image patches that look like its class prototype, and the bound visual
concept must be classified as that concept among the concepts present in the batch.

  c_l = Σ_{t ∈ span(l)} normalize(text token t)                     textual concept l
  h_k = normalize(Σ_{l: label k} c_l)                               prototype of concept class k
  v_l = normalize(Σ_p softmax_p(h_{k(l)}·z_p / τ_att) z_p)          visual concept (z_p unit patches)
  logits_lk = h_k·v_l / τ over the classes k present in the batch
  target: argmax_k of the detached logits ("self", the official code) or k(l) ("label", the paper)

Prototypes and "present" are over the GLOBAL batch (a one-hot sum over the bank under jit).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from input_pipeline.concepts import concept_token_mask
from ovs_jax.models.clip import l2_normalize

TARGETS = ("self", "label")


def textual_concepts(tokens, ids, starts, ends):
  """tokens (B, L, D) projected text tokens; ids/starts/ends (B, C) -> (c (B, C, D), valid (B, C))."""
  valid = ids >= 0
  mask = concept_token_mask(starts, ends, tokens.shape[1]) & valid[..., None]  # (B, C, L)
  unit = l2_normalize(tokens.astype(jnp.float32))
  return jnp.einsum("bcl,bld->bcd", mask.astype(jnp.float32), unit), valid


def concept_prototypes(concepts, ids, valid, num_concepts: int):
  """c (B, C, D), bank ids (B, C) -> (h (K, D) unit prototypes, present (K,) bool) over the batch."""
  onehot = ((ids[..., None] == jnp.arange(num_concepts)) & valid[..., None]).astype(jnp.float32)
  summed = jnp.einsum("bck,bcd->kd", onehot, concepts)
  return l2_normalize(summed), onehot.sum((0, 1)) > 0


def visual_concepts(queries, patches, temperature: float):
  """queries (B, C, D) unit prototypes h_{k(l)}, patches (B, P, D) unit -> v (B, C, D) unit: each
  query's softmax-over-patches (at `temperature`) pooling of the patches."""
  attention = jax.nn.softmax(jnp.einsum("bcd,bpd->bcp", queries, patches) / temperature, axis=-1)
  return l2_normalize(jnp.einsum("bcp,bpd->bcd", attention, patches))


def local_concept_loss(tokens, patches, ids, starts, ends, num_concepts: int, *,
                       attention_temperature: float = 0.1, temperature: float = 0.07,
                       target: str = "self"):
  """tokens (B, L, D) projected text tokens, patches (B, P, D) frozen patch tokens, concept spans
  (B, C) -> mean CE over the batch's concepts (0 when it has none)."""
  if target not in TARGETS:
    raise ValueError(f"local loss target {target!r}: expected one of {TARGETS}")
  c, valid = textual_concepts(tokens, ids, starts, ends)
  h, present = concept_prototypes(c, ids, valid, num_concepts)
  label = jnp.where(valid, ids, 0)
  v = visual_concepts(h[label], l2_normalize(patches.astype(jnp.float32)), attention_temperature)
  # Absent classes get a large finite negative, not -inf: a batch without concepts then has
  # finite (masked) rows and a zero, not NaN, gradient.
  logits = jnp.where(present, jnp.einsum("bcd,kd->bck", v, h) / temperature, -1e9)
  if target == "self":  # self-labelling: the concept class the visual concept already matches best
    label = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, label[..., None], -1)[..., 0]
  return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(valid.sum(), 1)
