"""CLIP (ViT image tower + causal text tower) in Flax NNX.

Attribute names mirror HuggingFace `CLIPModel` (`vision_model.encoder.layers.3.self_attn.q_proj`,
`pre_layrnorm` included), so weight interchange is a rename plus transposes (`interchange/clip_keys.py`).
Every parameter carries logical axis names; `ovs_jax.sharding` maps them onto a mesh.
Images are NHWC float arrays already normalised with CLIP's mean/std.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax import layers
from ovs_jax.layers import MultiHeadAttention, linear
from ovs_jax.models.clip_config import CLIPConfig, TowerConfig
from ovs_jax.models.pos_embed import resample_position_embedding
from ovs_jax.ops.remat import remat_scan
from ovs_jax.sharding import constrain_batch

_normal = nnx.initializers.normal(0.02)
_part = nnx.with_partitioning

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # SigLIP (models/siglip.py)
}


def dense(din, dout, names, *, dtype, rngs, use_bias=True):
  """CLIP's Linear: N(0, 0.02) kernel (HF's init), logical names (in, out)."""
  return linear(din, dout, names, dtype=dtype, rngs=rngs, use_bias=use_bias, kernel_init=_normal)


def layer_norm(d, eps, *, rngs):
  # Kept in float32 under bfloat16 compute; exact (two-pass) variance for parity with PyTorch.
  return layers.layer_norm(d, dtype=jnp.float32, eps=eps, exact_variance=True, rngs=rngs)


class MLP(nnx.Module):

  def __init__(self, cfg: TowerConfig, *, dtype, rngs: nnx.Rngs):
    self.act = ACTIVATIONS[cfg.hidden_act]
    self.fc1 = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nnx.Module):
  """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  def __init__(self, cfg: TowerConfig, *, dtype, rngs: nnx.Rngs):
    self.layer_norm1 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_attention_heads, dtype=dtype,
                                        kernel_init=_normal, rngs=rngs)
    self.layer_norm2 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, causal: bool = False, maskclip: bool = False, keep=None):
    """keep: optional (2, B) stochastic-depth scales of the attention and MLP branches
    (`drop_path_scales`)."""
    h = self.layer_norm1(x)
    h = self.self_attn.value_path(h) if maskclip else self.self_attn(h, h, h, is_causal=causal)
    x = x + (h if keep is None else h * keep[0, :, None, None].astype(h.dtype))
    h = self.mlp(self.layer_norm2(x))
    # Block boundary: keep activations batch-sharded over data×fsdp (no-op without a mesh).
    return constrain_batch(x + (h if keep is None else h * keep[1, :, None, None].astype(h.dtype)))


def drop_path_scales(rng, layers: int, batch: int, rate: float):
  """(layers, 2, B) branch scales of timm's DropPath per block (attention, MLP: one draw each):
  0, or 1/(1 − p_l) with probability 1 − p_l, p_l rising linearly from 0 to `rate` over the blocks
  (GKC's ViT, clip_models.py:365-373, 393, 410)."""
  keep_prob = 1.0 - jnp.linspace(0.0, rate, layers)[:, None, None]
  return jax.random.bernoulli(rng, keep_prob, (layers, 2, batch)) / keep_prob


