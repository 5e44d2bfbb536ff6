"""MaskCLIP+'s students: the dilated ResNetV1c-D8 and the DeepLabv2 / v3+ heads against a PyTorch
re-derivation of mmseg's modules written here from MaskCLIP's code (backbones/resnet.py,
utils/res_layer.py, decode_heads/aspp_headv2.py, sep_aspp_head.py), tiny widths; the mmseg /
torchvision state-dict import round-trips bit-identically."""
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import jax.numpy as jnp
from ovs_jax.heads.deeplab import DeepLabV2Head, DeepLabV3PlusHead
from ovs_jax.interchange.dilated_resnet import (config_from_state_dict, convert_resnet, export_torch,
                                                import_torch, load_backbone_weights)
from ovs_jax.models.dilated_resnet import PRESETS, DilatedResNet


def bn(c):
  return nn.BatchNorm2d(c)


class TBottleneck(nn.Module):  # mmseg Bottleneck, style 'pytorch' (stride on conv2)
  def __init__(self, inplanes, planes, stride, dilation):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), bn(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = bn(planes)
    self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), bn(planes * 4)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), bn(planes * 4))

  def forward(self, x):
    h = torch.relu(self.bn1(self.conv1(x)))
    h = torch.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class TResNet(nn.Module):  # ResNetV1c (deep_stem) or V1b/torchvision, strides (1,2,1,1), dilations (1,1,2,4)
  def __init__(self, blocks, width, stem, deep):
    super().__init__()
    self.deep = deep
    if deep:
      self.stem = nn.Sequential(nn.Conv2d(3, stem // 2, 3, 2, 1, bias=False), bn(stem // 2), nn.ReLU(),
                                nn.Conv2d(stem // 2, stem // 2, 3, 1, 1, bias=False), bn(stem // 2), nn.ReLU(),
                                nn.Conv2d(stem // 2, stem, 3, 1, 1, bias=False), bn(stem), nn.ReLU())
    else:
      self.conv1, self.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), bn(stem)
    inplanes = stem
    for i, (n, s, d) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4))):
      planes = width * 2 ** i
      layer = [TBottleneck(inplanes, planes, s, d // 2 if d > 1 else d)]  # contract_dilation
      inplanes = planes * 4
      layer += [TBottleneck(inplanes, planes, 1, d) for _ in range(1, n)]
      setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

  def forward(self, x):
    x = self.stem(x) if self.deep else torch.relu(self.bn1(self.conv1(x)))
    x = nn.functional.max_pool2d(x, 3, 2, 1)
    outs = []
    for i in range(4):
      x = getattr(self, f"layer{i + 1}")(x)
      outs.append(x)
    return outs


class TConvModule(nn.Module):
  def __init__(self, cin, cout, k, dilation=1, groups=1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False)
    self.bn = bn(cout)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class TDSConv(nn.Module):
  def __init__(self, cin, cout, k, dilation=1):
    super().__init__()
    self.depthwise_conv = TConvModule(cin, cin, k, dilation, groups=cin)
    self.pointwise_conv = TConvModule(cin, cout, 1)

  def forward(self, x):
    return self.pointwise_conv(self.depthwise_conv(x))


class TASPPV2(nn.Module):  # ASPPHeadV2.forward_module
  def __init__(self, cin, ch, dilations):
    super().__init__()
    self.aspp_modules = nn.ModuleList([TConvModule(cin, ch, 1 if d == 1 else 3, d) for d in dilations])

  def forward(self, feats):
    return sum(m(feats[-1]) for m in self.aspp_modules)


class TSepASPP(nn.Module):  # DepthwiseSeparableASPPHead.forward_module
  def __init__(self, cin, ch, dilations, c1_in, c1):
    super().__init__()
    self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), TConvModule(cin, ch, 1))
    self.aspp_modules = nn.ModuleList([TConvModule(cin, ch, 1) if d == 1 else TDSConv(cin, ch, 3, d)
                                       for d in dilations])
    self.bottleneck = TConvModule((len(dilations) + 1) * ch, ch, 3)
    self.c1_bottleneck = TConvModule(c1_in, c1, 1)
    self.sep_bottleneck = nn.Sequential(TDSConv(ch + c1, ch, 3), TDSConv(ch, ch, 3))

  def forward(self, feats):
    x = feats[-1]
    interp = lambda t, s: nn.functional.interpolate(t, size=s, mode="bilinear", align_corners=False)
    outs = [interp(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
    out = self.bottleneck(torch.cat(outs, 1))
    c1 = self.c1_bottleneck(feats[0])
    return self.sep_bottleneck(torch.cat([interp(out, c1.shape[2:]), c1], 1))


def randomise(module, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if t.dtype.is_floating_point:
        t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                else 0.3 * torch.randn(t.shape, generator=g))
      else:
        t.fill_(7)  # num_batches_tracked
  return module.eval()


def sd_of(module):
  return {k: v.numpy() for k, v in module.state_dict().items()}


def nhwc(t):
  return np.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("deep", [True, False])
def test_backbone_and_heads_match_torch(deep):
  cfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, "deep_stem": deep})
  tb = randomise(TResNet(cfg.blocks, cfg.base_width, cfg.stem_channels, deep), 0)
  ours = DilatedResNet(cfg, rngs=nnx.Rngs(0))
  import_torch(ours, sd_of(tb))
  x = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    ref = tb(x)
  got = ours(jnp.asarray(nhwc(x)))
  assert [g.shape[1:3] for g in got] == [(10, 12), (5, 6), (5, 6), (5, 6)]  # strides 4, 8, 8, 8
  for g, r in zip(got, ref):
    np.testing.assert_allclose(np.asarray(g), nhwc(r), atol=1e-4, rtol=1e-4)
  c = cfg.channels
  heads = [(TASPPV2(c[3], 16, (6, 12, 18, 24)), DeepLabV2Head(c[3], 16, (6, 12, 18, 24), rngs=nnx.Rngs(0))),
           (TSepASPP(c[3], 16, (1, 12, 24, 36), c[0], 8),
            DeepLabV3PlusHead(c[3], 16, (1, 12, 24, 36), c[0], 8, rngs=nnx.Rngs(0)))]
  for i, (th, oh) in enumerate(heads):
    randomise(th, 2 + i)
    import_torch(oh, sd_of(th))
    with torch.no_grad():
      want = th(ref)
    np.testing.assert_allclose(np.asarray(oh(got)), nhwc(want), atol=1e-4, rtol=1e-4)
    assert export_torch(oh).keys() == th.state_dict().keys()


