"""Mask2Former's masked-attention transformer decoder (Cheng et al. 2022)."""
import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.layers import MLP, MultiHeadAttention, conv, layer_norm, linear, param
from ovs_jax.ops.resize import resize
from ovs_jax.ops.position_encoding import sine_position_encoding


def masked_cross_attention_mask(mask_logits, height, width):
  """Where each query may look at a level: its predicted mask (σ>0.5) resized to (H, W).

  Args:
    mask_logits: (B, Q, h, w) previous mask prediction.
  Returns:
    (B, 1, Q, H·W) bool, True = attend; a query whose mask is empty attends everywhere.
  """
  b, q = mask_logits.shape[:2]
  small = resize(mask_logits.transpose(0, 2, 3, 1).astype(jnp.float32), height, width)
  attend = (small >= 0).transpose(0, 3, 1, 2).reshape(b, 1, q, height * width)
  attend = attend | ~attend.any(-1, keepdims=True)
  return jax.lax.stop_gradient(attend)


class DecoderLayer(nnx.Module):
  """Post-norm: masked cross-attention -> self-attention -> FFN."""

  def __init__(self, dim, num_heads, ffn_dim, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cross_attn = MultiHeadAttention(dim, num_heads, **kw)
    self.cross_norm = layer_norm(dim, **kw)
    self.self_attn = MultiHeadAttention(dim, num_heads, **kw)
    self.self_norm = layer_norm(dim, **kw)
    self.linear1 = linear(dim, ffn_dim, ('embed', 'mlp'), **kw)
    self.linear2 = linear(ffn_dim, dim, ('mlp', 'embed'), **kw)
    self.ffn_norm = layer_norm(dim, **kw)

  def __call__(self, x, query_pos, memory, memory_pos, attend):
    """x, query_pos (B, Q, C); memory, memory_pos (B, HW, C); attend (B, 1, Q, HW) bool."""
    x = self.cross_norm(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, attend))
    qk = x + query_pos
    x = self.self_norm(x + self.self_attn(qk, qk, x))
    return self.ffn_norm(x + self.linear2(nnx.relu(self.linear1(x))))


class MaskedAttentionDecoder(nnx.Module):
  """Learnable queries refined layer by layer, each attending to one scale (coarse to fine, cycling).

  Args:
    in_dim: channels of the multi-scale features; dim: decoder width; mask_dim: mask feature width.
  """

  def __init__(self, in_dim=256, dim=256, mask_dim=256, num_queries=100, num_layers=9,
               num_heads=8, ffn_dim=2048, num_levels=3, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dim, self.num_levels, self.dtype = dim, num_levels, dtype
    normal = nnx.initializers.normal(1.0)
    self.query_feat = param(normal, (num_queries, dim), ('queries', 'embed'), rngs=rngs,
                            param_dtype=param_dtype)
    self.query_embed = param(normal, (num_queries, dim), ('queries', 'embed'), rngs=rngs,
                             param_dtype=param_dtype)
    self.level_embed = param(normal, (num_levels, dim), ('levels', 'embed'), rngs=rngs,
                             param_dtype=param_dtype)
    # A projection only where the feature width differs from the decoder width.
    self.input_proj = nnx.List([conv(in_dim, dim, 1, **kw) for _ in range(num_levels)]
                               if in_dim != dim else [])
    self.layers = nnx.List([DecoderLayer(dim, num_heads, ffn_dim, **kw) for _ in range(num_layers)])
    self.decoder_norm = layer_norm(dim, **kw)
    self.mask_embed = MLP(dim, dim, mask_dim, 3, **kw)

  def predict(self, x, mask_features):
    """Prediction heads on queries x (B, Q, C): normalised class features and mask logits."""
    x = self.decoder_norm(x)
    masks = jnp.einsum('bqc,bhwc->bqhw', self.mask_embed(x), mask_features.astype(x.dtype))
    return {'class_features': x, 'pred_masks': masks}

  def __call__(self, multi_scale_features, mask_features):
    """Args:
      multi_scale_features: [(B, H_l, W_l, in_dim)] coarse to fine (strides 32, 16, 8).
      mask_features: (B, H/4, W/4, mask_dim).
    Returns:
      list of num_layers+1 prediction sets (after the initial queries and after each layer),
      each {'class_features': (B, Q, dim), 'pred_masks': (B, Q, H/4, W/4)}.
    """
    if len(multi_scale_features) != self.num_levels:
      raise ValueError(f'decoder expects {self.num_levels} feature levels, got {len(multi_scale_features)}')
    b = mask_features.shape[0]
    memory, memory_pos, shapes = [], [], []
    for i, f in enumerate(multi_scale_features):
      h, w = f.shape[1:3]
      if len(self.input_proj):
        f = self.input_proj[i](f)
      memory.append(f.reshape(b, h * w, self.dim) + self.level_embed[i].astype(f.dtype))
      memory_pos.append(sine_position_encoding(h, w, self.dim, dtype=f.dtype).reshape(1, h * w, -1))
      shapes.append((h, w))
    x = jnp.broadcast_to(self.query_feat[None], (b, *self.query_feat.shape)).astype(self.dtype)
    query_pos = jnp.broadcast_to(self.query_embed[None], x.shape).astype(self.dtype)
    sets = [self.predict(x, mask_features)]
    for i, layer in enumerate(self.layers):
      level = i % self.num_levels
      attend = masked_cross_attention_mask(sets[-1]['pred_masks'], *shapes[level])
      x = layer(x, query_pos, memory[level], memory_pos[level], attend)
      sets.append(self.predict(x, mask_features))
    return sets
