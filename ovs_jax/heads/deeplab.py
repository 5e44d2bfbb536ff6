"""DeepLab decoders as MaskCLIP+ builds them for its students (`forward_module`: the features before
any classifier; MaskCLIP+ classifies them with CLIP text embeddings, `methods/maskclip_plus.py`).

* `DeepLabV2Head` = MaskCLIP's `ASPPHeadV2` (`decode_heads/aspp_headv2.py:9-85`): one ConvModule
  per dilation (1x1 when the dilation is 1, else 3x3 dilated), each conv+BN+ReLU, summed.
  MaskCLIP+ VOC / COCO-Stuff: dilations (6, 12, 18, 24) (`_base_/models/maskclip_plus_r50.py:26-30`).
* `DeepLabV3PlusHead` = mmseg's `DepthwiseSeparableASPPHead` (`decode_heads/sep_aspp_head.py`):
  image pooling + ASPP (depthwise-separable for dilations > 1), a 3x3 bottleneck, the res2 skip
  through a 1x1 to `c1_channels`, two depthwise-separable 3x3 convs at stride 4. MaskCLIP+ PASCAL
  Context: dilations (1, 12, 24, 36), c1 256 -> 48 (`maskclip_plus_..._pascal_context.py:18-24`).

Names mirror mmcv's ConvModule (`conv`, `bn`) and the heads' attributes; `image_pool` is torch's
`image_pool.1` (index 0 is the parameter-free pooling; `interchange/dilated_resnet.py`).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ovs_jax.models.dilated_resnet import bn, conv
from ovs_jax.ops.resize import resize


class ConvModule(nnx.Module):
  """mmcv ConvModule with BN and ReLU: relu(bn(conv x)), the conv bias-free."""

  def __init__(self, din, dout, kernel, *, dilation=1, groups=1, dtype, rngs):
    self.conv = conv(din, dout, kernel, dilation=dilation, groups=groups, dtype=dtype, rngs=rngs)
    self.bn = bn(dout, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nnx.Module):
  """mmcv DepthwiseSeparableConvModule: depthwise kxk ConvModule, then pointwise 1x1 ConvModule."""

  def __init__(self, din, dout, kernel, *, dilation=1, dtype, rngs):
    self.depthwise_conv = ConvModule(din, din, kernel, dilation=dilation, groups=din, dtype=dtype, rngs=rngs)
    self.pointwise_conv = ConvModule(din, dout, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.pointwise_conv(self.depthwise_conv(x))


class DeepLabV2Head(nnx.Module):
  """res5 (B, h, w, C_in) -> (B, h, w, channels): Σ_d relu(bn(conv_d x))."""

  def __init__(self, in_channels, channels, dilations=(6, 12, 18, 24), *, dtype=jnp.float32, rngs):
    self.aspp_modules = nnx.List([
        ConvModule(in_channels, channels, 1 if d == 1 else 3, dilation=d, dtype=dtype, rngs=rngs)
        for d in dilations])

  def __call__(self, features):
    x = features[-1]
    return sum(m(x) for m in self.aspp_modules)


class DeepLabV3PlusHead(nnx.Module):
  """[res2, ..., res5] -> (B, H/4, W/4, channels)."""

  def __init__(self, in_channels, channels, dilations=(1, 12, 24, 36), c1_in_channels=256,
               c1_channels=48, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.image_pool = ConvModule(in_channels, channels, 1, **kw)
    self.aspp_modules = nnx.List([
        ConvModule(in_channels, channels, 1, **kw) if d == 1 else
        DepthwiseSeparableConvModule(in_channels, channels, 3, dilation=d, **kw) for d in dilations])
    self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, **kw)
    self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1, **kw)
    self.sep_bottleneck = nnx.List([
        DepthwiseSeparableConvModule(channels + c1_channels, channels, 3, **kw),
        DepthwiseSeparableConvModule(channels, channels, 3, **kw)])

  def __call__(self, features):
    x = features[-1]
    b, h, w, _ = x.shape
    pooled = self.image_pool(x.mean((1, 2), keepdims=True))
    outs = [jnp.broadcast_to(pooled, (b, h, w, pooled.shape[-1]))]  # bilinear resize of a 1x1 map
    outs += [m(x) for m in self.aspp_modules]
    out = self.bottleneck(jnp.concatenate(outs, -1))
    c1 = self.c1_bottleneck(features[0])
    out = jnp.concatenate([resize(out, *c1.shape[1:3]), c1], -1)
    for m in self.sep_bottleneck:
      out = m(out)
    return out


HEADS = {"deeplabv2": DeepLabV2Head, "deeplabv3plus": DeepLabV3PlusHead}
