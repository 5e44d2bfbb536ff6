"""SigLIP (Zhai et al., ICCV 2023) in Flax NNX: a ViT image tower pooled by a MAP head, a text
transformer pooled at its last token, and the sigmoid loss's logit scale and bias.

Attribute names mirror transformers' `SiglipModel` (`vision_model.head.probe`,
`text_model.head`, `logit_bias`), so HF weights load through `interchange.torch_state` as CLIP's do;
the transformer blocks are CLIP's (`models/clip.py` `Encoder`: pre-LN, biases, one attention entry
point), with SigLIP's tanh-approximated GELU and LN eps 1e-6. Differences from CLIP: the patch
embedding has a bias, no class token and no pre-LN; the text tower is not causal and pools the last
position; logits = exp(scale) · cos + bias.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from ovs_jax.models.clip import Encoder, MLP, dense, l2_normalize, layer_norm
from ovs_jax.models.clip_config import TowerConfig
from ovs_jax.ops.attention import multi_head_attention

_normal = nnx.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  vision: TowerConfig
  text: TowerConfig
  logit_scale_init: float = 2.302585  # log 10, SigLIP's init
  logit_bias_init: float = -10.0


def from_hf_dict(d: dict) -> SiglipConfig:
  """A transformers `SiglipConfig` dict -> SiglipConfig."""
  def tower(t, **kw):
    keys = {f.name for f in dataclasses.fields(TowerConfig)}
    return TowerConfig(**{k: v for k, v in {**t, **kw}.items() if k in keys})
  v, t = d["vision_config"], d["text_config"]
  act = lambda c: c.get("hidden_act", "gelu_pytorch_tanh")
  return SiglipConfig(vision=tower(v, hidden_act=act(v), layer_norm_eps=v.get("layer_norm_eps", 1e-6)),
                      text=tower(t, hidden_act=act(t), layer_norm_eps=t.get("layer_norm_eps", 1e-6),
                                 max_position_embeddings=t.get("max_position_embeddings", 64)))


class MultiheadAttentionPool(nnx.Module):
  """HF `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the tokens (torch
  `nn.MultiheadAttention`, packed `in_proj_weight` kept in its (3D, D) layout), then LN and an MLP
  with a residual."""

  def __init__(self, cfg: TowerConfig, *, dtype, rngs):
    d = cfg.hidden_size
    self.num_heads, self.dtype = cfg.num_attention_heads, dtype
    self.probe = nnx.Param(_normal(rngs.params(), (1, 1, d)))
    self.attention = nnx.Module()
    self.attention.in_proj_weight = nnx.Param(_normal(rngs.params(), (3 * d, d)))
    self.attention.in_proj_bias = nnx.Param(jnp.zeros((3 * d,)))
    self.attention.out_proj = dense(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)
    self.layernorm = layer_norm(d, cfg.layer_norm_eps, rngs=rngs)
    self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    """(B, L, D) -> (B, D)."""
    w, b = self.attention.in_proj_weight[...], self.attention.in_proj_bias[...]
    (wq, wk, wv), (bq, bk, bv) = jnp.split(w, 3), jnp.split(b, 3)
    probe = jnp.broadcast_to(self.probe[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
    out = multi_head_attention(probe @ wq.T.astype(x.dtype) + bq, x @ wk.T.astype(x.dtype) + bk,
                               x @ wv.T.astype(x.dtype) + bv, self.num_heads)
    h = self.attention.out_proj(out)
    return (h + self.mlp(self.layernorm(h)))[:, 0]


class SiglipVisionEmbeddings(nnx.Module):

  def __init__(self, cfg: TowerConfig, *, dtype, rngs):
    p, d = cfg.patch_size, cfg.hidden_size
    self.patch_embedding = nnx.Conv(3, d, (p, p), strides=(p, p), padding="VALID", use_bias=True,
                                    dtype=dtype, kernel_init=_normal, rngs=rngs)
    self.position_embedding = nnx.Embed((cfg.image_size // p) ** 2, d, dtype=dtype,
                                        embedding_init=_normal, rngs=rngs)

  def __call__(self, pixels):
    """(B, H, W, 3) at the training grid -> (B, h*w, D), (h, w)."""
    x = self.patch_embedding(pixels)
    b, h, w, d = x.shape
    pos = self.position_embedding.embedding[...]
    if pos.shape[0] != h * w:
      raise ValueError(f"SigLIP position table has {pos.shape[0]} slots, the image gives a {h}x{w} grid; "
                       "give images at the tower's image_size")
    return x.reshape(b, h * w, d) + pos.astype(x.dtype), (h, w)


class SiglipVisionTransformer(nnx.Module):
  """HF `vision_model`."""

  def __init__(self, cfg: TowerConfig, *, dtype, scan, remat, rngs):
    self.embeddings = SiglipVisionEmbeddings(cfg, dtype=dtype, rngs=rngs)
    self.encoder = Encoder(cfg, dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.post_layernorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.head = MultiheadAttentionPool(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, pixels):
    """(B, H, W, 3) -> (tokens after post-LN (B, h*w, D), pooled (B, D), grid)."""
    x, grid = self.embeddings(pixels)
    x = self.post_layernorm(self.encoder(x))
    return x, self.head(x), grid


class SiglipTextEmbeddings(nnx.Module):

  def __init__(self, cfg: TowerConfig, *, dtype, rngs):
    self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                     embedding_init=_normal, rngs=rngs)
    self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype,
                                        embedding_init=_normal, rngs=rngs)


class SiglipTextTransformer(nnx.Module):
  """HF `text_model`: bidirectional, pooled at the last position (ids padded to the context length)."""

  def __init__(self, cfg: TowerConfig, *, dtype, scan, remat, rngs):
    self.embeddings = SiglipTextEmbeddings(cfg, dtype=dtype, rngs=rngs)
    self.encoder = Encoder(cfg, dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.final_layer_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
    self.head = dense(cfg.hidden_size, cfg.hidden_size, ("embed", "proj"), dtype=dtype, rngs=rngs)

  def __call__(self, ids):
    """(B, L) ids -> (B, D) text embeddings (unnormalised)."""
    pos = self.embeddings.position_embedding.embedding[: ids.shape[1]]
    x = self.embeddings.token_embedding(ids) + pos
    x = self.final_layer_norm(self.encoder(x))
    return self.head(x[:, -1])


class Siglip(nnx.Module):
  """HF `SiglipModel`."""

  def __init__(self, cfg: SiglipConfig, *, dtype=jnp.float32, scan: bool = False, remat: bool = False,
               rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=dtype, scan=scan, remat=remat, rngs=rngs)
    self.vision_model = SiglipVisionTransformer(cfg.vision, **kw)
    self.text_model = SiglipTextTransformer(cfg.text, **kw)
    self.logit_scale = nnx.Param(jnp.full((1,), cfg.logit_scale_init, jnp.float32))
    self.logit_bias = nnx.Param(jnp.full((1,), cfg.logit_bias_init, jnp.float32))

  def get_image_features(self, pixels):
    return self.vision_model(pixels)[1]

  def get_text_features(self, ids):
    return self.text_model(ids)

  def __call__(self, pixels, ids):
    """Logits per image (B_img, B_txt) = exp(scale) · cos + bias (the sigmoid loss's logits)."""
    img = l2_normalize(self.get_image_features(pixels).astype(jnp.float32))
    txt = l2_normalize(self.get_text_features(ids).astype(jnp.float32))
    return jnp.exp(self.logit_scale[...]) * img @ txt.T + self.logit_bias[...]


def abstract_siglip(cfg: SiglipConfig, **model_kw) -> Siglip:
  return nnx.eval_shape(lambda: Siglip(cfg, rngs=nnx.Rngs(0), **model_kw))
