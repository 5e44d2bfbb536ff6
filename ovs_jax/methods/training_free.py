"""What the training-free family (SCLIP, ClearCLIP, NACLIP, ProxyCLIP) shares: a frozen CLIP ViT with
a rebuilt last block (`models/clip_last_block.py`) gives dense features; their cosines with the text
classifier are upsampled to the image, optionally refined by PAMR, and scored.

Each method module only says how its last block is rebuilt (`features(clip, pixels, **options)`) and
its options' defaults; the scoring follows the four official segmentors alike (e.g. SCLIP
`clip_segmentor.py:59-179`): cosines, bilinear upsampling, PAMR on the cosines, then
softmax(logit_scale · cos) with the background rule "label 0 where the top probability is below
`prob_thd`" (0 = off: the benchmarks without a background class).

Two differences from the official scoring, both where classes have synonyms or windows overlap:
a class's cosine is the max over its synonyms, taken at the patch grid before upsampling, PAMR and
the softmax (official: after them, over all synonyms' probabilities), and with `prob_thd` or PAMR on, a sliding window is scored and refined on
its own and the engine averages the windows (official: averages cosines, then one softmax and one
PAMR over the whole image). Whole-image inference without synonyms is the official rule exactly.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.methods.maskclip import MaskCLIP
from ovs_jax.models.clip import l2_normalize
from ovs_jax.ops.pamr import pamr
from ovs_jax.ops.resize import resize
from ovs_jax.text_classifier import build_text_classifier, max_over_synonyms

BACKGROUND_SCORE = 2.0  # above any probability: the background rule's label-0 vote


def class_scores(cos, *, logit_scale: float, prob_thd: float = 0.0):
  """cos (B, H, W, C) class cosines -> (B, H, W, C) scores: logit_scale · cos, or with `prob_thd` > 0
  the class probabilities softmax_c(logit_scale · cos), class 0 forced where the top probability is
  below `prob_thd` (official `postprocess_result`)."""
  if prob_thd <= 0:
    return logit_scale * cos
  p = jax.nn.softmax(logit_scale * cos, axis=-1)
  background = p.max(-1) < prob_thd
  return p.at[..., 0].set(jnp.where(background, BACKGROUND_SCORE, p[..., 0]))


def dense_cosines(features, clip, pixels, text_embeddings, **options):
  """(B, H, W, 3) -> (B, h, w, S) cosines of the method's dense features with the text embeddings."""
  dense = l2_normalize(features(clip, pixels, **options).astype(jnp.float32))
  return jnp.einsum("bhwd,sd->bhws", dense, text_embeddings)


@dataclasses.dataclass(frozen=True)
class Scoring:
  """The official segmentors' post-processing options (defaults: each method's segmentor defaults)."""
  logit_scale: float = 40.0
  prob_thd: float = 0.0
  pamr_steps: int = 0
  pamr_dilations: tuple = (8, 16)


def training_free_model(clip, vocabulary: list[list[str]], *, features: Callable, options: dict,
                        scoring: Scoring, templates, cache_dir=None, name: str, vision=None,
                        input_multiple=None):
  """A `SegmentationModel`: `features(vision, pixels, **options)` -> (B, h, w, P), then `scoring`.
  `vision`: the module the features read (default `clip`; ProxyCLIP: the CLIP and its VFM)."""
  from ovs_jax.inference.segmentation_model import SegmentationModel
  clf = build_text_classifier(clip, vocabulary, templates, cache_dir=cache_dir)
  graphdef, state = nnx.split(clip if vision is None else vision)

  def apply(params, pixels, valid):
    del valid  # every position is scored independently of the padding, as MaskCLIP
    state, emb, index = params
    cos = dense_cosines(features, nnx.merge(graphdef, state), pixels, emb, **options)
    # Synonyms first (as MaskCLIP): the upsampled map and PAMR hold C channels, not S.
    cos = resize(max_over_synonyms(cos, index), *pixels.shape[1:3])
    if scoring.pamr_steps:
      cos = pamr(pixels, cos, scoring.pamr_steps, scoring.pamr_dilations)
    return class_scores(cos, logit_scale=scoring.logit_scale, prob_thd=scoring.prob_thd)

  params = (state, jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index))
  return SegmentationModel(name, apply, params, [v[0] for v in vocabulary],
                           input_multiple=input_multiple or clip.dense_stride)


