"""MaskCLIP (Zhou et al. 2022): training-free dense classification with a frozen CLIP.

Each patch's MaskCLIP feature (a ViT: the last block's value path, then the CLIP head; a CLIP
ResNet: each res5 pixel through the attention pool's value and output projections) is compared by
cosine with the text classifier; a class's score is the max over its synonyms; scores are upsampled
to the image. MaskCLIP's two refinements are options (`maskclip_head.py:129-155` of
github.com/chongzhou96/MaskCLIP, thresholds 0 = off as in its head; its configs use 0.5 and 1.0):
prompt denoising drops a class whose softmax confidence (×100) stays below `pd_thresh` at every
position; key smoothing replaces the class probabilities of each position whose top probability is
below `ks_thresh` by their average over all positions weighted by the last block's key similarity.
The baseline every method is compared with, and the second implementation of the method contract.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.methods.base import Method
from ovs_jax.models.clip import l2_normalize
from ovs_jax.ops.resize import resize
from ovs_jax.text_classifier import build_text_classifier, max_over_synonyms


def maskclip_class_logits(model, pixels, text_embeddings, synonym_index, *, pd_thresh: float = 0.0,
                          ks_thresh: float = 0.0):
  """pixels (B, H, W, 3) normalised -> class scores (B, H, W, C): logit-scaled cosines, or with a
  refinement on, what MaskCLIP's head returns (cosines, -100 for denoised classes; probabilities
  after key smoothing).

  text_embeddings (S, D) L2-normalised, synonym_index (C, K).
  """
  if ks_thresh > 0:
    dense, keys = dense_features_and_keys(model, pixels)
  else:
    dense, keys = model.dense_features(pixels, maskclip=True), None
  dense = l2_normalize(dense.astype(jnp.float32))
  cos = max_over_synonyms(jnp.einsum("bhwd,sd->bhws", dense, text_embeddings), synonym_index)
  if pd_thresh > 0 or ks_thresh > 0:
    scores = refine_output(cos, keys, pd_thresh, ks_thresh)
  else:
    scores = jnp.exp(model.logit_scale[...]) * cos
  return resize(scores, *pixels.shape[1:3])


def prompt_denoising(cos, pd_thresh: float):
  """cos (B, h, w, C) -> cos with every class whose max over positions of softmax_c(100·cos) is
  below `pd_thresh` set to -100 (maskclip_head.py:130-135)."""
  conf = jax.nn.softmax(100.0 * cos, axis=-1).max(axis=(1, 2), keepdims=True)
  return jnp.where(conf < pd_thresh, -100.0, cos)


def key_smoothing(scores, keys, ks_thresh: float):
  """scores (B, h, w, C), keys (B, h, w, Dk) -> probabilities p = softmax_c(100·scores), where the
  positions with max_c p < `ks_thresh` take W·p, W = k̂ k̂ᵀ (maskclip_head.py:137-153). As the code
  (`F.normalize(k, p=2)` on (B, hw, Dk), dim=1), k̂ is normalised over the POSITIONS of each key
  channel, not over channels."""
  b, h, w, c = scores.shape
  p = jax.nn.softmax(100.0 * scores, axis=-1).reshape(b, h * w, c)
  k = keys.astype(jnp.float32).reshape(b, h * w, -1)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=1, keepdims=True), 1e-12)
  weighted = jnp.einsum("bpd,bqd,bqc->bpc", k, k, p)
  p = jnp.where(p.max(-1, keepdims=True) < ks_thresh, weighted, p)
  return p.reshape(b, h, w, c)


def refine_output(cos, keys, pd_thresh: float, ks_thresh: float):
  """MaskCLIP's test-time refinement (`MaskClipHead.refine_output`): denoising, then smoothing."""
  if pd_thresh > 0:
    cos = prompt_denoising(cos, pd_thresh)
  if keys is not None and ks_thresh > 0:
    cos = key_smoothing(cos, keys, ks_thresh)
  return cos


