"""DINOv2 with registers (Darcet et al., "Vision Transformers Need Registers") in Flax NNX.

Attribute names mirror HF `Dinov2WithRegistersModel` (`embeddings.register_tokens`,
`encoder.layers.3.layer_scale1.lambda1`), so weight interchange is a short rename table
(`interchange/dinov2.py`); the two differences (`layers` for HF's `layer`, the shared attention
layer's `out_proj` for HF's `o_proj`) are rows of that table. Every parameter carries logical axis
names. Images are NHWC float arrays already normalised (SimZSS feeds OpenAI CLIP's mean/std).

Token layout: [cls, reg_1..reg_R, patches]. The class and patch tokens get the position embedding
(resampled bicubic with antialias for other grids); the registers are inserted after the class
token without one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax import layers
from ovs_jax.layers import MultiHeadAttention, linear
from ovs_jax.models.pos_embed import resize_bicubic
from ovs_jax.ops.remat import remat_scan
from ovs_jax.sharding import constrain_batch

_normal = nnx.initializers.normal(0.02)
_part = nnx.with_partitioning

MODEL_TYPE = "dinov2_with_registers"


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
  """HF `Dinov2WithRegistersConfig` fields we build (names as HF's config.json), plus the DVT option.

  `image_size` fixes the learned position grid (image_size // patch_size per side); other inputs
  resample it. `dvt_denoiser`: one extra ViT block with its own position table on the patch tokens
  (Yang et al., "Denoising Vision Transformers"), off in HF's model.
  """
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  mlp_ratio: int = 4
  layer_norm_eps: float = 1e-6
  image_size: int = 518
  patch_size: int = 14
  num_register_tokens: int = 4
  layerscale_value: float = 1.0
  hidden_act: str = "gelu"
  dvt_denoiser: bool = False

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def intermediate_size(self) -> int:
    return int(self.hidden_size * self.mlp_ratio)

  @property
  def num_prefix_tokens(self) -> int:
    return 1 + self.num_register_tokens


PRESETS: dict[str, Dinov2Config] = {
    # timm `vit_base_patch14_reg4_dinov2` = HF `facebook/dinov2-with-registers-base` (86.6 M).
    "vit_base_patch14_reg4_dinov2": Dinov2Config(),
    # Tests and the CPU demo: same token layout, 224 native (16×16 grid, SimZSS's input size).
    "dinov2_reg_tiny": Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=224),
}


def get_preset(name: str, **overrides) -> Dinov2Config:
  if name not in PRESETS:
    raise ValueError(f"unknown DINOv2 architecture {name!r}: expected one of {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


# HF config fields whose other values change the network in ways we do not build.
_FIXED_HF_FIELDS = {"hidden_act": "gelu", "qkv_bias": True, "use_swiglu_ffn": False, "num_channels": 3}
_HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "layer_norm_eps",
              "image_size", "patch_size", "num_register_tokens", "layerscale_value")


def from_hf_dict(d: dict[str, Any]) -> Dinov2Config:
  """An HF `config.json` dict (model_type `dinov2_with_registers`) -> Dinov2Config."""
  if d.get("model_type") != MODEL_TYPE:
    raise ValueError(f"model_type={d.get('model_type')!r}: expected {MODEL_TYPE!r}")
  for k, want in _FIXED_HF_FIELDS.items():
    if d.get(k, want) != want:
      raise ValueError(f"{k}={d[k]!r}: only {want!r} is supported")
  kw = {k: d[k] for k in _HF_FIELDS if d.get(k) is not None}
  for k in ("image_size", "patch_size"):
    if isinstance(kw.get(k), (list, tuple)):
      if len(set(kw[k])) != 1:
        raise ValueError(f"{k}={kw[k]}: only square images and patches are supported")
      kw[k] = kw[k][0]
  return Dinov2Config(**kw)


def to_hf_dict(cfg: Dinov2Config) -> dict[str, Any]:
  """The `config.json` of an HF `Dinov2WithRegistersModel` (the DVT block is not part of it)."""
  d = {k: getattr(cfg, k) for k in _HF_FIELDS}
  return dict(d, **_FIXED_HF_FIELDS, model_type=MODEL_TYPE, architectures=["Dinov2WithRegistersModel"],
              drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def layer_norm(d, eps, *, rngs):
  # Kept in float32 under bfloat16 compute; exact (two-pass) variance for parity with PyTorch.
  return layers.layer_norm(d, dtype=jnp.float32, eps=eps, exact_variance=True, rngs=rngs)


class LayerScale(nnx.Module):
  """Per-channel residual-branch gain (CaiT's layer scale), HF's `lambda1`."""

  def __init__(self, d, init_value, *, rngs):
    self.lambda1 = layers.param(nnx.initializers.constant(init_value), (d,), ("embed",), rngs=rngs)

  def __call__(self, x):
    return x * self.lambda1[...].astype(x.dtype)


class MLP(nnx.Module):

  def __init__(self, cfg: Dinov2Config, *, dtype, rngs):
    self.fc1 = linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype=dtype,
                      kernel_init=_normal, rngs=rngs)
    self.fc2 = linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), dtype=dtype,
                      kernel_init=_normal, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Layer(nnx.Module):
  """Pre-LN block: x + ls1·attn(norm1(x)), then x + ls2·mlp(norm2(x)); without layer scale for
  the DVT denoiser (timm `Block` with init_values=None)."""

  def __init__(self, cfg: Dinov2Config, *, dtype, rngs, layer_scale: bool = True):
    d = cfg.hidden_size
    self.norm1 = layer_norm(d, cfg.layer_norm_eps, rngs=rngs)
    self.attention = MultiHeadAttention(d, cfg.num_attention_heads, dtype=dtype, kernel_init=_normal,
                                        rngs=rngs)
    self.norm2 = layer_norm(d, cfg.layer_norm_eps, rngs=rngs)
    self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)
    self.layer_scale1 = LayerScale(d, cfg.layerscale_value, rngs=rngs) if layer_scale else None
    self.layer_scale2 = LayerScale(d, cfg.layerscale_value, rngs=rngs) if layer_scale else None

  def __call__(self, x):
    h = self.norm1(x)
    h = self.attention(h, h, h)
    x = x + (h if self.layer_scale1 is None else self.layer_scale1(h))
    h = self.mlp(self.norm2(x))
    # Block boundary: keep activations batch-sharded over data×fsdp (no-op without a mesh).
    return constrain_batch(x + (h if self.layer_scale2 is None else self.layer_scale2(h)))


class Encoder(nnx.Module):
  """HF `encoder`: a stack of Layers; `scan` stacks their parameters on a leading 'layers' axis."""

  def __init__(self, cfg: Dinov2Config, *, dtype, scan: bool, remat: bool, rngs: nnx.Rngs):
    self.scan, self.remat = scan, remat
    if scan:
      @nnx.split_rngs(splits=cfg.num_hidden_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make(r):
        return Layer(cfg, dtype=dtype, rngs=r)
      self.layers = make(rngs)
    else:
      self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x):
    """(B, T, D) -> (B, T, D)."""
    if not self.scan:
      if self.remat:  # a scan: XLA:CPU undoes remat in an unrolled loop (ops/remat.py)
        return remat_scan(list(self.layers), x)
      for layer in self.layers:
        x = layer(x)
      return x
    graphdef, state = nnx.split(self.layers)
    def block(layer_state, h):
      return nnx.merge(graphdef, layer_state)(h)
    if self.remat:
      block = jax.checkpoint(block)
    return jax.lax.scan(lambda h, s: (block(s, h), None), x, state)[0]


def _resample_grid(table, grid_hw):
  """(1, g*g, D) learned grid -> (h*w, D) for the grid (h, w), as HF/timm: bicubic with antialias
  in float32 (identity on the native grid)."""
  n, d = table.shape[1:]
  g = int(round(n ** 0.5))
  if g * g != n:
    raise ValueError(f"position table has {n} slots, not a square grid")
  return resize_bicubic(table.reshape(g, g, d).astype(jnp.float32), grid_hw, antialias=True).reshape(-1, d)


class PatchEmbeddings(nnx.Module):

  def __init__(self, cfg: Dinov2Config, *, dtype, rngs):
    p = cfg.patch_size
    self.projection = nnx.Conv(3, cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                               kernel_init=_part(_normal, (None, None, None, "embed")),
                               bias_init=_part(layers.zeros, ("embed",)), rngs=rngs)

  def __call__(self, pixels):
    return self.projection(pixels)


class Embeddings(nnx.Module):
  """HF `embeddings`: class, mask and register tokens, position table with a class slot, patches.

  `mask_token` (iBOT's masked-patch token) is used by no forward here; it is kept so that the
  parameters and state dict are HF's.
  """

  def __init__(self, cfg: Dinov2Config, *, dtype, rngs):
    d = cfg.hidden_size
    self.cls_token = layers.param(_normal, (1, 1, d), (None, None, "embed"), rngs=rngs)
    self.mask_token = layers.param(layers.zeros, (1, d), (None, "embed"), rngs=rngs)
    self.register_tokens = layers.param(layers.zeros, (1, cfg.num_register_tokens, d),
                                        (None, None, "embed"), rngs=rngs)
    self.position_embeddings = layers.param(_normal, (1, cfg.grid_size ** 2 + 1, d),
                                            (None, None, "embed"), rngs=rngs)
    self.patch_embeddings = PatchEmbeddings(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, pixels):
    """(B, H, W, 3) -> tokens (B, 1 + R + h*w, D) and the patch grid (h, w)."""
    x = self.patch_embeddings(pixels)
    b, h, w, d = x.shape
    pos = self.position_embeddings[...]
    cls = self.cls_token[...][0] + pos[0, :1]
    patches = x.reshape(b, h * w, d) + _resample_grid(pos[:, 1:], (h, w)).astype(x.dtype)
    prefix = jnp.concatenate([cls, self.register_tokens[...][0]], axis=0).astype(x.dtype)
    return jnp.concatenate([jnp.broadcast_to(prefix, (b, *prefix.shape)), patches], axis=1), (h, w)


class DVTDenoiser(Layer):
  """DVT's online denoiser: patch tokens (B, h, w, D) + its own learned position table (native
  grid, resampled as the backbone's) through one pre-LN ViT block without layer scale (timm `Block`,
  DVT's `denoiser.*`; heads as the backbone's, D/64 for ViT-B as in DVT)."""

  def __init__(self, cfg: Dinov2Config, *, dtype, rngs):
    super().__init__(cfg, dtype=dtype, rngs=rngs, layer_scale=False)
    self.pos_embed = layers.param(_normal, (1, cfg.grid_size ** 2, cfg.hidden_size),
                                  (None, None, "embed"), rngs=rngs)

  def __call__(self, patches):
    b, h, w, d = patches.shape
    x = patches.reshape(b, h * w, d) + _resample_grid(self.pos_embed[...], (h, w)).astype(patches.dtype)
    return super().__call__(x).reshape(b, h, w, d)


class Dinov2Output(NamedTuple):
  last_hidden_state: jax.Array  # (B, 1 + R + h*w, D), after the final LN (HF's)
  pooler_output: jax.Array      # (B, D): the final-LN class token (HF's pooled output)
  patch_tokens: jax.Array       # (B, h, w, D): the final-LN tokens after the 1 + R prefix (denoised with DVT)


class Dinov2WithRegisters(nnx.Module):
  """HF `Dinov2WithRegistersModel` (+ the optional DVT denoiser). `dtype`: compute dtype (norms and
  position resampling stay float32); `scan`: parameters stacked over layers; `remat`: recompute
  each block in the backward pass."""

  def __init__(self, cfg: Dinov2Config, *, dtype=jnp.float32, scan: bool = False, remat: bool = False,
               rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
    self.encoder = Encoder(cfg, dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.layernorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.denoiser = DVTDenoiser(cfg, dtype=dtype, rngs=rngs) if cfg.dvt_denoiser else None

  @property
  def dense_stride(self) -> int:
    return self.config.patch_size

  def __call__(self, pixels) -> Dinov2Output:
    """(B, H, W, 3) -> Dinov2Output; H, W need not be multiples of 14 (the remainder is dropped)."""
    x, (h, w) = self.embeddings(pixels)
    x = self.layernorm(self.encoder(x))
    patches = x[:, self.config.num_prefix_tokens:].reshape(x.shape[0], h, w, -1)
    if self.denoiser is not None:
      patches = self.denoiser(patches)
    return Dinov2Output(x, x[:, 0], patches)

  def trunk_features(self, pixels, rng=None):
    """(B, H, W, 3) -> patch tokens (B, h, w, D) (a frozen tower: `rng` is unused)."""
    return self(pixels).patch_tokens


def build(cfg: Dinov2Config, *, rngs: nnx.Rngs, **model_kw) -> Dinov2WithRegisters:
  return Dinov2WithRegisters(cfg, rngs=rngs, **model_kw)


def abstract_model(cfg: Dinov2Config, **model_kw) -> Dinov2WithRegisters:
  """A model whose parameters are shapes only (no memory, no compute)."""
  return nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0), **model_kw))