def test_v1c_state_dict_round_trips_bit_identically(tmp_path):
  cfg = PRESETS["tiny"]
  tb = randomise(TResNet(cfg.blocks, cfg.base_width, cfg.stem_channels, True), 5)
  sd = sd_of(tb)
  src = dict(sd, **{"fc.weight": np.zeros((10, 128), np.float32), "fc.bias": np.zeros(10, np.float32)})
  assert config_from_state_dict(src) == cfg
  ours = DilatedResNet(cfg, rngs=nnx.Rngs(3))
  import_torch(ours, src)
  back = export_torch(ours)
  assert back.keys() == sd.keys()  # stem.0,1,3,4,6,7 restored, fc dropped
  for k in sd:
    assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
  tb2 = TResNet(cfg.blocks, cfg.base_width, cfg.stem_channels, True)
  tb2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
  # the convert command: .pth -> directory, read back by `load_backbone_weights`
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in src.items()}}, tmp_path / "r.pth")
  out = convert_resnet(tmp_path / "r.pth", tmp_path / "r")
  again = DilatedResNet(cfg, rngs=nnx.Rngs(4))
  load_backbone_weights(again, out)
  assert all(np.array_equal(export_torch(again)[k], sd[k]) for k in sd)


def test_bad_state_dict_is_named():
  from ovs_jax.interchange.errors import CheckpointError
  with pytest.raises(CheckpointError, match="neither 'stem.0.weight'"):
    config_from_state_dict({"foo": np.zeros(1)})
  ours = DilatedResNet(PRESETS["tiny"], rngs=nnx.Rngs(0))
  with pytest.raises(CheckpointError, match="does not match the model: missing key 'layer1.0.bn1"):
    import_torch(ours, {"layer1.0.conv1.weight": np.zeros((8, 16, 1, 1), np.float32)})
