"""CLIP's ModifiedResNet image tower (RN50, RN101) in Flax NNX.

A ResNet with a 3-conv stem and 2x2 average pool, bottleneck blocks that downsample by average
pooling before their last 1x1 conv (and before the shortcut's 1x1 conv), and a multi-head attention
pool in place of global average pooling. Attribute names mirror OpenAI CLIP / OpenCLIP
(`layer3.5.conv2`, `layer1.0.downsample.1`, `attnpool.c_proj`), so `interchange.torch_state` reads
an OpenCLIP or OpenAI `visual.*` state dict with the `visual.` prefix removed; BatchNorms are frozen
(eval mode, running statistics as nnx.BatchStat). The shortcut is PyTorch's
`Sequential(-1: AvgPool, 0: Conv, 1: BatchNorm)`, so its parameters sit at `downsample.0` (conv)
and `downsample.1` (BatchNorm); the pool has none. Convolutions are NHWC with HWIO kernels; every
parameter carries logical axis names. Images are NHWC float arrays normalised with CLIP's mean/std.

Sources (read for facts and shapes): OpenAI CLIP `clip/model.py` (Bottleneck, AttentionPool2d,
ModifiedResNet, heads = width * 32 // 64 in `build_model`); OpenCLIP
`src/open_clip/modified_resnet.py` (same module, `init_parameters`) and `docs/model_profile.csv`;
MAFT+ `maft/modeling/backbone/clip.py` (`extract_features_resnet`,
`visual_prediction_forward_resnet`); MaskCLIP `mmseg/models/decode_heads/maskclip_head.py` (dense
features: `c_proj(v_proj(x))` as 1x1 convs).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax import layers
from ovs_jax.ops.attention import multi_head_attention
from ovs_jax.ops.remat import remat_scan
from ovs_jax.ops.resize import resize, resize_nchw

EXPANSION = 4  # bottleneck output channels / planes
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision ResNet's


@dataclasses.dataclass(frozen=True)
class ModifiedResNetConfig:
  layers: tuple[int, ...]  # bottleneck blocks per stage (strides 4, 8, 16, 32)
  width: int = 64  # stem width; stage i has width * 2**i planes, width * 2**i * 4 channels out
  embed_dim: int = 1024  # CLIP embedding width (the attention pool's `output_dim`)
  image_size: int = 224  # pretraining size: positional embedding for an (image_size // 32)^2 grid
  head_width: int = 64  # attention-pool heads = width * 32 // head_width (CLIP's, OpenCLIP's)

  def __post_init__(self):
    if len(self.layers) != 4:
      raise ValueError(f"ModifiedResNetConfig.layers={self.layers}: expected 4 stages")
    if (self.width * 32) % self.head_width:
      raise ValueError(f"ModifiedResNetConfig: attention-pool width {self.width * 32} is not a "
                       f"multiple of head_width={self.head_width}")

  @property
  def heads(self) -> int:
    return self.width * 32 // self.head_width

  @property
  def channels(self) -> tuple[int, ...]:
    """Channels of 'stem', 'res2'..'res5' (MAFT+'s `output_channels`)."""
    return (self.width,) + tuple(self.width * 2 ** i * EXPANSION for i in range(4))


PRESETS: dict[str, ModifiedResNetConfig] = {
    # OpenAI CLIP RN50 / RN101 (OpenCLIP model_configs/RN50.json, RN101.json).
    "RN50": ModifiedResNetConfig((3, 4, 6, 3), 64, 1024, 224),
    "RN101": ModifiedResNetConfig((3, 4, 23, 3), 64, 512, 224),
    # For tests and demos: 256 channels at stride 32, 8 heads of 32.
    "tiny": ModifiedResNetConfig((2, 1, 2, 1), 8, 32, 64, head_width=32),
}


def get_preset(name: str, **overrides) -> ModifiedResNetConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown ModifiedResNet architecture {name!r}: "
                     f"expected one of {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def _conv(din, dout, kernel, *, stride=1, dtype, rngs):
  """Bias-free conv with PyTorch's padding k // 2 (the stride-2 3x3 gives torch's ceil(H / 2))."""
  names = (None, None, "conv_in", "conv_out")
  return nnx.Conv(din, dout, (kernel, kernel), (stride, stride), padding=[(kernel // 2,) * 2] * 2,
                  use_bias=False, dtype=dtype,
                  kernel_init=nnx.with_partitioning(_conv_init, names), rngs=rngs)


def _bn(d, *, dtype, rngs, scale_init=layers.ones):
  return layers.FrozenBatchNorm(d, dtype=dtype, rngs=rngs, scale_init=scale_init)


def _avg_pool(x, k):
  """nn.AvgPool2d(k): k x k windows, stride k, no padding, odd sides floor-divided."""
  return x if k == 1 else nnx.avg_pool(x, (k, k), strides=(k, k))


class Bottleneck(nnx.Module):
  """relu(bn3(conv3(avgpool(relu(bn2(conv2(relu(bn1(conv1(x))))))))) + shortcut(x))."""

  def __init__(self, inplanes, planes, stride, *, dtype, rngs):
    out = planes * EXPANSION
    self.stride = stride
    self.conv1 = _conv(inplanes, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(planes, planes, 3, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv3 = _conv(planes, out, 1, dtype=dtype, rngs=rngs)
    # OpenCLIP `init_parameters`: each residual branch starts as zero.
    self.bn3 = _bn(out, dtype=dtype, rngs=rngs, scale_init=layers.zeros)
    self.downsample = None if stride == 1 and inplanes == out else nnx.List(
        [_conv(inplanes, out, 1, dtype=dtype, rngs=rngs), _bn(out, dtype=dtype, rngs=rngs)])

  def __call__(self, x):
    h = nnx.relu(self.bn1(self.conv1(x)))
    h = nnx.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(_avg_pool(h, self.stride)))
    if self.downsample is not None:
      conv, bn = self.downsample
      x = bn(conv(_avg_pool(x, self.stride)))
    return nnx.relu(h + x)


class AttentionPool2d(nnx.Module):
  """CLIP's attention pool: the mean token, with positional embedding, attends over
  [mean; pixels] + positional embedding; q/k/v/c projections as separate Linears."""

  def __init__(self, grid, dim, heads, out_dim, *, dtype, rngs):
    self.grid, self.num_heads = grid, heads
    self.attention_impl = "auto"  # set for a whole model by `layers.set_attention`
    std = dim ** -0.5  # OpenAI's positional init; OpenCLIP's q/k/v/c init (c_proj.in_features)
    self.positional_embedding = layers.param(nnx.initializers.normal(std), (grid * grid + 1, dim),
                                             (None, "embed"), rngs=rngs)
    kw = dict(dtype=dtype, rngs=rngs, kernel_init=nnx.initializers.normal(std))
    self.q_proj = layers.linear(dim, dim, ("embed", "heads"), **kw)
    self.k_proj = layers.linear(dim, dim, ("embed", "heads"), **kw)
    self.v_proj = layers.linear(dim, dim, ("embed", "heads"), **kw)
    self.c_proj = layers.linear(dim, out_dim, ("heads", "proj"), **kw)

  def positions(self, h, w, dtype):
    """-> (pos of the mean token (C,), pixel positions (h*w, C)). The grid's embedding is resized
    bilinearly (PyTorch `F.interpolate(bilinear, align_corners=False)`, as MAFT+) when (h, w)
    differs from the pretraining grid."""
    pos = self.positional_embedding[...].astype(dtype)
    spatial = pos[1:]
    if (h, w) != (self.grid, self.grid):
      spatial = resize(spatial.reshape(1, self.grid, self.grid, -1), h, w).reshape(h * w, -1)
    return pos[0], spatial

  def __call__(self, x):
    """(B, h, w, C) -> (B, out_dim)."""
    b, h, w, c = x.shape
    pos0, pos = self.positions(h, w, x.dtype)
    pixels = x.reshape(b, h * w, c)
    mean = jnp.mean(pixels, axis=1, keepdims=True)
    tokens = jnp.concatenate([mean, pixels], axis=1) + jnp.concatenate([pos0[None], pos])
    # Only the mean token's output is kept, so only it is queried (OpenAI's `query=x[:1]`).
    out = multi_head_attention(self.q_proj(tokens[:, :1]), self.k_proj(tokens), self.v_proj(tokens),
                               self.num_heads, impl=self.attention_impl)
    return self.c_proj(out)[:, 0]

  def value_path(self, x):
    """MaskCLIP: each pixel through v_proj then c_proj (q/k dropped, no positional embedding)."""
    return self.c_proj(self.v_proj(x))

  def masked(self, x, mask_logits):
    """MAFT+ `visual_prediction_forward_resnet`: x (B, h, w, C), mask_logits (B, Q, H, W)
    -> (B, Q, out_dim). See `ModifiedResNetImageTower.masked_attention_pool`."""
    b, h, w, c = x.shape
    q = mask_logits.shape[1]
    m = jax.lax.stop_gradient(mask_logits).astype(jnp.float32)
    if m.shape[2:] != (h, w):
      m = resize_nchw(m, h, w)
    inside = (m > 0).reshape(b, q, h * w)
    empty = ~jnp.any(inside, axis=-1, keepdims=True)  # (B, Q, 1)
    inside = inside | empty  # no softmax over nothing on any backend; the result is zeroed below
    pos0, pos = self.positions(h, w, x.dtype)
    pixels = x.reshape(b, h * w, c)
    kv = pixels + pos
    # One query, shared by the Q masks.
    query = self.q_proj(jnp.mean(pixels, axis=1, keepdims=True) + pos0)
    out = multi_head_attention(jnp.broadcast_to(query, (b, q, c)), self.k_proj(kv), self.v_proj(kv),
                               self.num_heads, mask=inside[:, None], impl=self.attention_impl)
    return self.c_proj(jnp.where(empty, 0, out))


class ModifiedResNetImageTower(nnx.Module):
  """CLIP `ModifiedResNet` (`model.visual` of RN50 / RN101)."""

  def __init__(self, cfg: ModifiedResNetConfig, *, dtype=jnp.float32, remat: bool = False,
               rngs: nnx.Rngs):
    self.config, self.dtype, self.remat = cfg, dtype, remat
    w = cfg.width
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = _conv(3, w // 2, 3, stride=2, **kw)
    self.bn1 = _bn(w // 2, **kw)
    self.conv2 = _conv(w // 2, w // 2, 3, **kw)
    self.bn2 = _bn(w // 2, **kw)
    self.conv3 = _conv(w // 2, w, 3, **kw)
    self.bn3 = _bn(w, **kw)
    inplanes = w
    for i, blocks in enumerate(cfg.layers):
      planes = w * 2 ** i
      stage = [Bottleneck(inplanes, planes, 1 if i == 0 else 2, **kw)]
      stage += [Bottleneck(planes * EXPANSION, planes, 1, **kw) for _ in range(blocks - 1)]
      setattr(self, f"layer{i + 1}", nnx.List(stage))
      inplanes = planes * EXPANSION
    self.attnpool = AttentionPool2d(cfg.image_size // 32, inplanes, cfg.heads, cfg.embed_dim, **kw)

  def _stage(self, i, x):
    blocks = list(getattr(self, f"layer{i + 1}"))
    if not self.remat:
      for block in blocks:
        x = block(x)
      return x
    # The first block changes the shape (shortcut conv, maybe stride): checkpointed alone.
    graphdef, state = nnx.split(blocks[0])
    x = jax.checkpoint(lambda state, h: nnx.merge(graphdef, state)(h))(state, x)
    return remat_scan(blocks[1:], x) if len(blocks) > 1 else x

  def features(self, pixels, rng=None):
    """(B, H, W, 3) -> {'stem': (B, H/2, W/2, width) after the 3 stem convs (before their pool),
    'res2'..'res5': (B, H/s, W/s, C_s) at strides 4, 8, 16, 32, 'clip_vis_dense': res5}, as MAFT+'s
    `extract_features_resnet`. Sides as PyTorch's: ceil(H/2) after the stem conv, then each pool
    floors. `rng` is unused: CLIP's ResNets have no stochastic depth."""
    x = pixels.astype(self.dtype)
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    x = nnx.relu(self.bn3(self.conv3(x)))
    out = {"stem": x}
    x = _avg_pool(x, 2)
    for i in range(4):
      x = self._stage(i, x)
      out[f"res{i + 2}"] = x
    out["clip_vis_dense"] = x
    return out

  def trunk_features(self, pixels, rng=None):
    """(B, H, W, 3) -> res5 (B, H/32, W/32, 32 * width), the map MAFT+ pools ('clip_vis_dense')."""
    return self.features(pixels, rng)["res5"]

  def __call__(self, pixels):
    """(B, H, W, 3) -> (B, embed_dim) unnormalised image embedding (CLIP `encode_image`); at sizes
    other than `image_size` the positional embedding is resized bilinearly."""
    return self.attnpool(self.features(pixels)["res5"])

  def dense_features(self, pixels):
    """(B, H, W, 3) -> (B, H/32, W/32, embed_dim): MaskCLIP's dense map, the attention pool's value
    path (v_proj then c_proj on each res5 pixel; no query/key, no positional embedding)."""
    return self.attnpool.value_path(self.features(pixels)["res5"])

  def masked_attention_pool(self, res5, mask_logits):
    """res5 (B, h, w, C), mask_logits (B, Q, H, W) -> (B, Q, embed_dim): MAFT+'s
    `visual_prediction_forward_resnet`, one CLIP embedding per mask.

    Query: mean of all pixels + positional embedding 0 (the same for every mask); keys and values:
    pixels + the (resized) spatial positional embedding; each mask, binarised at logit > 0, limits
    its query to the pixels inside it (every head). Masks at another resolution are first resized
    bilinearly (half-pixel centres, no antialias); the official branch for that calls
    `F.inteprolate` (sic), so it only ever ran with masks at the feature resolution. No gradient
    flows into the masks.

    An empty mask attends to nothing: its attention output is 0, so its embedding is `c_proj`'s
    bias, and no gradient reaches the features from it (only `c_proj.bias` gets one). This is what
    the official call (`need_weights=False`) returns under PyTorch >= 2.5, whose attention gives
    fully masked rows zeros (the pinned torch 2.13 does); PyTorch < 2.5, MAFT+'s own environment,
    and `need_weights=True` give NaN.
    """
    return self.attnpool.masked(res5, mask_logits)
