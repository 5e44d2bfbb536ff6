"""Multi-scale deformable attention layer: predicts sampling offsets and weights from each query."""
import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.layers import linear, zeros
from ovs_jax.ops.deformable_attention import multi_scale_deformable_attention


def _offset_bias_init(num_heads, num_levels, num_points):
  """Heads start looking in evenly spread directions, point k at distance k+1 (Deformable DETR)."""
  def init(key, shape, dtype):
    theta = np.arange(num_heads) * (2 * math.pi / num_heads)
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None], (1, num_levels, num_points, 1))
    grid = grid * np.arange(1, num_points + 1)[None, None, :, None]
    return jnp.asarray(grid.reshape(shape), dtype)
  return init


class MSDeformAttn(nnx.Module):
  """Deformable attention over several feature levels (dim, heads, levels, points per level)."""

  def __init__(self, dim, num_heads=8, num_levels=3, num_points=4, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
    self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    n = num_heads * num_levels * num_points
    self.sampling_offsets = linear(dim, n * 2, ('embed', None), kernel_init=zeros,
                                   bias_init=_offset_bias_init(num_heads, num_levels, num_points),
                                   **kw)
    self.attention_weights = linear(dim, n, ('embed', None), kernel_init=zeros, **kw)
    self.value_proj = linear(dim, dim, ('embed', 'heads'), **kw)
    self.output_proj = linear(dim, dim, ('heads', 'embed'), **kw)

  def __call__(self, query, reference_points, value, spatial_shapes):
    """Deformable attention of queries over flattened multi-level values.

    Args:
      query: (B, Lq, C) queries (with positional encoding added).
      reference_points: (B, Lq, nL, 2) normalised (x, y) reference point per level.
      value: (B, S, C) flattened input features of all levels, S = Σ H_l·W_l.
      spatial_shapes: static ((H_l, W_l), ...).
    Returns:
      (B, Lq, C).
    """
    b, lq, c = query.shape
    nh, nl, npt = self.num_heads, self.num_levels, self.num_points
    v = self.value_proj(value).reshape(b, value.shape[1], nh, c // nh)
    offsets = self.sampling_offsets(query).reshape(b, lq, nh, nl, npt, 2)
    weights = nnx.softmax(self.attention_weights(query).reshape(b, lq, nh, nl * npt)
                          .astype(jnp.float32), axis=-1).reshape(b, lq, nh, nl, npt)
    # Offsets are in pixels of their level; divide by (W_l, H_l) to normalise.
    normaliser = jnp.array([[w, h] for h, w in spatial_shapes], jnp.float32)
    locations = (reference_points[:, :, None, :, None, :].astype(jnp.float32)
                 + offsets.astype(jnp.float32) / normaliser[None, None, None, :, None, :])
    out = multi_scale_deformable_attention(v, spatial_shapes, locations, weights)
    return self.output_proj(out)
