"""Bipartite matching of predictions to ground-truth segments (Mask2Former's matcher).

Cost = w_class·(−p(class)) + w_bce·BCE + w_dice·dice, masks compared on points sampled uniformly
(the same points for every query and target of an image). Runs under jit, vmapped over images.
"""
import jax
import jax.numpy as jnp

from ovs_jax.losses.mask_losses import pairwise_bce_cost, pairwise_dice_cost
from ovs_jax.losses.point_sampling import labelled_points, neutral_where, uniform_points
from ovs_jax.ops.bilinear import point_sample
from ovs_jax.ops.hungarian import hungarian_match


def matching_cost(logits, mask_logits, labels, masks, points, class_weight=2.0, bce_weight=5.0,
                  dice_weight=5.0, pixel_valid=None):
  """Cost of assigning each query to each target of one image.

  Args:
    logits: (Q, K+1) class logits; mask_logits: (Q, h, w).
    labels: (T,) int; masks: (T, H, W) targets in [0, 1]; points: (P, 2) normalised (x, y).
    pixel_valid: optional (H, W) bool; points on other pixels cost nothing.
  Returns:
    (Q, T) float32 cost.
  """
  q, t = mask_logits.shape[0], masks.shape[0]
  prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  class_cost = -jnp.take(prob, jnp.clip(labels, 0, logits.shape[-1] - 1), axis=1)
  pred = point_sample(mask_logits.astype(jnp.float32), jnp.broadcast_to(points, (q, *points.shape)))
  gt = point_sample(masks.astype(jnp.float32), jnp.broadcast_to(points, (t, *points.shape)))
  if pixel_valid is not None:
    pred, gt = neutral_where(labelled_points(pixel_valid[None], points[None]), pred, gt)
  return (class_weight * class_cost + bce_weight * pairwise_bce_cost(pred, gt)
          + dice_weight * pairwise_dice_cost(pred, gt))


def hungarian_matcher(rng, pred_logits, pred_masks, targets, num_points=12544, class_weight=2.0,
                      bce_weight=5.0, dice_weight=5.0):
  """Query index matched to each target of each image, without gradients.

  Args:
    pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) logits.
    targets: {'labels': (B, T) int, 'masks': (B, T, H, W), 'valid': (B, T) bool}.
  Returns:
    (B, T) int32 query indices, -1 where the target is padding.
  """
  b = pred_logits.shape[0]
  points = uniform_points(rng, b, num_points)
  cost_fn = lambda *a, pixel_valid: matching_cost(*a, class_weight, bce_weight, dice_weight,
                                                 pixel_valid)
  cost = jax.vmap(cost_fn)(jax.lax.stop_gradient(pred_logits), jax.lax.stop_gradient(pred_masks),
                           targets['labels'], targets['masks'], points,
                           pixel_valid=targets.get('pixel_valid'))
  return jax.vmap(hungarian_match)(cost, targets['valid'])