class Encoder(nnx.Module):
  """A stack of EncoderLayers; `scan` stacks their parameters on a leading 'layers' axis."""

  def __init__(self, cfg: TowerConfig, *, dtype, scan: bool, remat: bool, rngs: nnx.Rngs):
    self.scan, self.remat = scan, remat
    n = cfg.num_hidden_layers
    if scan:
      @nnx.split_rngs(splits=n)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make(r):
        return EncoderLayer(cfg, dtype=dtype, rngs=r)
      self.layers = make(rngs)
    else:
      self.layers = nnx.List([EncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(n)])

  def __call__(self, x, *, causal: bool = False, maskclip_last: bool = False):
    """(B, T, D) -> (B, T, D); with `maskclip_last` the last block uses the value path only."""
    def block(layer, h, maskclip=False):
      return layer(h, causal=causal, maskclip=maskclip)
    if not self.scan:
      layers = list(self.layers)
      last = layers.pop() if maskclip_last else None
      if self.remat and layers:  # scanned: XLA:CPU undoes remat in an unrolled loop (ops/remat.py)
        x = remat_scan(layers, x, causal=causal)
      else:
        for layer in layers:
          x = block(layer, x)
      return x if last is None else block(last, x, True)
    if self.remat:
      block = nnx.remat(block, static_argnums=(2,))
    graphdef, state = nnx.split(self.layers)
    def body(h, layer_state):
      return block(nnx.merge(graphdef, layer_state), h), None
    if not maskclip_last:
      return jax.lax.scan(body, x, state)[0]
    x = jax.lax.scan(body, x, jax.tree.map(lambda a: a[:-1], state))[0]
    return block(nnx.merge(graphdef, jax.tree.map(lambda a: a[-1], state)), x, True)


  def run_blocks(self, x, start: int, stop: int, keep=None):
    """(B, T, D) through layers [start, stop) (0-based), as `__call__` runs them; keep: optional
    (stop − start, 2, B) stochastic-depth scales (unrolled layers without remat only)."""
    if keep is not None and (self.scan or self.remat):
      raise ValueError("stochastic depth (drop_path) runs with model.scan=False and model.remat=False")
    if not self.scan:
      layers = list(self.layers)[start:stop]
      if self.remat and layers:
        return remat_scan(layers, x)
      for i, layer in enumerate(layers):
        x = layer(x, keep=None if keep is None else keep[i])
      return x
    block = (lambda layer, h: layer(h))
    if self.remat:
      block = nnx.remat(block)
    graphdef, state = nnx.split(self.layers)
    def body(h, layer_state):
      return block(nnx.merge(graphdef, layer_state), h), None
    return jax.lax.scan(body, x, jax.tree.map(lambda a: a[start:stop], state))[0]


class VisionEmbeddings(nnx.Module):

  def __init__(self, cfg: TowerConfig, *, dtype, rngs: nnx.Rngs):
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_size = p
    self.patch_embedding = nnx.Conv(3, d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                                    dtype=dtype, kernel_init=_part(_normal, (None, None, None, "embed")),
                                    rngs=rngs)
    self.class_embedding = nnx.Param(_normal(rngs.params(), (d,)), out_sharding=("embed",))
    num_positions = (cfg.image_size // p) ** 2 + 1
    self.position_embedding = nnx.Embed(num_positions, d, dtype=dtype,
                                        embedding_init=_part(_normal, (None, "embed")), rngs=rngs)

  def __call__(self, pixels):
    """(B, H, W, 3) -> tokens (B, 1 + h*w, D) and the patch grid (h, w)."""
    x = self.patch_embedding(pixels)
    b, h, w, d = x.shape
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, d))
    pos = resample_position_embedding(self.position_embedding.embedding[...], (h, w))
    return jnp.concatenate([cls, x.reshape(b, h * w, d)], axis=1) + pos.astype(x.dtype), (h, w)


class VisionTransformer(nnx.Module):
  """HF `vision_model`."""

  def __init__(self, cfg: TowerConfig, *, dtype, scan, remat, rngs: nnx.Rngs):
    self.embeddings = VisionEmbeddings(cfg, dtype=dtype, rngs=rngs)
    self.pre_layrnorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.encoder = Encoder(cfg, dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.post_layernorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, pixels, *, maskclip: bool = False):
    """(B, H, W, 3) -> last hidden state (B, 1 + h*w, D) and the grid (h, w)."""
    x, grid = self.embeddings(pixels)
    x = self.encoder(self.pre_layrnorm(x), maskclip_last=maskclip)
    return x, grid

  def trunk_features(self, pixels, rng=None, *, maskclip: bool = False):
    """(B, H, W, 3) -> (B, h, w, D): patch tokens of the last block, before the CLIP head (CLIP's
    ViTs train without stochastic depth: `rng` is unused)."""
    x, (h, w) = self(pixels, maskclip=maskclip)
    return x[:, 1:].reshape(x.shape[0], h, w, -1)

  def block_features(self, pixels, blocks, rng=None, drop_path: float = 0.0):
    """(B, H, W, 3) -> [(B, h, w, D)]: patch tokens after each of `blocks` (1-based, increasing;
    e.g. 4, 6, 8, 12 for a 4-level pyramid), no layer past the last one run. With `rng` and
    `drop_path` > 0 (training): stochastic depth over all the tower's blocks (`drop_path_scales`)."""
    x, (h, w) = self.embeddings(pixels)
    x = self.pre_layrnorm(x)
    keep = None
    if rng is not None and drop_path > 0:
      if self.encoder.scan or self.encoder.remat:
        raise ValueError("stochastic depth (drop_path) runs with model.scan=False and model.remat=False")
      keep = drop_path_scales(rng, len(self.encoder.layers), x.shape[0], drop_path)
    out, start = [], 0
    for stop in blocks:
      x = self.encoder.run_blocks(x, start, stop, None if keep is None else keep[start:stop])
      out.append(x[:, 1:].reshape(x.shape[0], h, w, -1))
      start = stop
    return out


