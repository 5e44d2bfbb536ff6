"""Simple feature pyramid (ViTDet, Li et al. 2022): one stride-16 ViT map -> strides 4/8/16/32.

Its output dict {'res2', 'res3', 'res4', 'res5'} is the mask head's input interface; a
convolutional backbone (ConvNeXt) provides the same dict directly.
"""
import jax.numpy as jnp
from flax import nnx

from ovs_jax.layers import conv, layer_norm, param, xavier, zeros

LEVELS = ('res2', 'res3', 'res4', 'res5')


class Upsample2x(nnx.Module):
  """2×2 transposed convolution with stride 2, as PyTorch's ConvTranspose2d(k=2, s=2).

  Each input pixel writes its own 2×2 output block, so it is one matmul and a pixel shuffle;
  XLA:CPU runs the generic dilated-convolution form about 100× slower.
  """

  def __init__(self, din, dout, *, dtype, param_dtype, rngs):
    self.dtype = dtype
    self.kernel = param(xavier, (2, 2, din, dout), (None, None, 'conv_in', 'conv_out'), rngs=rngs,
                        param_dtype=param_dtype)
    self.bias = param(zeros, (dout,), ('conv_out',), rngs=rngs, param_dtype=param_dtype)

  def __call__(self, x):
    """(B, h, w, Cin) -> (B, 2h, 2w, Cout): out[2y+i, 2x+j] = Σ_c x[y, x, c]·K[i, j, c]."""
    b, h, w, _ = x.shape
    dtype = self.dtype or x.dtype
    y = jnp.einsum('bhwc,ijco->bhiwjo', x.astype(dtype), self.kernel[...].astype(dtype))
    return y.reshape(b, 2 * h, 2 * w, -1) + self.bias[...].astype(dtype)


class SimpleFeaturePyramid(nnx.Module):
  """(B, h, w, D) stride-16 map -> {'res2': (B, 4h, 4w, C), 'res3': 2h, 'res4': h, 'res5': h/2}.

  Scales: 4× up (two 2×2 transposed convs), 2× up, identity, 2×2 max-pool; then per level a 1×1
  and a 3×3 conv, each followed by LayerNorm, to `out_dim` channels.
  """

  def __init__(self, in_dim, out_dim=256, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.up4_1 = Upsample2x(in_dim, in_dim // 2, **kw)
    self.up4_norm = layer_norm(in_dim // 2, eps=1e-6, **kw)
    self.up4_2 = Upsample2x(in_dim // 2, in_dim // 4, **kw)
    self.up2 = Upsample2x(in_dim, in_dim // 2, **kw)
    level_dims = (in_dim // 4, in_dim // 2, in_dim, in_dim)
    self.lateral = nnx.List([conv(d, out_dim, 1, use_bias=False, **kw) for d in level_dims])
    self.lateral_norm = nnx.List([layer_norm(out_dim, eps=1e-6, **kw) for _ in LEVELS])
    self.output = nnx.List([conv(out_dim, out_dim, 3, use_bias=False, **kw) for _ in LEVELS])
    self.output_norm = nnx.List([layer_norm(out_dim, eps=1e-6, **kw) for _ in LEVELS])

  def __call__(self, x):
    """x: (B, h, w, D) stride-16 features, or 4 of them, one per level (res2..res5: e.g. the
    outputs of ViT blocks 4/6/8/12 as GKC's ViT option) -> dict of (B, H_s, W_s, out_dim) per level."""
    x2, x3, x4, x5 = x if isinstance(x, (list, tuple)) else (x,) * 4
    scaled = (
        self.up4_2(nnx.gelu(self.up4_norm(self.up4_1(x2)), approximate=False)),
        self.up2(x3),
        x4,
        nnx.max_pool(x5, (2, 2), (2, 2)),
    )
    out = {}
    for i, (name, y) in enumerate(zip(LEVELS, scaled)):
      y = self.lateral_norm[i](self.lateral[i](y))
      out[name] = self.output_norm[i](self.output[i](y))
    return out

  @staticmethod
  def channels(out_dim=256):
    """The channel dict the pixel decoder is built with."""
    return {k: out_dim for k in LEVELS}
