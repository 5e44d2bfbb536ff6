"""Mask2Former's pixel decoder: deformable-attention encoder over strides 8/16/32 plus an FPN step
to stride 4 that yields the per-pixel mask features."""
import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.layers import conv, group_norm, layer_norm, linear, param
from ovs_jax.heads.ms_deform_attn import MSDeformAttn
from ovs_jax.ops.remat import remat_scan
from ovs_jax.ops.resize import resize
from ovs_jax.ops.position_encoding import sine_position_encoding

LEVELS = ('res5', 'res4', 'res3')  # deformable encoder levels, coarse to fine
FPN_LEVEL = 'res2'


class DeformableEncoderLayer(nnx.Module):
  """Post-norm layer: deformable self-attention over all levels, then FFN."""

  def __init__(self, dim, ffn_dim, num_heads, num_levels, num_points, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points, **kw)
    self.norm1 = layer_norm(dim, **kw)
    self.linear1 = linear(dim, ffn_dim, ('embed', 'mlp'), **kw)
    self.linear2 = linear(ffn_dim, dim, ('mlp', 'embed'), **kw)
    self.norm2 = layer_norm(dim, **kw)

  def __call__(self, src, pos, reference_points, spatial_shapes):
    src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
    return self.norm2(src + self.linear2(nnx.relu(self.linear1(src))))


class MSDeformAttnPixelDecoder(nnx.Module):
  """Multi-scale features -> mask features (stride 4) and refined features for the decoder.

  Args:
    in_channels: channels of the input levels, {'res2': C2, 'res3': C3, 'res4': C4, 'res5': C5}.
    conv_dim: encoder width (256); mask_dim: mask feature width (256).
    remat: recompute the encoder layers in the backward pass (less memory, ~1 more forward).
  """

  def __init__(self, in_channels, conv_dim=256, mask_dim=256, num_layers=6, ffn_dim=1024,
               num_heads=8, num_points=4, *, remat=False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    missing = set(LEVELS + (FPN_LEVEL,)) - set(in_channels)
    if missing:
      raise ValueError(f'pixel decoder needs input levels {sorted(missing)}; got {sorted(in_channels)}')
    self.dim, self.remat = conv_dim, remat
    self.input_proj = nnx.List([
        nnx.Sequential(conv(in_channels[k], conv_dim, 1, **kw), group_norm(conv_dim, **kw))
        for k in LEVELS])
    self.level_embed = param(nnx.initializers.normal(1.0), (len(LEVELS), conv_dim),
                             ('levels', 'embed'), rngs=rngs, param_dtype=param_dtype)
    self.layers = nnx.List([
        DeformableEncoderLayer(conv_dim, ffn_dim, num_heads, len(LEVELS), num_points, **kw)
        for _ in range(num_layers)])
    self.lateral_conv = conv(in_channels[FPN_LEVEL], conv_dim, 1, use_bias=False, **kw)
    self.lateral_norm = group_norm(conv_dim, **kw)
    self.output_conv = conv(conv_dim, conv_dim, 3, use_bias=False, **kw)
    self.output_norm = group_norm(conv_dim, **kw)
    self.mask_features = conv(conv_dim, mask_dim, 1, **kw)

  def __call__(self, features):
    """Args:
      features: {'res2': (B, H/4, W/4, C2), 'res3': /8, 'res4': /16, 'res5': /32}.
    Returns:
      mask_features (B, H/4, W/4, mask_dim) and the encoder outputs
      [(B, H/32, W/32, D), (B, H/16, W/16, D), (B, H/8, W/8, D)], coarse to fine.
    """
    b = features[LEVELS[0]].shape[0]
    shapes = tuple(features[k].shape[1:3] for k in LEVELS)
    srcs, pos = [], []
    for i, k in enumerate(LEVELS):
      h, w = shapes[i]
      srcs.append(self.input_proj[i](features[k]).reshape(b, h * w, self.dim))
      pos.append(sine_position_encoding(h, w, self.dim).reshape(h * w, self.dim)
                 + self.level_embed[i])
    src = jnp.concatenate(srcs, axis=1)
    pos = jnp.concatenate(pos, axis=0)[None].astype(src.dtype)
    # One reference point per token: its own pixel centre, shared by every level.
    centres = [jnp.stack(jnp.meshgrid((jnp.arange(w) + 0.5) / w, (jnp.arange(h) + 0.5) / h),
                         -1).reshape(h * w, 2) for h, w in shapes]
    reference_points = jnp.broadcast_to(jnp.concatenate(centres)[None, :, None],
                                        (b, src.shape[1], len(LEVELS), 2))
    if self.remat:
      src = remat_scan(self.layers, src, pos, reference_points, shapes)
    else:
      for layer in self.layers:
        src = layer(src, pos, reference_points, shapes)
    outs, start = [], 0
    for h, w in shapes:
      outs.append(src[:, start:start + h * w].reshape(b, h, w, self.dim))
      start += h * w
    # FPN: lateral stride-4 features plus the upsampled finest encoder level.
    x = features[FPN_LEVEL]
    y = self.lateral_norm(self.lateral_conv(x))
    y = y + resize(outs[-1], *y.shape[1:3]).astype(y.dtype)
    y = nnx.relu(self.output_norm(self.output_conv(y)))
    return self.mask_features(y), outs
