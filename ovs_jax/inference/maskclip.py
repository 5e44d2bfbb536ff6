"""The training-free MaskCLIP baseline as a `SegmentationModel`."""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from ovs_jax.inference.registry import SegmentationModel, register_method
from ovs_jax.interchange.clip_weights import load_clip
from ovs_jax.methods.maskclip import maskclip_class_logits
from ovs_jax.templates import VILD_TEMPLATES
from ovs_jax.text_classifier import build_text_classifier


def maskclip_model(clip, vocabulary: list[list[str]], *, templates=VILD_TEMPLATES, cache_dir=None,
                   name: str = "maskclip") -> SegmentationModel:
  """MaskCLIP dense classification with `clip` (a CLIP module) over `vocabulary`."""
  clf = build_text_classifier(clip, vocabulary, templates, cache_dir=cache_dir)
  graphdef, state = nnx.split(clip)

  def apply(params, pixels, valid):
    del valid  # MaskCLIP scores every position independently of padding masks
    state, emb, index = params
    return maskclip_class_logits(nnx.merge(graphdef, state), pixels, emb, index)

  params = (state, jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index))
  return SegmentationModel(name, apply, params, [v[0] for v in vocabulary],
                           input_multiple=clip.config.vision.patch_size)


@register_method("maskclip")
def from_checkpoint(directory: Path, config: dict, vocabulary, *, templates=VILD_TEMPLATES,
                    cache_dir=None) -> SegmentationModel:
  """config {"method": "maskclip", "clip": weights path (relative to the checkpoint directory)}."""
  clip = load_clip(Path(directory) / config["clip"], hidden_act=config.get("hidden_act"))
  return maskclip_model(clip, vocabulary, templates=templates, cache_dir=cache_dir,
                        name=config.get("name", Path(directory).name))


def clip_from_spec(spec: str, hidden_act: str | None = None, seed: int = 0):
  """`random:<arch>` -> randomly initialised preset (pipeline checks); `demo:<arch>` -> the preset
  pre-trained on the demo dataset (`ovs_jax.demo_clip`); else `load_clip(spec)`."""
  if spec.startswith("demo:"):
    from ovs_jax.demo_clip import demo_clip_dir
    return load_clip(demo_clip_dir(arch=spec.removeprefix("demo:"), seed=seed))
  if spec.startswith("random:"):
    from ovs_jax.models.clip import CLIP
    from ovs_jax.models.clip_config import get_preset
    return CLIP(get_preset(spec.removeprefix("random:")), rngs=nnx.Rngs(seed))
  return load_clip(spec, hidden_act=hidden_act)
