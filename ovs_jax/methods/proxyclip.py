"""ProxyCLIP (Lan et al., ECCV 2024): a vision foundation model's patch similarities as the
attention of CLIP's last block ("proxy attention").

`open_clip/transformer.py:503-538` and `:560-587` of github.com/mc-lan/ProxyCLIP: the last block
keeps only its attention, whose weights are softmax over keys of
  S' = γ (S − β · mean(S)),  S = f̂ f̂ᵀ the cosines of the VFM's patch features, S' < 0 → −∞,
shared by all heads; CLIP's values (patch tokens only, no class token) are resized bilinearly to the
VFM's grid, so the output is at the VFM's resolution; out_proj, then the CLIP head.
The VFM sees the crop renormalised from CLIP's to ImageNet's mean/std (`proxyclip_segmentor.py:79-80,
113`); DINOv2 gives its final-LN patch tokens (`get_intermediate_layers(reshape=True)[0]`, :156-159).
mean(S) is per image here (the official mean runs over the batch, which is one crop at a time).
Test protocol (`proxyclip_segmentor.py:30-31`, `configs/`): β = 1.2, γ = 3.0, logit scale 40,
background threshold 0.2 VOC21, 0.25 COCO-Object, 0.15 PC60, sliding 336 px windows at stride 112
(224 / 112 Cityscapes), short side 336 (448 ADE20K and Cityscapes), the 80 OpenAI ImageNet templates,
no PAMR. The official VFMs are DINO, DINOv2 (ViT-B/14 with registers), SAM and MAE; here DINOv2
(`models/dinov2.py`), or `vfm="clip"`: the CLIP's own tokens entering its last block (a stand-in for
the offline demo, where no DINOv2 weights exist). Backbones: CLIP ViTs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax import preprocess
from ovs_jax.methods.training_free import Scoring, TrainingFreeMethod, training_free_model
from ovs_jax.models.clip import l2_normalize
from ovs_jax.models.clip_last_block import last_block_input
from ovs_jax.ops.resize import resize

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def proxy_attention(proxy, beta: float = 1.2, gamma: float = 3.0):
  """proxy (B, H', W', C) VFM features -> weights (B, N, N), N = H'·W': softmax of
  γ (S − β mean(S)) with negatives at −∞, S the proxy features' cosines."""
  f = l2_normalize(proxy.reshape(proxy.shape[0], -1, proxy.shape[-1]).astype(jnp.float32))
  s = jnp.einsum("bmc,bnc->bmn", f, f)
  s = (s - beta * s.mean(axis=(1, 2), keepdims=True)) * gamma
  return jax.nn.softmax(jnp.where(s < 0, -jnp.inf, s), axis=-1)


def proxy_last_block(block, x, grid, proxy, beta: float = 1.2, gamma: float = 3.0):
  """x (B, 1 + h·w, D) entering the last block, proxy (B, H', W', C) -> (B, H', W', D): the proxy
  attention over CLIP's patch values resized to (H', W'), through out_proj."""
  b, (h, w), (hp, wp) = x.shape[0], grid, proxy.shape[1:3]
  v = block.self_attn.v_proj(block.layer_norm1(x))[:, 1:].reshape(b, h, w, -1)
  v = resize(v, hp, wp).reshape(b, hp * wp, -1)
  y = jnp.einsum("bmn,bnd->bmd", proxy_attention(proxy, beta, gamma).astype(v.dtype), v)
  return block.self_attn.out_proj(y).reshape(b, hp, wp, -1)


class ProxyPair(nnx.Module):
  """A CLIP and the VFM whose attention it borrows (`vfm` None: the CLIP's own tokens)."""

  def __init__(self, clip, vfm=None):
    self.clip, self.vfm = clip, vfm


def vfm_pixels(pixels):
  """CLIP-normalised (B, H, W, 3) -> ImageNet-normalised, as ProxyCLIP renormalises for the VFM."""
  mean, std = jnp.asarray(preprocess.CLIP_MEAN), jnp.asarray(preprocess.CLIP_STD)
  return (pixels * std + mean - IMAGENET_MEAN) / IMAGENET_STD


def proxyclip_features(pair: ProxyPair, pixels, beta: float = 1.2, gamma: float = 3.0):
  """(B, H, W, 3) -> (B, H', W', P) at the VFM's grid (the CLIP's with the stand-in)."""
  clip = pair.clip
  x, grid, block = last_block_input(clip, pixels)
  if pair.vfm is None:
    proxy = x[:, 1:].reshape(x.shape[0], *grid, -1)
  else:
    proxy = pair.vfm(vfm_pixels(pixels)).patch_tokens
  return clip.image_head(proxy_last_block(block, x, grid, proxy, beta, gamma))


def load_vfm(spec: str | None):
  """None or "clip" -> None (the stand-in); else DINOv2 weights (`interchange.dinov2.load_dinov2`);
  `random:<preset>` a random DINOv2 (pipeline checks only)."""
  if spec in (None, "", "clip"):
    return None
  from ovs_jax.models import dinov2
  if spec.startswith("random:"):
    return dinov2.build(dinov2.get_preset(spec.removeprefix("random:")), rngs=nnx.Rngs(0))
  from ovs_jax.interchange.dinov2 import load_dinov2
  return load_dinov2(spec)


class ProxyCLIP(TrainingFreeMethod):
  name = "proxyclip"
  options = {"beta": 1.2, "gamma": 3.0}
  scoring = Scoring(logit_scale=40.0)

  def settings(self, config):
    return super().settings({k: v for k, v in dict(config or {}).items() if k != "vfm"})

  def features(self, pair, pixels, beta=1.2, gamma=3.0):
    return proxyclip_features(pair, pixels, beta, gamma)

  def clip_model(self, clip, vocabulary, *, templates, cache_dir=None, name=None, config=None):
    """config may name "vfm": DINOv2 weights, "random:<preset>", or "clip" (default: the stand-in)."""
    config = dict(config or {})
    vfm = load_vfm(config.pop("vfm", None))
    options, scoring = self.settings(config)
    stride = clip.dense_stride if vfm is None else math.lcm(clip.dense_stride, vfm.dense_stride)
    return training_free_model(clip, vocabulary, features=self.features, options=options,
                               scoring=scoring, templates=templates, cache_dir=cache_dir,
                               name=name or self.name, vision=ProxyPair(clip, vfm),
                               input_multiple=stride)


METHOD = ProxyCLIP()
