"""Content-Dependent Transfer (MAFT+, Jiao et al. 2024): text classifiers attend to the image.

One cross-attention layer (no self-attention, no FFN): queries are the text-classifier rows (no
positional encoding), keys the dense CLIP map plus a normalised 2-D sine encoding, values the map.
Semantic: T' = LN(T + Linear(Attn)); panoptic: T' = T + LN(Linear(Attn)) with Linear zero at init,
so CDT starts as the identity. T' is not re-normalised (MAFT+ `content_dependent_transfer.py`).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.layers import layer_norm, linear, zeros
from ovs_jax.ops.attention import multi_head_attention
from ovs_jax.ops.position_encoding import sine_position_encoding

# torch.nn.MultiheadAttention keeps q, k, v stacked as one (3D, D) matrix that MAFT+ xavier-inits
# as a whole: per (D, D) block that is fan_avg = 2D, half the variance of a separate xavier.
_in_proj_init = nnx.initializers.variance_scaling(0.5, 'fan_avg', 'uniform')
# MAFT+ builds the Linear after its xavier pass, so it keeps torch's default U(±1/√fan_in).
_torch_linear_init = nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def _torch_linear_bias_init(fan_in):
  def init(key, shape, dtype=jnp.float32):
    bound = 1 / fan_in ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class ContentDependentTransfer(nnx.Module):
  """Image-conditioned text classifier.

  Args:
    dim: text / dense CLIP width D (divisible by num_heads and by 4).
    num_heads: attention heads (8 in MAFT+).
    mode: 'semantic' (post-norm residual) or 'panoptic' (zero-initialised, normed residual).
  Parameter names mirror torch: attn.{q,k,v,out}_proj, norm, mlp (MAFT+'s `MLP` Linear).
  """

  def __init__(self, dim, num_heads=8, mode='semantic', *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if mode not in ('semantic', 'panoptic'):
      raise ValueError(f"CDT mode must be 'semantic' or 'panoptic', got {mode!r}")
    if dim % num_heads or dim % 4:
      raise ValueError(f'CDT width {dim} must be divisible by num_heads={num_heads} and by 4')
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dim, self.num_heads, self.mode, self.dtype = dim, num_heads, mode, dtype
    self.attention_impl = 'auto'  # set for a whole model by `layers.set_attention`
    self.q_proj = linear(dim, dim, ('embed', 'heads'), kernel_init=_in_proj_init, **kw)
    self.k_proj = linear(dim, dim, ('embed', 'heads'), kernel_init=_in_proj_init, **kw)
    self.v_proj = linear(dim, dim, ('embed', 'heads'), kernel_init=_in_proj_init, **kw)
    self.out_proj = linear(dim, dim, ('heads', 'embed'), **kw)
    if mode == 'panoptic':
      self.mlp = linear(dim, dim, ('embed', 'mlp'), kernel_init=zeros, bias_init=zeros, **kw)
    else:
      self.mlp = linear(dim, dim, ('embed', 'mlp'), kernel_init=_torch_linear_init,
                        bias_init=_torch_linear_bias_init(dim), **kw)
    self.norm = layer_norm(dim, **kw)

  def __call__(self, text, dense):
    """text (K, D) or (B, K, D) classifier rows; dense (B, h, w, D) CLIP map -> (B, K, D)."""
    b, h, w, d = dense.shape
    if d != self.dim or text.shape[-1] != self.dim or text.ndim not in (2, 3):
      raise ValueError(f'CDT of width {self.dim} got text {text.shape} and dense {dense.shape}; '
                       'expected (K, D) or (B, K, D) and (B, h, w, D)')
    if text.ndim == 2:
      text = jnp.broadcast_to(text[None], (b,) + text.shape)
    text = text.astype(self.dtype)
    memory = dense.reshape(b, h * w, d).astype(self.dtype)
    pos = sine_position_encoding(h, w, d, dtype=self.dtype, offset=0.0).reshape(1, h * w, d)

    attn = self.out_proj(multi_head_attention(self.q_proj(text), self.k_proj(memory + pos),
                                              self.v_proj(memory), self.num_heads,
                                              impl=self.attention_impl))
    if self.mode == 'panoptic':
      return text + self.norm(self.mlp(attn))
    return self.norm(text + self.mlp(attn))
