"""The dilated ResNet of mmsegmentation's `-D8` configs (ResNetV1c), MaskCLIP+'s student backbone.

MaskCLIP+ `configs/_base_/models/maskclip_plus_r50.py:6-16` (its zero-shot configs set depth=101 and
load `open-mmlab://resnet101_v1c`): ResNetV1c = deep stem (three 3x3 convs 3->32->32->64, each with
BN and ReLU, then a 3x3/2 max pool) instead of the 7x7 conv (mmseg `backbones/resnet.py:700-711`),
'pytorch'-style bottlenecks (the stride on the 3x3 conv), strides (1, 2, 1, 1) and dilations
(1, 1, 2, 4) so res5 is at stride 8, and `contract_dilation`: a dilated stage's first block uses
half its dilation (`utils/res_layer.py`). `deep_stem=False` is torchvision's (and mmseg's V1b) 7x7
stem, for torchvision ImageNet weights.

Names mirror PyTorch's (`layer3.5.conv2`, `downsample.0`), except the deep stem's Sequential, whose
convs and BNs sit at torch indices 0,1,3,4,6,7 and here at 0..5 (`interchange/dilated_resnet.py`).
BatchNorm is `layers.FrozenBatchNorm`: trainable scale and bias, ImageNet running statistics kept
(the shared trainer updates nnx.Params only; mmseg's SyncBN re-estimates them, docs/mvp_seg.md).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from ovs_jax import layers

EXPANSION = 4
# He init as mmseg's ResNet.init_weights (kaiming, fan_out, ReLU).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclasses.dataclass(frozen=True)
class DilatedResNetConfig:
  blocks: tuple[int, ...] = (3, 4, 23, 3)     # ResNet-101
  base_width: int = 64
  stem_channels: int = 64
  deep_stem: bool = True                       # V1c; False: torchvision's 7x7 stem
  strides: tuple[int, ...] = (1, 2, 1, 1)      # D8: maskclip_plus_r50.py:11-12
  dilations: tuple[int, ...] = (1, 1, 2, 4)
  contract_dilation: bool = True               # maskclip_plus_r50.py:16

  @property
  def channels(self) -> tuple[int, ...]:
    return tuple(self.base_width * 2 ** i * EXPANSION for i in range(4))


PRESETS = {
    "resnet101_v1c": DilatedResNetConfig(),
    "resnet50_v1c": DilatedResNetConfig(blocks=(3, 4, 6, 3)),
    "resnet101_torchvision": DilatedResNetConfig(deep_stem=False),
    # tests and the CPU demo
    "tiny": DilatedResNetConfig(blocks=(1, 1, 2, 1), base_width=8, stem_channels=16),
}


def conv(din, dout, kernel, *, stride=1, dilation=1, groups=1, dtype, rngs):
  """Bias-free conv with PyTorch's padding dilation·(k // 2)."""
  pad = dilation * (kernel // 2)
  return nnx.Conv(din, dout, (kernel, kernel), (stride, stride), padding=[(pad, pad)] * 2,
                  kernel_dilation=(dilation, dilation), feature_group_count=groups, use_bias=False,
                  dtype=dtype, kernel_init=nnx.with_partitioning(_conv_init, (None, None, "conv_in", "conv_out")),
                  rngs=rngs)


def bn(d, *, dtype, rngs):
  return layers.FrozenBatchNorm(d, dtype=dtype, rngs=rngs)


class Bottleneck(nnx.Module):
  """mmseg `Bottleneck`, style 'pytorch': relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x)))))) + shortcut x)."""

  def __init__(self, inplanes, planes, stride, dilation, *, dtype, rngs):
    out = planes * EXPANSION
    self.conv1 = conv(inplanes, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = bn(planes, dtype=dtype, rngs=rngs)
    self.conv2 = conv(planes, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs)
    self.bn2 = bn(planes, dtype=dtype, rngs=rngs)
    self.conv3 = conv(planes, out, 1, dtype=dtype, rngs=rngs)
    self.bn3 = bn(out, dtype=dtype, rngs=rngs)
    self.downsample = None if stride == 1 and inplanes == out else nnx.List(
        [conv(inplanes, out, 1, stride=stride, dtype=dtype, rngs=rngs), bn(out, dtype=dtype, rngs=rngs)])

  def __call__(self, x):
    h = nnx.relu(self.bn1(self.conv1(x)))
    h = nnx.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    if self.downsample is not None:
      c, b = self.downsample
      x = b(c(x))
    return nnx.relu(h + x)


class DilatedResNet(nnx.Module):
  """(B, H, W, 3) -> [res2, res3, res4, res5] at strides 4, 8, 8, 8 (the D8 configs)."""

  def __init__(self, cfg: DilatedResNetConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=dtype, rngs=rngs)
    s = cfg.stem_channels
    if cfg.deep_stem:  # torch stem.{0,1,3,4,6,7}
      self.stem = nnx.List([conv(3, s // 2, 3, stride=2, **kw), bn(s // 2, **kw),
                            conv(s // 2, s // 2, 3, **kw), bn(s // 2, **kw),
                            conv(s // 2, s, 3, **kw), bn(s, **kw)])
    else:
      self.conv1 = conv(3, s, 7, stride=2, **kw)
      self.bn1 = bn(s, **kw)
    inplanes = s
    for i, (n, stride, dilation) in enumerate(zip(cfg.blocks, cfg.strides, cfg.dilations)):
      planes = cfg.base_width * 2 ** i
      first = dilation // 2 if dilation > 1 and cfg.contract_dilation else dilation
      blocks = [Bottleneck(inplanes, planes, stride, first, **kw)]
      inplanes = planes * EXPANSION
      blocks += [Bottleneck(inplanes, planes, 1, dilation, **kw) for _ in range(1, n)]
      setattr(self, f"layer{i + 1}", nnx.List(blocks))

  def __call__(self, pixels):
    x = pixels
    if self.config.deep_stem:
      for i in range(0, 6, 2):
        x = nnx.relu(self.stem[i + 1](self.stem[i](x)))
    else:
      x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outs = []
    for i in range(len(self.config.blocks)):
      for block in getattr(self, f"layer{i + 1}"):
        x = block(x)
      outs.append(x)
    return outs
