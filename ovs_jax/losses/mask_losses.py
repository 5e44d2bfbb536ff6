"""Per-mask losses on sampled points and their pairwise forms used as matching costs.

All take mask logits and float targets in [0, 1] at P points; per-mask values are summed over
valid masks and divided by `num_masks`, the number of valid masks in the whole global batch.
"""
import jax
import jax.numpy as jnp
import optax


def sigmoid_bce_loss(logits, targets, valid, num_masks):
  """Mean-over-points sigmoid BCE per mask. logits, targets (N, P); valid (N,) -> scalar."""
  per_mask = optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
  return jnp.sum(jnp.where(valid, per_mask, 0.0)) / num_masks


def dice_loss(logits, targets, valid, num_masks):
  """1 − (2|σ(m)·g| + 1) / (|σ(m)| + |g| + 1) per mask. logits, targets (N, P) -> scalar."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  per_mask = 1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)
  return jnp.sum(jnp.where(valid, per_mask, 0.0)) / num_masks


def pairwise_bce_cost(logits, targets):
  """Mean BCE of every prediction against every target. logits (Q, P), targets (T, P) -> (Q, T)."""
  # BCE(x, g) = softplus(x) − x·g, so one softplus per prediction serves every target.
  softplus = jax.nn.softplus(logits)
  return (softplus.sum(-1)[:, None] - logits @ targets.T) / logits.shape[-1]


def pairwise_dice_cost(logits, targets):
  """Dice loss of every prediction against every target. (Q, P), (T, P) -> (Q, T)."""
  p = jax.nn.sigmoid(logits)
  return 1 - (2 * p @ targets.T + 1) / (p.sum(-1)[:, None] + targets.sum(-1)[None] + 1)


def classification_loss(logits, target_classes, void_weight, ignore=None):
  """Cross-entropy over K+1 classes, the void class (last) weighted by `void_weight`.

  Args:
    logits: (B, Q, K+1); target_classes: (B, Q) int, K for unmatched queries.
    ignore: optional (B, Q) bool, queries left out (torch's `ignore_index`; GKC's region dropout).
  Returns:
    weighted mean Σ w·nll / Σ w, as torch's `cross_entropy(weight=..., ignore_index=...)`.
  """
  num_void = logits.shape[-1] - 1
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, target_classes[..., None], axis=-1)[..., 0]
  w = jnp.where(target_classes == num_void, void_weight, 1.0)
  if ignore is not None:
    w = jnp.where(ignore, 0.0, w)
  return jnp.sum(w * nll) / jnp.sum(w)

