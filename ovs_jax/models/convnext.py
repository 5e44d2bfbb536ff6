"""OpenCLIP's ConvNeXt image tower (timm `ConvNeXt` trunk + OpenCLIP projection head) in Flax NNX.

Attribute names mirror OpenCLIP's `TimmModel` (`trunk.stages.2.blocks.5.mlp.fc1`,
`trunk.stem.0`, `trunk.head.norm`, `head.proj` or `head.mlp.fc1`), so `interchange.torch_state`
reads an OpenCLIP `visual.*` state dict with the `visual.` prefix removed. Convolutions are NHWC
with HWIO kernels; every parameter carries logical axis names. Images are NHWC float arrays
already normalised with CLIP's mean/std.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax import layers
from ovs_jax.layers import linear
from ovs_jax.ops.depthwise_conv import depthwise_conv2d
from ovs_jax.ops.remat import remat_scan

_trunc_normal = nnx.initializers.truncated_normal(0.02)  # timm's `_init_weights`


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig:
  depths: tuple[int, ...]  # blocks per stage
  dims: tuple[int, ...]  # channels per stage (strides 4, 8, 16, 32)
  embed_dim: int  # CLIP embedding width
  # OpenCLIP `timm_proj`: 'linear' (no bias) or 'mlp' (fc1 -> GELU -> fc2, fc2 without bias).
  head: str = "linear"
  mlp_hidden: int | None = None  # 'mlp' head width; OpenCLIP's is 2 * embed_dim
  layer_scale_init: float = 1e-6
  eps: float = 1e-6  # every LayerNorm (timm's default; convnext_xxlarge uses 1e-5)
  image_size: int = 224
  # timm `drop_path_rate` (OpenCLIP `timm_drop_path`): stochastic depth in training, rising
  # linearly over the blocks from 0 to this value; off at inference.
  drop_path: float = 0.0

  def __post_init__(self):
    if self.head not in ("linear", "mlp"):
      raise ValueError(f"ConvNeXtConfig.head={self.head!r}: expected 'linear' or 'mlp'")
    if len(self.depths) != 4 or len(self.dims) != 4:
      raise ValueError(f"ConvNeXtConfig depths={self.depths}, dims={self.dims}: "
                       "expected 4 stages each")


PRESETS: dict[str, ConvNeXtConfig] = {
    # timm `convnext_base` dims/depths; OpenCLIP model_configs/convnext_base_w_320.json.
    "convnext_base_w_320": ConvNeXtConfig((3, 3, 27, 3), (128, 256, 512, 1024), 640, "linear",
                                          image_size=320, drop_path=0.1),
    # timm `convnext_large`; OpenCLIP model_configs/convnext_large_d_320.json, MLP hidden 2 * 768.
    "convnext_large_d_320": ConvNeXtConfig((3, 3, 27, 3), (192, 384, 768, 1536), 768, "mlp",
                                           mlp_hidden=1536, image_size=320, drop_path=0.1),
    # For tests and demos.
    "tiny": ConvNeXtConfig((1, 1, 2, 1), (16, 24, 32, 48), 32, "mlp", mlp_hidden=64,
                           image_size=64),
}


def get_preset(name: str, **overrides) -> ConvNeXtConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown ConvNeXt architecture {name!r}: expected one of {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def _conv(din, dout, kernel, *, stride=1, groups=1, dtype, rngs):
  """PyTorch's padding: none for the patchify convs (odd sides floor-divide, as in torch), k // 2
  for the depthwise one. A depthwise kernel (k, k, 1, C) names no input axis."""
  names = (None, None, "conv_in" if groups == 1 else None, "conv_out")
  return nnx.Conv(din, dout, (kernel, kernel), (stride, stride),
                  padding="VALID" if stride > 1 else [(kernel // 2,) * 2] * 2,
                  feature_group_count=groups, dtype=dtype,
                  kernel_init=nnx.with_partitioning(_trunc_normal, names),
                  bias_init=nnx.with_partitioning(layers.zeros, ("conv_out",)), rngs=rngs)


def _norm(d, cfg, *, rngs):
  # Kept in float32 under bfloat16 compute; two-pass variance as F.layer_norm.
  return layers.layer_norm(d, dtype=jnp.float32, eps=cfg.eps, exact_variance=True, rngs=rngs)


def _dense(din, dout, names, *, dtype, rngs, use_bias=True):
  return linear(din, dout, names, dtype=dtype, rngs=rngs, use_bias=use_bias,
                kernel_init=_trunc_normal)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)  # nn.GELU's exact erf form


class Mlp(nnx.Module):
  """timm `Mlp`: fc1 -> GELU -> fc2."""

  def __init__(self, din, dhidden, dout, names, *, dtype, rngs, fc2_bias=True):
    self.fc1 = _dense(din, dhidden, (names[0], "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = _dense(dhidden, dout, ("mlp", names[1]), dtype=dtype, rngs=rngs, use_bias=fc2_bias)

  def __call__(self, x):
    return self.fc2(_gelu(self.fc1(x)))


class Block(nnx.Module):
  """x + gamma * mlp(norm(conv_dw(x))), all channels-last."""

  def __init__(self, dim, cfg: ConvNeXtConfig, *, dtype, rngs):
    self.conv_dw = _conv(dim, dim, 7, groups=dim, dtype=dtype, rngs=rngs)
    self.norm = _norm(dim, cfg, rngs=rngs)
    self.mlp = Mlp(dim, 4 * dim, dim, ("embed", "embed"), dtype=dtype, rngs=rngs)
    self.gamma = layers.param(nnx.initializers.constant(cfg.layer_scale_init), (dim,), ("embed",),
                              rngs=rngs)

  def __call__(self, x, keep=None):
    """`keep` (B,): stochastic depth's per-sample scale of the branch (0 or 1/(1-p)), or None."""
    conv = self.conv_dw
    dtype = conv.dtype or x.dtype
    h = depthwise_conv2d(x.astype(dtype), conv.kernel[...].astype(dtype), conv.bias[...].astype(dtype))
    h = self.gamma[...] * self.mlp(self.norm(h))
    if keep is not None:
      h = h * keep[:, None, None, None]
    return x + h.astype(x.dtype)


