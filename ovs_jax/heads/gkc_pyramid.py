"""GKC's ViT pyramid (the release's `CLIPVisionTransformer`, mask2former/clip_models.py:526-545,
patch 16): the token maps after four blocks (OUT_INDICES 3, 5, 7, 11 of config.py:169) become
res2..res5 at strides 4, 8, 16, 32, each keeping the ViT's width:
  res2 = ConvT(GELU(BN(ConvT(GN(x₁)))))   4× up (two 2×2 transposed convolutions)
  res3 = ConvT(GN(x₂))                    2× up
  res4 = GN(x₃)
  res5 = MaxPool₂(GN(x₄))                 2× down
GN = GroupNorm with one group (over H, W and channels), ConvT = ConvTranspose2d(k=2, s=2), BN the
release's SyncBatchNorm, GELU exact (erf). Unlike ViTDet's pyramid (`feature_pyramid.py`) there are
no 1×1/3×3 output convolutions: the pixel decoder's input projections read these maps directly.

BN: the release trains it in train mode (SyncBatchNorm: statistics of the global batch, running
statistics updated); here it is a `FrozenBatchNorm` at its running statistics (initially 0 / 1, or
those of an imported checkpoint), as every BatchNorm of ours; docs/gkc.md, row 1.
"""
import jax.numpy as jnp
from flax import nnx

from ovs_jax.heads.feature_pyramid import LEVELS, Upsample2x
from ovs_jax.layers import FrozenBatchNorm


def _group_norm(d, **kw):
  # Two-pass variance as PyTorch's (the one-pass form loses ~1e-4 on large means).
  return nnx.GroupNorm(d, num_groups=1, epsilon=1e-5, use_fast_variance=False, **kw)


class GKCPyramid(nnx.Module):
  """Four (B, h, w, D) stride-16 ViT maps -> {'res2': (B, 4h, 4w, D), 'res3': 2h, 'res4': h,
  'res5': h/2} (see the module docstring)."""

  def __init__(self, dim, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fpn1_norm = _group_norm(dim, **kw)
    self.fpn1_up1 = Upsample2x(dim, dim, **kw)
    self.fpn1_bn = FrozenBatchNorm(dim, **kw)
    self.fpn1_up2 = Upsample2x(dim, dim, **kw)
    self.fpn2_norm = _group_norm(dim, **kw)
    self.fpn2_up = Upsample2x(dim, dim, **kw)
    self.fpn3_norm = _group_norm(dim, **kw)
    self.fpn4_norm = _group_norm(dim, **kw)
    self.dim = dim

  def __call__(self, x):
    """x: 4 maps (B, h, w, D), one per level (res2..res5), or one map used for all four."""
    x1, x2, x3, x4 = x if isinstance(x, (list, tuple)) else (x,) * 4
    up = self.fpn1_up1(self.fpn1_norm(x1))
    res2 = self.fpn1_up2(nnx.gelu(self.fpn1_bn(up), approximate=False))
    res3 = self.fpn2_up(self.fpn2_norm(x2))
    res4 = self.fpn3_norm(x3)
    res5 = nnx.max_pool(self.fpn4_norm(x4), (2, 2), (2, 2))
    return dict(zip(LEVELS, (res2, res3, res4, res5)))

  def channels(self):
    """The channel dict the pixel decoder is built with: the ViT's width at every level."""
    return {k: self.dim for k in LEVELS}
