"""Uncertainty-based point sampling (PointRend, Kirillov et al. 2020), as Mask2Former trains masks.

Mask losses are computed on a few thousand points per mask instead of every pixel: a fraction of
the points are the most uncertain (logit nearest 0) among an oversampled uniform set, the rest are
uniform, which keeps memory flat at any mask resolution.
"""
import jax
import jax.numpy as jnp

from ovs_jax.ops.bilinear import point_sample


def uniform_points(rng, n, num_points):
  """(n, num_points, 2) uniform normalised (x, y)."""
  return jax.random.uniform(rng, (n, num_points, 2))


def uncertainty_points(rng, mask_logits, num_points, oversample_ratio=3.0,
                       importance_sample_ratio=0.75):
  """Points where the mask logits are most uncertain, plus uniform ones.

  Args:
    mask_logits: (N, H, W) predicted mask logits (gradients are not taken through the choice).
  Returns:
    (N, num_points, 2) normalised (x, y): first round(importance·num_points) importance points.
  """
  n = mask_logits.shape[0]
  n_over = int(num_points * oversample_ratio)
  n_important = int(importance_sample_ratio * num_points)
  rng_over, rng_rand = jax.random.split(rng)
  candidates = uniform_points(rng_over, n, n_over)
  uncertainty = -jnp.abs(point_sample(jax.lax.stop_gradient(mask_logits).astype(jnp.float32),
                                      candidates))
  _, top = jax.lax.top_k(uncertainty, n_important)
  important = jnp.take_along_axis(candidates, top[..., None], axis=1)
  rest = uniform_points(rng_rand, n, num_points - n_important)
  return jnp.concatenate([important, rest], axis=1)



def labelled_points(pixel_valid, points):
  """pixel_valid (N, H, W) bool, points (N, P, 2) -> (N, P) bool: points on labelled pixels."""
  return jax.lax.stop_gradient(point_sample(pixel_valid.astype(jnp.float32), points)) > 0.5


def neutral_where(keep, point_logits, point_labels):
  """Mask logits / targets at points with the points not kept made neutral: logit −1e4 against
  target 0 adds nothing to BCE, dice or their matching costs and passes no gradient."""
  return jnp.where(keep, point_logits, -1e4), jnp.where(keep, point_labels, 0.0)
