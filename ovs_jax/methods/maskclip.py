"""MaskCLIP (Zhou et al. 2022): training-free dense classification with a frozen CLIP.

Each patch's MaskCLIP feature (a ViT: the last block's value path, then the CLIP head; a CLIP
ResNet: each res5 pixel through the attention pool's value and output projections) is compared by
cosine with the text classifier; a class's score is the max over its synonyms; scores are upsampled
to the image.
The baseline every method is compared with, and the second implementation of the method contract.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from ovs_jax.methods.base import Method
from ovs_jax.models.clip import l2_normalize
from ovs_jax.ops.resize import resize
from ovs_jax.text_classifier import build_text_classifier, max_over_synonyms


def maskclip_class_logits(model, pixels, text_embeddings, synonym_index):
  """pixels (B, H, W, 3) normalised -> class logits (B, H, W, C).

  text_embeddings (S, D) L2-normalised, synonym_index (C, K).
  """
  dense = l2_normalize(model.dense_features(pixels, maskclip=True).astype(jnp.float32))
  syn = jnp.exp(model.logit_scale[...]) * jnp.einsum("bhwd,sd->bhws", dense, text_embeddings)
  logits = max_over_synonyms(syn, synonym_index)
  return resize(logits, *pixels.shape[1:3])


def maskclip_model(clip, vocabulary: list[list[str]], *, templates, cache_dir=None,
                   name: str = "maskclip"):
  """MaskCLIP dense classification with `clip` (a CLIP module) over `vocabulary`."""
  from ovs_jax.inference.segmentation_model import SegmentationModel
  clf = build_text_classifier(clip, vocabulary, templates, cache_dir=cache_dir)
  graphdef, state = nnx.split(clip)

  def apply(params, pixels, valid):
    del valid  # MaskCLIP scores every position independently of padding masks
    state, emb, index = params
    return maskclip_class_logits(nnx.merge(graphdef, state), pixels, emb, index)

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
    return maskclip_model(nnx.merge(graphdef, *states), vocabulary, templates=templates,
                          cache_dir=cache_dir, name=name or self.name)

  def open_checkpoint(self, directory, config, *, templates=None, cache_dir=None):
    """config {"method": "maskclip", "clip": weights path (relative to the checkpoint directory)}."""
    from ovs_jax.interchange.clip_weights import load_clip
    from ovs_jax.templates import VILD_TEMPLATES
    clip = load_clip(Path(directory) / config["clip"], hidden_act=config.get("hidden_act"))
    return lambda vocabulary: maskclip_model(clip, vocabulary, templates=templates or VILD_TEMPLATES,
                                             cache_dir=cache_dir, name=config.get("name", Path(directory).name))

METHOD = MaskCLIP()
