"""SimZSS's local concept loss L_l (Stegmüller et al., ICLR 2025, §3): each caption concept is
bound to the image patches that look like its class prototype, and the bound visual concept must
be classified among the bank's concept classes. As the release computes it (tileb1/simzss @2142ac5,
`src/open_clip/model.py` SimZSS.forward L629-697 and `ShallowDecoder` L759-770, `src/open_clip/
loss.py` ZSLoss.forward L470-515):

  c_l = Σ_{t ∈ span(l)} normalize(text token t)                     textual concept l
  h_k = normalize(Σ_{l in the group: label k} c_l)  (0 if none)     prototype of class k
  v_l = normalize(Σ_p softmax_p(h_{k(l)}·ẑ_p / τ_att) ẑ_p)          visual concept
  logits_lk = h_k·v_l / τ; classes absent from the whole step's batch get -inf
  target: argmax_k of the detached logits ("self", the release) or k(l) ("label", the paper)
  L_l = mean over groups of (mean CE over the group's concepts; 0 for a group without any)

A group is the samples whose prototypes are shared: the release builds them per GPU (its
per-device batch, 512 in the released checkpoint's args) while "present" counts the gathered
batch (loss.py L476-483); DDP then averages the per-GPU losses. `group_size=0` makes the whole
batch one group (the global form).
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


def _onehot(ids, valid, num_concepts: int):
  return ((ids[..., None] == jnp.arange(num_concepts)) & valid[..., None]).astype(jnp.float32)


def concept_prototypes(concepts, ids, valid, num_concepts: int):
  """c (B, C, D), bank ids (B, C) -> (h (K, D) unit prototypes (0 where absent), present (K,) bool)."""
  onehot = _onehot(ids, valid, num_concepts)
  summed = jnp.einsum("bck,bcd->kd", onehot, concepts)
  return l2_normalize(summed), onehot.sum((0, 1)) > 0


def visual_concepts(queries, patches, temperature: float):
  """queries (B, C, D) unit prototypes h_{k(l)}, patches (B, P, D) unit -> v (B, C, D) unit: each
  query's softmax-over-patches (at `temperature`) pooling of the patches."""
  attention = jax.nn.softmax(jnp.einsum("bcd,bpd->bcp", queries, patches) / temperature, axis=-1)
  return l2_normalize(jnp.einsum("bcp,bpd->bcd", attention, patches))


def _group_loss(c, valid, ids, patches, present, num_concepts, attention_temperature, temperature,
                target):
  """One group's mean CE (0 without concepts); `present` (K,) is over the whole batch."""
  h, _ = concept_prototypes(c, ids, valid, num_concepts)
  label = jnp.where(valid, ids, 0)
  v = visual_concepts(h[label], patches, attention_temperature)
  # Absent classes get a large finite negative, not -inf: a group without concepts then has
  # finite (masked) rows and a zero, not NaN, gradient.
  logits = jnp.where(present, jnp.einsum("bcd,kd->bck", v, h) / temperature, -1e9)
  if target == "self":  # self-labelling: the concept class the visual concept already matches best
    label = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, label[..., None], -1)[..., 0]
  return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def local_concept_loss(tokens, patches, ids, starts, ends, num_concepts: int, *,
                       attention_temperature: float = 0.1, temperature: float = 0.07,
                       target: str = "self", group_size: int = 0):
  """tokens (B, L, D) projected text tokens, patches (B, P, D) frozen patch tokens, concept spans
  (B, C) -> L_l. group_size: samples per prototype group (B a multiple of it; 0 or ≥ B: one)."""
  if target not in TARGETS:
    raise ValueError(f"local loss target {target!r}: expected one of {TARGETS}")
  b = ids.shape[0]
  g = b // group_size if 0 < group_size < b else 1
  if g > 1 and b != g * group_size:
    raise ValueError(f"loss.prototype_group={group_size}: the batch of {b} is not a multiple of it")
  c, valid = textual_concepts(tokens, ids, starts, ends)
  present = _onehot(ids, valid, num_concepts).sum((0, 1)) > 0
  unit = l2_normalize(patches.astype(jnp.float32))
  split = lambda x: x.reshape(g, b // g, *x.shape[1:])
  per_group = jax.vmap(lambda c, v, i, p: _group_loss(c, v, i, p, present, num_concepts,
                                                      attention_temperature, temperature, target))
  return per_group(split(c), split(valid), split(ids), split(unit)).mean()
