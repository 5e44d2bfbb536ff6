"""Mask-classification set loss with deep supervision (Mask2Former's SetCriterion).

For every prediction set: Hungarian matching, then class CE over all queries (unmatched -> void,
down-weighted) and sigmoid-BCE + dice of matched masks on uncertainty-sampled points.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ovs_jax.losses.mask_losses import classification_loss, dice_loss, sigmoid_bce_loss
from ovs_jax.losses.matching import hungarian_matcher
from ovs_jax.losses.point_sampling import labelled_points, neutral_where, uncertainty_points
from ovs_jax.ops.bilinear import point_sample


@dataclasses.dataclass(frozen=True)
class MaskLossConfig:
  """Loss weights and point sampling (the costs reuse the same three weights); the values live in
  the recipe's `config.loss` only (`from_config`)."""
  class_weight: float
  mask_weight: float
  dice_weight: float
  void_weight: float
  num_points: int
  oversample_ratio: float
  importance_sample_ratio: float

  @classmethod
  def from_config(cls, loss_config, **overrides):
    fields = {f.name: loss_config[f.name] for f in dataclasses.fields(cls)}
    return cls(**{**fields, **overrides})


def count_masks(targets):
  """Number of valid target masks in the (global, under jit) batch, at least 1."""
  return jnp.maximum(jnp.sum(targets['valid']), 1).astype(jnp.float32)


def match_set(rng, pred_logits, pred_masks, targets, config: MaskLossConfig):
  """(B, T) query matched to each target of one prediction set (-1: padding), as `set_loss` does
  with the same rng; for losses that reuse the matching (GKC's synonym CE and distillation)."""
  c = config
  return hungarian_matcher(jax.random.split(rng)[0], pred_logits, pred_masks, targets, c.num_points,
                           c.class_weight, c.mask_weight, c.dice_weight)


def matched_target_classes(match, labels, valid, num_queries, num_void):
  """(B, Q) class target of every query: its matched target's label, `num_void` when unmatched.

  match: (B, T) query per target (-1 padding); labels: (B, T) int; valid: (B, T) bool."""
  b = match.shape[0]
  valid = valid & (match >= 0)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], match.shape)
  # Padding scatters nowhere (index Q is dropped).
  return jnp.full((b, num_queries), num_void, jnp.int32).at[
      rows, jnp.where(valid, match, num_queries)].set(labels.astype(jnp.int32), mode='drop')


def set_loss(rng, pred_logits, pred_masks, targets, num_masks, config: MaskLossConfig, match=None,
             class_ignore=None):
  """Losses of one prediction set.

  Args:
    pred_logits: (B, Q, K+1), void last; pred_masks: (B, Q, h, w) logits.
    targets: {'labels': (B, T) int, 'masks': (B, T, H, W) in [0, 1], 'valid': (B, T) bool},
      optionally 'pixel_valid': (B, H, W) bool, pixels the mask losses and the matching may use.
    num_masks: valid masks in the global batch (`count_masks`).
    match: optional (B, T) precomputed `match_set` (same rng: the same matching).
    class_ignore: optional (B, Q) bool, queries left out of the class CE (GKC's region dropout).
  Returns:
    {'loss_ce', 'loss_mask', 'loss_dice'} unweighted scalars.
  """
  b, q = pred_logits.shape[:2]
  num_void = pred_logits.shape[-1] - 1
  _, rng_points = jax.random.split(rng)
  c = config
  if match is None:
    match = match_set(rng, pred_logits, pred_masks, targets, c)
  valid = targets['valid'] & (match >= 0)
  # Queries matched to a target learn its class; all others learn void.
  target_classes = matched_target_classes(match, targets['labels'], valid, q, num_void)
  loss_ce = classification_loss(pred_logits, target_classes, c.void_weight, class_ignore)

  src = jnp.take_along_axis(pred_masks, jnp.maximum(match, 0)[:, :, None, None], axis=1)
  src = src.reshape(-1, *src.shape[2:]).astype(jnp.float32)
  tgt = targets['masks'].reshape(-1, *targets['masks'].shape[2:]).astype(jnp.float32)
  points = uncertainty_points(rng_points, src, c.num_points, c.oversample_ratio,
                              c.importance_sample_ratio)
  point_logits = point_sample(src, points)
  point_labels = jax.lax.stop_gradient(point_sample(tgt, points))
  if 'pixel_valid' in targets:  # unlabelled pixels (e.g. unseen classes) are no mask's negatives
    t = targets['masks'].shape[1]
    pixel_valid = jnp.repeat(targets['pixel_valid'], t, axis=0)  # (B·T, H, W), image of each mask
    point_logits, point_labels = neutral_where(labelled_points(pixel_valid, points), point_logits,
                                               point_labels)
  valid = valid.reshape(-1)
  return {'loss_ce': loss_ce,
          'loss_mask': sigmoid_bce_loss(point_logits, point_labels, valid, num_masks),
          'loss_dice': dice_loss(point_logits, point_labels, valid, num_masks)}


def set_rngs(rng, num_sets):
  """The per-set rngs `mask_classification_loss` uses (to precompute its matchings)."""
  return jax.random.split(rng, num_sets)


def mask_classification_loss(rng, prediction_sets, targets, num_masks=None, *,
                             config: MaskLossConfig, matches=None, class_ignore=None):
  """Weighted set loss summed over all prediction sets (deep supervision).

  Args:
    prediction_sets: list of {'pred_logits': (B, Q, K+1), 'pred_masks': (B, Q, h, w)}, e.g.
      `heads.mask_former.prediction_sets(head_outputs)` after classification.
    targets: as in `set_loss`; num_masks: defaults to `count_masks(targets)`.
    matches, class_ignore: optional per-set lists of `set_loss`'s `match` and `class_ignore`.
  Returns:
    (total loss, {'loss_ce', 'loss_mask', 'loss_dice'} each summed over sets, and the same
    for the final set with suffix '_final'}).
  """
  if num_masks is None:
    num_masks = count_masks(targets)
  weights = {'loss_ce': config.class_weight, 'loss_mask': config.mask_weight,
             'loss_dice': config.dice_weight}
  n = len(prediction_sets)
  matches, class_ignore = matches or [None] * n, class_ignore or [None] * n
  per_set = [set_loss(r, s['pred_logits'], s['pred_masks'], targets, num_masks, config, m, i)
             for r, s, m, i in zip(set_rngs(rng, n), prediction_sets, matches, class_ignore)]
  terms = {k: sum(s[k] for s in per_set) for k in weights}
  total = sum(weights[k] * v for k, v in terms.items())
  terms.update({k + '_final': v for k, v in per_set[0].items()})
  return total, terms