class TrainingFreeMethod(MaskCLIP):
  """A registered training-free method over a frozen CLIP (weights and architecture record as
  MaskCLIP's). Subclasses set `name`, `features`, `options` ({name: default}) and `scoring`."""

  trainable = False
  options: dict = {}
  scoring: Scoring = Scoring()
  templates: str = "imagenet"  # the 80 OpenAI ImageNet templates every official segmentor uses

  def features(self, clip, pixels, **options):
    raise NotImplementedError

  def settings(self, config) -> tuple[dict, Scoring]:
    """(feature options, Scoring) from a config dict: any option or Scoring field it names."""
    config = dict(config or {})
    unknown = set(config) - set(self.options) - {f.name for f in dataclasses.fields(Scoring)}
    if unknown:
      raise ValueError(f"{self.name}: unknown option(s) {sorted(unknown)}; expected any of "
                       f"{sorted(self.options)} or {[f.name for f in dataclasses.fields(Scoring)]}")
    options = {k: config.get(k, v) for k, v in self.options.items()}
    scoring = dataclasses.replace(self.scoring, **{k: v for k, v in config.items()
                                                   if k not in self.options})
    return options, scoring

  def clip_model(self, clip, vocabulary, *, templates, cache_dir=None, name=None, config=None):
    """This method over `clip` (a CLIP ViT) and `vocabulary`; `config`: option overrides."""
    options, scoring = self.settings(config)
    return training_free_model(clip, vocabulary, features=self.features, options=options,
                               scoring=scoring, templates=templates, cache_dir=cache_dir,
                               name=name or self.name)

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    m = {k: v for k, v in dict(config.get("model", {})).items() if k != "method"}
    return self.clip_model(nnx.merge(graphdef, *states), vocabulary, templates=templates,
                           cache_dir=cache_dir, name=name, config=m)

  def open_checkpoint(self, directory, config, *, templates=None, cache_dir=None):
    """config {"method": NAME, "clip": weights path (relative to the checkpoint directory), optional
    "templates" (default "imagenet"), "hidden_act", "name", and any option of the method}."""
    from ovs_jax.interchange.clip_weights import load_clip
    from ovs_jax.templates import get_templates
    clip = load_clip(Path(directory) / config["clip"], hidden_act=config.get("hidden_act"))
    templates = templates or get_templates(config.get("templates", self.templates))
    rest = {k: v for k, v in config.items()
            if k not in ("method", "clip", "templates", "hidden_act", "name")}
    self.settings(rest)  # unknown keys fail here, before any vocabulary
    return lambda vocabulary: self.clip_model(
        clip, vocabulary, templates=templates, cache_dir=cache_dir,
        name=config.get("name", Path(directory).name), config=rest)


def parse_options(items) -> dict:
  """["key=value", ...] (a CLI list) -> {key: value}, values read as JSON where they parse
  (numbers, lists, booleans), else kept as strings (paths)."""
  import json
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"method option {item!r}: expected key=value")
    try:
      out[key.strip()] = json.loads(value)
    except json.JSONDecodeError:
      out[key.strip()] = value
  return out


def clip_method(name: str, options: dict | None = None):
  """The registered training-free method `name` for a plain CLIP (`--method`), its `options` checked
  now, before any weights or data load. Returns `make(clip, vocabulary, *, templates, cache_dir,
  name) -> SegmentationModel`."""
  from ovs_jax.methods.registry import get_method, method_names
  options = dict(options or {})
  if name == "maskclip":
    from ovs_jax.methods.maskclip import maskclip_model
    unknown = set(options) - {"pd_thresh", "ks_thresh"}
    if unknown:
      raise ValueError(f"maskclip: unknown option(s) {sorted(unknown)}; expected pd_thresh, ks_thresh")
    return lambda clip, vocabulary, **kw: maskclip_model(clip, vocabulary, **kw, **options)
  method = get_method(name)
  if not isinstance(method, TrainingFreeMethod):
    free = [n for n in method_names() if n == "maskclip" or not get_method(n).trainable]
    raise ValueError(f"--method={name} is trained (give its --checkpoint); training-free methods: "
                     f"{', '.join(free)}")
  method.settings(options)
  return lambda clip, vocabulary, **kw: method.clip_model(clip, vocabulary, config=options, **kw)