class TextEmbeddings(nnx.Module):
  """HF `text_model.embeddings`: token and position tables (added in `TextTransformer`)."""

  def __init__(self, cfg: TowerConfig, *, dtype, rngs: nnx.Rngs):
    self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                     embedding_init=_part(_normal, ("vocab", "embed")), rngs=rngs)
    self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype,
                                        embedding_init=_part(_normal, (None, "embed")), rngs=rngs)


class TextTransformer(nnx.Module):
  """HF `text_model`: causal transformer pooled at the end-of-text token."""

  def __init__(self, cfg: TowerConfig, *, dtype, scan, remat, rngs: nnx.Rngs):
    self.eos_token_id = cfg.eos_token_id
    self.embeddings = TextEmbeddings(cfg, dtype=dtype, rngs=rngs)
    self.encoder = Encoder(cfg, dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.final_layer_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, ids):
    """(B, L) int ids -> (token states (B, L, D), pooled EOT state (B, D))."""
    return self.from_embeddings(self.embeddings.token_embedding(ids), eot_position(ids, self.eos_token_id))

  def from_embeddings(self, token_embeddings, eot):
    """Token embeddings (B, L, D) (e.g. learned prompt vectors spliced before a class name) and
    the EOT index (B,) -> (token states (B, L, D), pooled EOT state (B, D))."""
    pos = self.embeddings.position_embedding.embedding[: token_embeddings.shape[1]]
    x = self.encoder(token_embeddings + pos.astype(token_embeddings.dtype), causal=True)
    x = self.final_layer_norm(x)
    return x, jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]


def eot_position(ids, eos_token_id: int):
  """(B, L) ids -> (B,) index of the pooled end-of-text token, exactly as transformers' CLIP:
  the legacy eos id 2 (OpenAI checkpoints on the hub) pools at argmax(ids), EOT having the highest
  id; any other eos id pools at its first occurrence."""
  if eos_token_id == 2:
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax(ids == eos_token_id, axis=-1)


class CLIPBase(nnx.Module):
  """What every CLIP variant shares: the causal text tower (HF names), its projection, the logit
  scale and the contrastive logits. Subclasses build the image side (`image_tower`, `image_head`)."""

  def _init_text(self, text: TowerConfig, projection_dim: int, logit_scale_init: float, *, dtype,
                 scan, remat, rngs):
    self.text_model = TextTransformer(text, dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.text_projection = dense(text.hidden_size, projection_dim, ("embed", "proj"),
                                 dtype=dtype, rngs=rngs, use_bias=False)
    self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32), out_sharding=())

  @property
  def image_tower(self) -> nnx.Module:
    """The image tower module; its `trunk_features(pixels)` gives the dense map before the CLIP head."""
    raise NotImplementedError

  def image_head(self, features):
    """CLIP head applied to any trunk feature vectors (..., width) -> (..., P)."""
    raise NotImplementedError

  @property
  def dense_stride(self) -> int:
    """Input pixels per position of the dense map."""
    raise NotImplementedError

  def backbone_channels(self) -> dict[str, int] | None:
    """Channels of `backbone_features`' levels, or None."""
    return None

  def backbone_features(self, pixels, rng=None):
    """{'res2'..'res5'} pyramid of a convolutional tower, or None (a ViT has one stride). `rng`:
    training-time randomness (stochastic depth) where the tower has any."""
    return None

  def trunk_features(self, pixels, **kw):
    """(B, H, W, 3) -> (B, h, w, width): the dense map before the CLIP head."""
    return self.image_tower.trunk_features(pixels, **kw)

  def dense_features(self, pixels, **kw):
    """(B, H, W, 3) -> (B, h, w, P): every position of the dense map through the CLIP head."""
    return self.image_head(self.trunk_features(pixels, **kw))

  def image_and_dense_features(self, pixels):
    """(B, H, W, 3) -> ((B, P) image embeddings, (B, h, w, P) dense map) from one forward."""
    raise NotImplementedError

  def get_image_features(self, pixels):
    """(B, H, W, 3) -> (B, P) unnormalised image embeddings."""
    return self.image_and_dense_features(pixels)[0]

  def get_text_features(self, ids):
    """(B, L) token ids -> (B, P) unnormalised text embeddings."""
    return self.text_projection(self.text_model(ids)[1])

  def text_features_from_embeddings(self, token_embeddings, eot):
    """(B, L, D) token embeddings, (B,) EOT index -> (B, P) unnormalised text embeddings."""
    return self.text_projection(self.text_model.from_embeddings(token_embeddings, eot)[1])

  def __call__(self, pixels, ids):
    """Logits per image (B_img, B_txt) = exp(logit_scale) * cosine."""
    img = l2_normalize(self.get_image_features(pixels).astype(jnp.float32))
    txt = l2_normalize(self.get_text_features(ids).astype(jnp.float32))
    return jnp.exp(self.logit_scale[...]) * img @ txt.T