def dense_features_and_keys(clip, pixels):
  """(B, H, W, 3) -> (MaskCLIP dense features (B, h, w, P), keys (B, h, w, Dk)) from one forward.

  ViT: the last block's keys as MaskCLIP's `vit.py:97-102` computes them, out_proj(k_proj(ln_1 x))
  (it runs q, k and v alike through the output projection). CLIP ResNet: k_proj of each res5 pixel,
  no positional embedding (`maskclip_head.py:111-114`)."""
  if hasattr(clip, "vision_model"):
    tower = clip.vision_model
    x, (h, w) = tower.embeddings(pixels)
    x = tower.pre_layrnorm(x)
    n = clip.config.vision.num_hidden_layers
    x = tower.encoder.run_blocks(x, 0, n - 1)
    last = _layer(tower.encoder, n - 1)
    keys = last.self_attn.out_proj(last.self_attn.k_proj(last.layer_norm1(x)))
    tokens = last(x, maskclip=True)
    b = x.shape[0]
    return (clip.image_head(tokens[:, 1:]).reshape(b, h, w, -1),
            keys[:, 1:].reshape(b, h, w, -1))
  if hasattr(clip, "visual") and hasattr(clip.visual, "attnpool"):
    res5 = clip.trunk_features(pixels)
    return clip.image_head(res5), clip.visual.attnpool.k_proj(res5)
  raise ValueError(f"MaskCLIP key smoothing needs a CLIP ViT or ResNet, not {type(clip).__name__}")


def _layer(encoder, i: int):
  if not encoder.scan:
    return encoder.layers[i]
  graphdef, state = nnx.split(encoder.layers)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def maskclip_model(clip, vocabulary: list[list[str]], *, templates, cache_dir=None,
                   name: str = "maskclip", pd_thresh: float = 0.0, ks_thresh: float = 0.0):
  """MaskCLIP dense classification with `clip` (a CLIP module) over `vocabulary`; `pd_thresh`,
  `ks_thresh`: prompt denoising and key smoothing (0 = off)."""
  from ovs_jax.inference.segmentation_model import SegmentationModel
  clf = build_text_classifier(clip, vocabulary, templates, cache_dir=cache_dir)
  graphdef, state = nnx.split(clip)

  def apply(params, pixels, valid):
    del valid  # MaskCLIP scores every position independently of padding masks
    state, emb, index = params
    return maskclip_class_logits(nnx.merge(graphdef, state), pixels, emb, index,
                                 pd_thresh=pd_thresh, ks_thresh=ks_thresh)

  params = (state, jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index))
  return SegmentationModel(name, apply, params, [v[0] for v in vocabulary],
                           input_multiple=clip.dense_stride)


def clip_from_spec(spec: str, hidden_act: str | None = None, seed: int = 0):
  """`random:<arch>` -> randomly initialised preset of `models/clip_family` (pipeline checks: vit_b16,
  RN50, resnet_tiny, ...); `demo:<arch>` -> the preset
  pre-trained on the demo dataset (`ovs_jax.demo_clip`); else `load_clip(spec)`."""
  from ovs_jax.interchange.clip_weights import load_clip
  if spec.startswith("demo:"):
    from ovs_jax.demo_clip import demo_clip_dir
    return load_clip(demo_clip_dir(arch=spec.removeprefix("demo:"), seed=seed))
  if spec.startswith("random:"):
    from ovs_jax.models import clip_family
    return clip_family.build_clip(clip_family.get_arch(spec.removeprefix("random:")),
                                  rngs=nnx.Rngs(seed))
  return load_clip(spec, hidden_act=hidden_act)


class MaskCLIP(Method):
  name = "maskclip"
  trainable = False

  def build_model(self, config, architecture=None):
    from ovs_jax.methods.common import clip_from_config
    return clip_from_config(config, architecture)

  def architecture(self, model):
    from ovs_jax.models import clip_family
    return {"clip": clip_family.to_record(model.config)}

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    m = config.get("model", {})
    return maskclip_model(nnx.merge(graphdef, *states), vocabulary, templates=templates,
                          cache_dir=cache_dir, name=name or self.name,
                          pd_thresh=m.get("pd_thresh", 0.0), ks_thresh=m.get("ks_thresh", 0.0))

  def open_checkpoint(self, directory, config, *, templates=None, cache_dir=None):
    """config {"method": "maskclip", "clip": weights path (relative to the checkpoint directory),
    optional "templates" (a template set name; default "maskclip", its 85), "pd_thresh",
    "ks_thresh"}."""
    from ovs_jax.interchange.clip_weights import load_clip
    from ovs_jax.templates import get_templates
    clip = load_clip(Path(directory) / config["clip"], hidden_act=config.get("hidden_act"))
    templates = templates or get_templates(config.get("templates", "maskclip"))
    return lambda vocabulary: maskclip_model(
        clip, vocabulary, templates=templates, cache_dir=cache_dir,
        name=config.get("name", Path(directory).name), pd_thresh=config.get("pd_thresh", 0.0),
        ks_thresh=config.get("ks_thresh", 0.0))

METHOD = MaskCLIP()
