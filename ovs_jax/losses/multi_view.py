"""MVP-SEG's losses (Guo et al. 2023, "MVP-SEG: Multi-View Prompt Learning for Open-Vocabulary
Semantic Segmentation", §3): pixel cross-entropy, the image-level class loss and the orthogonal
constraint on the views' prompts. There is no public code; DESIGN §7 has the formulas.

Ignored pixels (void, padding and, under the zero-shot protocol, unseen classes) are removed with
`where` before any arithmetic, so whatever values they hold (even NaN) change neither the loss nor
its gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ovs_jax.models.clip import l2_normalize


def pixel_cross_entropy(log_probs, label, num_classes: int):
  """log_probs (B, H, W, C) normalised over C, label (B, H, W) -> mean CE over labelled pixels
  (label in [0, C); anything else, e.g. 255, is ignored). L_seg."""
  valid = (label >= 0) & (label < num_classes)
  picked = jnp.take_along_axis(log_probs, jnp.where(valid, label, 0)[..., None], -1)[..., 0]
  nll = -jnp.where(valid, picked, 0.0)
  return nll.sum() / jnp.maximum(valid.sum(), 1)


def classes_present(label, num_classes: int):
  """(B, H, W) labels -> (B, C) 1.0 where the class labels at least one pixel of the image."""
  onehot = jax.nn.one_hot(label, num_classes, dtype=jnp.float32)  # ignore ids -> all zeros
  return (onehot.sum((1, 2)) > 0).astype(jnp.float32)


def image_level_loss(class_logits, label, num_classes: int):
  """Binary cross-entropy of σ(class_logits (B, C)) against the classes present in `label`. L_cls."""
  targets = classes_present(label, num_classes)
  return optax.sigmoid_binary_cross_entropy(class_logits.astype(jnp.float32), targets).mean()


def orthogonal_constraint_loss(contexts):
  """contexts (k, n, D) of the k views -> Σ_{i<j} |cos(mean_n p_i, mean_n p_j)|. L_OC."""
  means = l2_normalize(contexts.astype(jnp.float32).mean(1))
  cos = means @ means.T
  return jnp.abs(jnp.triu(cos, k=1)).sum()