def stochastic_depth(cfg: ConvNeXtConfig, rng, batch: int):
  """Per stage: (blocks, B) branch scales of timm's DropPath (keep with 1 - p, scaled by 1/(1 - p);
  p rising linearly over all blocks from 0 to `cfg.drop_path`), or None without `rng` or rate."""
  if rng is None or cfg.drop_path <= 0:
    return [None] * len(cfg.depths)
  rates = jnp.linspace(0.0, cfg.drop_path, sum(cfg.depths))
  keep_prob = 1.0 - rates[:, None]
  keep = jax.random.bernoulli(rng, keep_prob, (len(rates), batch)) / keep_prob
  bounds = np.cumsum((0,) + tuple(cfg.depths))
  return [keep[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class Stage(nnx.Module):
  """timm `ConvNeXtStage`; stages 1-3 first halve the grid (LayerNorm2d, 2x2 stride-2 conv)."""

  def __init__(self, index, cfg: ConvNeXtConfig, *, dtype, remat, rngs):
    dim = cfg.dims[index]
    self.remat = remat
    prev = cfg.dims[index - 1]
    self.downsample = None if index == 0 else nnx.List(
        [_norm(prev, cfg, rngs=rngs), _conv(prev, dim, 2, stride=2, dtype=dtype, rngs=rngs)])
    self.blocks = nnx.List([Block(dim, cfg, dtype=dtype, rngs=rngs)
                            for _ in range(cfg.depths[index])])

  def __call__(self, x, keep=None):
    """`keep` (blocks, B) stochastic-depth scales, or None."""
    if self.downsample is not None:
      norm, conv = self.downsample
      x = conv(norm(x))
    if self.remat:
      return remat_scan(list(self.blocks), x, per_layer=None if keep is None else {"keep": keep})
    for i, block in enumerate(self.blocks):
      x = block(x, None if keep is None else keep[i])
    return x


class Head(nnx.Module):
  """timm `NormMlpClassifierHead` with num_classes=0: only its LayerNorm holds parameters."""

  def __init__(self, cfg: ConvNeXtConfig, *, rngs):
    self.norm = _norm(cfg.dims[-1], cfg, rngs=rngs)


class Trunk(nnx.Module):
  """timm `ConvNeXt(num_classes=0)`."""

  def __init__(self, cfg: ConvNeXtConfig, *, dtype, remat, rngs):
    self.dtype = dtype
    self.stem = nnx.List([_conv(3, cfg.dims[0], 4, stride=4, dtype=dtype, rngs=rngs),
                          _norm(cfg.dims[0], cfg, rngs=rngs)])
    self.stages = nnx.List([Stage(i, cfg, dtype=dtype, remat=remat, rngs=rngs) for i in range(4)])
    self.head = Head(cfg, rngs=rngs)


class ProjectionHead(nnx.Module):
  """OpenCLIP `TimmModel.head`: `proj` (Linear, no bias) or `mlp` (timm Mlp, fc2 without bias)."""

  def __init__(self, cfg: ConvNeXtConfig, *, dtype, rngs):
    self.kind = cfg.head
    if cfg.head == "linear":
      self.proj = _dense(cfg.dims[-1], cfg.embed_dim, ("embed", "proj"), dtype=dtype, rngs=rngs,
                         use_bias=False)
    else:
      hidden = cfg.mlp_hidden or 2 * cfg.embed_dim
      self.mlp = Mlp(cfg.dims[-1], hidden, cfg.embed_dim, ("embed", "proj"), dtype=dtype, rngs=rngs,
                     fc2_bias=False)

  def __call__(self, x):
    return self.proj(x) if self.kind == "linear" else self.mlp(x)


class ConvNeXtImageTower(nnx.Module):
  """OpenCLIP `TimmModel` around a timm ConvNeXt (`model.visual` of e.g. convnext_large_d_320)."""

  def __init__(self, cfg: ConvNeXtConfig, *, dtype=jnp.float32, remat: bool = False,
               rngs: nnx.Rngs):
    self.config = cfg
    self.trunk = Trunk(cfg, dtype=dtype, remat=remat, rngs=rngs)
    self.head = ProjectionHead(cfg, dtype=dtype, rngs=rngs)

  def features(self, pixels, rng=None):
    """(B, H, W, 3) -> {'stem': (B, H/4, W/4, C0), 'res2'..'res5': stage outputs (B, H/s, W/s, C_s)
    at strides 4, 8, 16, 32, 'clip_vis_dense': res5 after `norm_pre`}, as MAFT+'s
    `extract_features_convnext`; sides are floor-divided like PyTorch's. With `rng` (training),
    stochastic depth at `config.drop_path` as timm's train mode."""
    conv, norm = self.trunk.stem
    # Residual stream in the compute dtype (the LayerNorm returns float32).
    x = norm(conv(pixels)).astype(self.trunk.dtype)
    out = {"stem": x}
    keeps = stochastic_depth(self.config, rng, pixels.shape[0])
    for i, stage in enumerate(self.trunk.stages):
      x = stage(x, keeps[i])
      out[f"res{i + 2}"] = x
    # timm's `norm_pre` is the identity unless head_norm_first (no OpenCLIP ConvNeXt sets it).
    out["clip_vis_dense"] = x
    return out

  def trunk_features(self, pixels, rng=None):
    """(B, H, W, 3) -> (B, H/32, W/32, C): the dense map MAFT+ pools ('clip_vis_dense')."""
    return self.features(pixels, rng)["clip_vis_dense"]

  def image_head(self, x):
    """CLIP head (trunk head LayerNorm, projection) on any (..., C) vectors -> (..., embed_dim):
    MAFT+'s `visual_prediction_forward_convnext` on pooled mask features."""
    return self.head(self.trunk.head.norm(x))

  def __call__(self, pixels):
    """(B, H, W, 3) -> (B, embed_dim) unnormalised image embedding (OpenCLIP `encode_image`):
    global average pool (timm's global_pool='avg', in float32) then `image_head`."""
    dense = self.features(pixels)["clip_vis_dense"]
    return self.image_head(jnp.mean(dense.astype(jnp.float32), axis=(1, 2)))