class OpenCLIPConvCLIP(CLIPBase):
  """OpenCLIP's `CLIP` with a convolutional image tower (`tower`, a class) at `visual`, under
  OpenCLIP's names, and a stride-32 dense map; the text tower as every CLIP here."""
  tower: type
  dense_stride = 32

  def __init__(self, cfg, *, dtype=jnp.float32, scan: bool = False, remat: bool = False,
               rngs: nnx.Rngs):
    self.config = cfg
    self.visual = self.tower(cfg.vision, dtype=dtype, remat=remat, rngs=rngs)
    self._init_text(cfg.text, cfg.projection_dim, cfg.logit_scale_init_value, dtype=dtype,
                    scan=scan, remat=remat, rngs=rngs)

  @property
  def image_tower(self):
    return self.visual

  def backbone_features(self, pixels, rng=None):
    return self.visual.features(pixels, rng)

  def trunk_features(self, pixels, rng=None, *, maskclip: bool = False):
    """(B, H, W, 3) -> `clip_vis_dense` (B, H/32, W/32, C). `maskclip` changes nothing: a
    convolutional tower has no attention to bypass; MaskCLIP's ResNet change is in its head."""
    return self.visual.trunk_features(pixels, rng)

  def get_image_features(self, pixels):
    return self.visual(pixels)


class CLIP(CLIPBase):
  """HF `CLIPModel` (ViT image tower): both towers, their projections and the logit scale."""

  def __init__(self, cfg: CLIPConfig, *, dtype=jnp.float32, scan: bool = False, remat: bool = False,
               rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.vision_model = VisionTransformer(cfg.vision, **kw)
    self._init_text(cfg.text, cfg.projection_dim, cfg.logit_scale_init_value, **kw)
    self.visual_projection = dense(cfg.vision.hidden_size, cfg.projection_dim, ("embed", "proj"),
                                   dtype=dtype, rngs=rngs, use_bias=False)

  @property
  def image_tower(self):
    return self.vision_model

  @property
  def dense_stride(self):
    return self.config.vision.patch_size

  def image_head(self, tokens):
    """CLIP head (post-LN, projection) applied to any tokens (..., D) -> (..., P)."""
    return self.visual_projection(self.vision_model.post_layernorm(tokens))

  def image_and_dense_features(self, pixels):
    """Class token and every patch token through the CLIP head."""
    x, (h, w) = self.vision_model(pixels)
    out = self.image_head(x)
    return out[:, 0], out[:, 1:].reshape(x.shape[0], h, w, -1)

  def get_image_features(self, pixels):
    """(B, H, W, 3) -> (B, P) unnormalised image embeddings (class token)."""
    x, _ = self.vision_model(pixels)
    return self.image_head(x[:, 0])


def l2_normalize(x, eps=1e-12):
  """x / max(|x|, eps) along the last axis; finite gradient at x = 0 (an empty mask's pool)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
