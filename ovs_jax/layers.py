"""Layer factories that attach logical axis names to every parameter (for the sharding rules,
docs/scaling.md), shared by the backbones and the heads, and the multi-head attention layer built
on `ops.attention`."""
import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.ops.attention import IMPLS as ATTENTION_IMPLS, multi_head_attention

# Parameters carry logical axis names only; `ovs_jax.sharding` places them on a mesh by rules at
# jit time, so no mesh is needed to build a model (every model builds its layers from here).
nnx.use_eager_sharding(False)

xavier = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def linear(din, dout, names, *, dtype, param_dtype=jnp.float32, rngs, use_bias=True,
           kernel_init=xavier, bias_init=zeros):
  """Dense layer with kernel axes `names` (in, out); the bias takes the output axis name."""
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nnx.with_partitioning(kernel_init, names),
                    bias_init=nnx.with_partitioning(bias_init, names[1:]), rngs=rngs)


def conv(din, dout, kernel, *, dtype, param_dtype=jnp.float32, rngs, stride=1, use_bias=True):
  """NHWC convolution, 'SAME' padding; kernel (k, k, in, out)."""
  return nnx.Conv(din, dout, (kernel, kernel), (stride, stride), padding='SAME',
                  use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=nnx.with_partitioning(xavier, (None, None, 'conv_in', 'conv_out')),
                  bias_init=nnx.with_partitioning(zeros, ('conv_out',)), rngs=rngs)


def layer_norm(d, *, dtype, param_dtype=jnp.float32, rngs, eps=1e-5, exact_variance=False):
  """exact_variance: two-pass variance (PyTorch's), for parity with pre-trained towers."""
  return nnx.LayerNorm(d, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       use_fast_variance=not exact_variance,
                       scale_init=nnx.with_partitioning(ones, ('norm',)),
                       bias_init=nnx.with_partitioning(zeros, ('norm',)), rngs=rngs)


def group_norm(d, *, dtype, param_dtype=jnp.float32, rngs, groups=32, eps=1e-5):
  return nnx.GroupNorm(d, num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       scale_init=nnx.with_partitioning(ones, ('norm',)),
                       bias_init=nnx.with_partitioning(zeros, ('norm',)), rngs=rngs)


def param(init, shape, names, *, rngs, param_dtype=jnp.float32):
  """A free parameter tensor (query embeddings, level embeddings, ...)."""
  return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, param_dtype))


class BatchCount(nnx.Variable):
  """PyTorch BatchNorm's `num_batches_tracked` step counter (int32 here, int64 in PyTorch)."""


class FrozenBatchNorm(nnx.Module):
  """BatchNorm in eval mode over the last axis (detectron2's `FrozenBatchNorm2d`):
  y = (x - mean) * scale / sqrt(var + eps) + bias, computed in float32, returned in `dtype`.

  `scale` and `bias` are nnx.Params; the running `mean` and `var` are nnx.BatchStats, which no step
  re-estimates and no optimizer sees (the trainer trains nnx.Params only). They travel as PyTorch's
  `weight`, `bias`, `running_mean`, `running_var` (interchange.clip_keys). `num_batches_tracked`
  (a BatchCount) is read by nothing: it is kept so that a PyTorch state dict round-trips with its
  keys and values.
  """

  def __init__(self, d, *, dtype, param_dtype=jnp.float32, rngs, eps=1e-5, scale_init=ones):
    self.scale = param(scale_init, (d,), ('norm',), rngs=rngs, param_dtype=param_dtype)
    self.bias = param(zeros, (d,), ('norm',), rngs=rngs, param_dtype=param_dtype)
    self.mean = nnx.BatchStat(jnp.zeros((d,), param_dtype), out_sharding=('norm',))
    self.var = nnx.BatchStat(jnp.ones((d,), param_dtype), out_sharding=('norm',))
    self.num_batches_tracked = BatchCount(jnp.zeros((), jnp.int32), out_sharding=())
    self.eps, self.dtype = eps, dtype

  def __call__(self, x):
    s = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
    return (x.astype(jnp.float32) * s + (self.bias[...] - self.mean[...] * s)).astype(self.dtype)


class MLP(nnx.Module):
  """`num_layers` dense layers with ReLU between them (DETR's prediction MLP)."""

  def __init__(self, din, dhidden, dout, num_layers, *, dtype, param_dtype=jnp.float32, rngs):
    dims = [din] + [dhidden] * (num_layers - 1) + [dout]
    # Alternate logical names so no kernel maps one mesh axis onto both of its dimensions.
    names = [('embed', 'mlp') if i % 2 == 0 else ('mlp', 'embed') for i in range(num_layers)]
    names[-1] = (names[-1][0], None)
    self.layers = nnx.List([
        linear(a, b, n, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for a, b, n in zip(dims[:-1], dims[1:], names)])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = nnx.relu(x)
    return x


class MultiHeadAttention(nnx.Module):
  """q/k/v/out projections (HF and torch names) around `ops.attention.multi_head_attention`."""

  def __init__(self, dim, num_heads, *, dtype, param_dtype=jnp.float32, rngs, kernel_init=xavier):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_init=kernel_init)
    self.num_heads = num_heads
    self.attention_impl = "auto"  # set for a whole model by `set_attention`
    self.q_proj = linear(dim, dim, ('embed', 'heads'), **kw)
    self.k_proj = linear(dim, dim, ('embed', 'heads'), **kw)
    self.v_proj = linear(dim, dim, ('embed', 'heads'), **kw)
    self.out_proj = linear(dim, dim, ('heads', 'embed'), **kw)

  def __call__(self, q, k, v, mask=None, *, is_causal=False):
    """q (B, Lq, C), k and v (B, Lk, C), mask broadcastable to (B, heads, Lq, Lk) -> (B, Lq, C)."""
    out = multi_head_attention(self.q_proj(q), self.k_proj(k), self.v_proj(v), self.num_heads,
                               mask=mask, is_causal=is_causal, impl=self.attention_impl)
    return self.out_proj(out)

  def value_path(self, x):
    """MaskCLIP: each token keeps its own value (attention replaced by the identity)."""
    return self.out_proj(self.v_proj(x))


def set_attention(model: nnx.Module, impl: str) -> nnx.Module:
  """Every attention of `model` (any module with an `attention_impl` attribute) uses `impl`, one of
  `ops.attention.IMPLS` (config.model.attention); a static attribute, so it is part of the graphdef
  and of every jitted function built from it."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"config.model.attention={impl!r}: expected one of {ATTENTION_IMPLS}")
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.Module) and hasattr(module, 'attention_impl'):
      module.attention_impl = impl
  return model
