"""GKC (Han et al., ICCV 2023): Global Knowledge Calibration for fast open-vocabulary segmentation.

A Mask2Former whose backbone is a CLIP image tower (the student, fine-tuned at lr ×0.1) and whose
queries are classified by cosine with CLIP text embeddings of the raw class names. Generalisation
comes from three training-only terms, so inference runs no CLIP image encoder on crops or masks:
* *Region dropout*: each matched query's class target is ignored with p = 0.5.
* *Text diversification* (`synonym_loss`): the class CE again, each segment named by a synonym
  drawn from the shipped WordNet sets (`input_pipeline/synonyms.py`).
* *Text-guided knowledge distillation* (`text_guided_kd_loss`): per-set projections of the
  matched queries' embeddings regress a frozen CLIP's embeddings of the segments' crops
  (`ops/segment_crops.py`), pairwise structure weighted by the text similarity of the names.
Formulas, recipe and what the (incomplete) official release lacks: docs/gkc.md.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.heads.feature_pyramid import SimpleFeaturePyramid
from ovs_jax.heads.gkc_pyramid import GKCPyramid
from ovs_jax.heads.mask_former import MaskFormerHead
from ovs_jax.layers import linear, param
from ovs_jax.losses import gkc_distillation as kd
from ovs_jax.losses.caption_grounding import caption_grounding_loss
from ovs_jax.losses.gkc_synonyms import draw_synonyms, synonym_loss
from ovs_jax.losses.per_device import images_per_device
from ovs_jax.losses.set_criterion import (MaskLossConfig, mask_classification_loss, match_set,
                                          set_rngs)
from ovs_jax.methods.base import Method
from ovs_jax.methods import gkc_pixels
from ovs_jax.methods.common import frozen_copy, mask_targets
from ovs_jax.models.clip import CLIP, CLIPBase, l2_normalize
from ovs_jax.models.resnet_clip import ResNetCLIP
from ovs_jax.ops.resize import resize_nchw
from ovs_jax.text_classifier import max_over_synonyms

# GKC trains no text tower and never uses the student's CLIP head (ViT post-LN + projection,
# ResNet attention pool); the teacher is frozen. The trunk trains at lr x0.1 (BACKBONE).
FROZEN = (r"clip/text_model/", r"clip/text_projection/", r"clip/logit_scale",
          r"clip/vision_model/post_layernorm/", r"clip/visual_projection/",
          r"clip/visual/attnpool/", r"teacher/")
BACKBONE = r"clip/(vision_model|visual)/"
RAW_NAMES = ("{}",)  # GKC embeds the bare class names: no prompt templates
# Test vocabulary: the release's default MODEL.MASK_FORMER.TEST.VOCA_MULTINAME = False
# (mask2former/config.py:61) scores one name per class ("first"); "all" takes a class's logit as
# the max over its listed names. The choice is part of the model's name in results.
TEST_NAMES = {"first": "one name per class", "all": "max over names"}
CAPTIONED = ("demo", "coco_panoptic_133")  # training sets with captions (input_pipeline/caption_nouns.py)


class ClassPath(nnx.Module):
  """GKC's query classifier and distillation projections.

  decoder_norm output -> Linear(D, D) shared by all prediction sets -> per set [ReLU, Linear(D, E)]
  -> L2 -> cosine with [text; void] × exp(logit_scale) (not capped).
  """

  def __init__(self, dim, embed_dim, num_sets, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.shared = linear(dim, dim, ("embed", "mlp"), **kw)
    self.class_proj = nnx.List([linear(dim, embed_dim, ("mlp", "embed"), **kw)
                                for _ in range(num_sets)])
    # The official void embedding is drawn with std 512^-0.5 (whatever E); it is L2-normalised.
    self.void_embedding = param(nnx.initializers.normal(512 ** -0.5), (1, embed_dim),
                                (None, "embed"), rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

  def class_embedding(self, shared, i):
    """(B, Q, D) shared embeddings of set i -> (B, Q, E) unit class embeddings."""
    return l2_normalize(self.class_proj[i](nnx.relu(shared)).astype(jnp.float32))

  def logits(self, embedding, text, active=None):
    """embedding (B, Q, E) unit, text (K, E) unit rows -> (B, Q, K+1), void last; `active` (K,)
    bool masks columns out (−inf), e.g. the synonym loss's unused extra classes."""
    classes = jnp.concatenate([text.astype(jnp.float32),
                               l2_normalize(self.void_embedding[...].astype(jnp.float32))])
    logits = jnp.exp(self.logit_scale[...]) * jnp.einsum("bqe,ke->bqk", embedding, classes)
    if active is not None:
      keep = jnp.concatenate([active, jnp.ones((1,), bool)])
      logits = jnp.where(keep, logits, -jnp.inf)
    return logits


class KDProjections(nnx.Module):
  """The distillation student: per prediction set a Linear(D, E) (no ReLU) of the shared class
  embedding. Training only: inference never builds it."""

  def __init__(self, dim, embed_dim, num_sets, *, dtype, rngs):
    self.proj = nnx.List([linear(dim, embed_dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
                          for _ in range(num_sets)])

  def __call__(self, shared, i):
    """(..., D) shared embeddings of set i -> (..., E) unit distillation embeddings v."""
    return l2_normalize(self.proj[i](shared).astype(jnp.float32))


class FrozenImageEncoder(nnx.Module):
  """The teacher: a frozen copy of the initial CLIP image encoder, head included."""

  def __init__(self, clip: CLIPBase):
    if isinstance(clip, CLIP):
      self.tower = frozen_copy(clip.vision_model)
      self.projection = frozen_copy(clip.visual_projection)
    else:
      self.tower, self.projection = frozen_copy(clip.visual), nnx.data(None)

  def __call__(self, pixels):
    """(N, S, S, 3) CLIP-normalised -> (N, E) unit image embeddings, no gradient."""
    if self.projection is None:
      x = self.tower(pixels)
    else:
      tokens, _ = self.tower(pixels)
      x = self.projection(self.tower.post_layernorm(tokens[:, 0]))
    return jax.lax.stop_gradient(l2_normalize(x.astype(jnp.float32)))


class Segmenter(nnx.Module):
  """What inference runs: the student trunk (no CLIP head), pyramid, mask head and class path.

  Built over a GKC model's submodules (shared, not copied); `segmentation_model` splits it alone,
  so the inference parameters hold no text tower, no teacher and no CLIP head.
  """

  def __init__(self, model: "GKC", strip_head: bool = False):
    self.vit = isinstance(model.clip, CLIP)
    self.tower = model.clip.image_tower
    if strip_head:  # CLIP's head (ViT post-LN, ResNet attention pool): the mask head reads the trunk
      if self.vit:
        self.tower.post_layernorm = nnx.data(None)
      else:
        self.tower.attnpool = nnx.data(None)
    self.blocks, self.drop_path = model.blocks, model.drop_path
    self.pyramid, self.head, self.class_path = model.pyramid, model.head, model.class_path

  def levels(self, pixels, rng=None):
    """(B, H, W, 3) -> {'res2'..'res5'} mask-head inputs (gradients reach the trunk)."""
    if self.vit:
      return self.pyramid(self.tower.block_features(pixels, self.blocks, rng, self.drop_path))
    features = self.tower.features(pixels, rng)
    return {k: features[k] for k in ("res2", "res3", "res4", "res5")}

  def __call__(self, pixels, rng=None):
    """-> prediction sets [final, *aux] (as `prediction_sets`), each {'class_features' (B, Q, D),
    'pred_masks' (B, Q, H/4, W/4), 'shared' (B, Q, D), 'embedding' (B, Q, E) unit, 'index'}."""
    out = self.head(self.levels(pixels, rng))
    sets = [*out["aux"], {k: v for k, v in out.items() if k != "aux"}]
    for i, s in enumerate(sets):
      s["shared"] = self.class_path.shared(s["class_features"])
      s["embedding"] = self.class_path.class_embedding(s["shared"], i)
      s["index"] = i
    return [sets[-1], *sets[:-1]]


class GKC(nnx.Module):

  def __init__(self, clip: CLIPBase, model_config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    c = model_config
    if not isinstance(clip, (CLIP, ResNetCLIP)):
      raise ValueError(f"GKC runs on a CLIP ViT or ResNet (RN50/RN101) image tower, got "
                       f"{type(clip).__name__}; set config.clip.arch (docs/gkc.md)")
    self.clip = clip
    self.teacher = FrozenImageEncoder(clip)
    kw = dict(dtype=dtype, rngs=rngs)
    channels = clip.backbone_channels()
    self.pyramid = nnx.data(None)
    self.blocks = ()
    # The ViT student's stochastic depth in training (VIT.DROP_PATH_RATE 0.1, config.py:168).
    self.drop_path = float(c.get("drop_path", 0.1))
    if channels is None:  # ViT: blocks 4/6/8/12 -> strides 4/8/16/32 (GKC's ViT option)
      depth = clip.config.vision.num_hidden_layers
      self.blocks = tuple(int(b) for b in c.pyramid_blocks)
      if (len(self.blocks) != 4 or list(self.blocks) != sorted(set(self.blocks))
          or self.blocks[0] < 1 or self.blocks[-1] > depth):
        raise ValueError(f"config.model.pyramid_blocks={tuple(c.pyramid_blocks)}: expected 4 "
                         f"increasing block numbers in 1..{depth} (the ViT's depth)")
      width = clip.config.vision.hidden_size
      kind = c.get("pyramid", "release")
      if kind == "release":  # clip_models.py:526-545 (heads/gkc_pyramid.py)
        self.pyramid = GKCPyramid(width, **kw)
        channels = self.pyramid.channels()
      elif kind == "vitdet":  # ViTDet's (MAFT+'s ViT) pyramid, to hidden_dim channels
        self.pyramid = SimpleFeaturePyramid(width, c.hidden_dim, **kw)
        channels = SimpleFeaturePyramid.channels(c.hidden_dim)
      else:
        raise ValueError(f"config.model.pyramid={kind!r}: expected 'release' (GKC's ViT pyramid) "
                         "or 'vitdet'")
    self.head = MaskFormerHead(channels, num_queries=c.num_queries, hidden_dim=c.hidden_dim,
                               mask_dim=c.hidden_dim, enc_layers=c.enc_layers,
                               enc_ffn_dim=c.enc_ffn_dim, dec_layers=c.dec_layers,
                               dec_ffn_dim=c.dec_ffn_dim, num_heads=c.num_heads,
                               num_points=c.deform_points, remat=c.get("remat", False), **kw)
    self.class_path = ClassPath(c.hidden_dim, clip.config.projection_dim, c.dec_layers + 1, **kw)
    self.kd_proj = KDProjections(c.hidden_dim, clip.config.projection_dim, c.dec_layers + 1, **kw)
    self.kd_scale = nnx.Param(jnp.ones((), jnp.float32))  # s of the text-guided KD, init 1
    exact_norm_variance(self.head)

  def __call__(self, pixels, rng=None):
    return Segmenter(self)(pixels, rng)


def exact_norm_variance(module: nnx.Module) -> None:
  """PyTorch's two-pass variance in every GroupNorm/LayerNorm under `module`: with the one-pass
  E[x²]−E[x]², the release's head on the same weights differs by 2e-4 (relative) after the pixel
  decoder; two-pass, by 1e-5 (tests/test_gkc_official.py)."""
  for _, m in module.iter_modules():
    if isinstance(m, (nnx.GroupNorm, nnx.LayerNorm)):
      m.use_fast_variance = False


# ---- losses ----

def region_dropout(rng, match, valid, num_queries, rate):
  """(B, Q) bool: matched queries whose class target is ignored, each with probability `rate`
  (GKC's region dropout; unmatched queries keep their void target)."""
  b = match.shape[0]
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], match.shape)
  matched = jnp.zeros((b, num_queries), bool).at[
      rows, jnp.where(valid & (match >= 0), match, num_queries)].set(True, mode="drop")
  return matched & (jax.random.uniform(rng, (b, num_queries)) < rate)


def loss_fn(model: GKC, batch, rng, text, synonym_index, name_of_row, pad_text, c):
  """Total loss and its terms (weights: config.loss; docs/gkc.md).

  text (S, E): unit embeddings of every training synonym (raw names); synonym_index (C, K) with
  column 0 the cleaned class name; name_of_row (S,) the first row of each row's string; pad_text
  (E,) the text encoder's embedding of an all-zero token row (the release's classifier padding)."""
  rng, model_rng, set_rng, drop_rng, syn_rng, crop_rng, caption_rng = jax.random.split(rng, 7)
  sets = model(batch["image"], model_rng)
  targets = mask_targets(batch)
  mask_cfg = MaskLossConfig.from_config(c)
  q = sets[0]["pred_masks"].shape[1]
  group = images_per_device(batch["image"].shape[0], c.get("images_per_device", 0))
  class_text = text[synonym_index[:, 0]]
  cp = model.class_path
  for s in sets:
    s["pred_logits"] = cp.logits(s["embedding"], class_text)
  matches = [match_set(r, s["pred_logits"], s["pred_masks"], targets, mask_cfg)
             for r, s in zip(set_rngs(set_rng, len(sets)), sets)]
  # The class CE and the synonym CE draw their region dropout apart (release loss_labels 884-893,
  # loss_labels_process_each 849-858: one np.random.rand each).
  class_drop_rng, syn_drop_rng = jax.random.split(drop_rng)
  dropped = [region_dropout(r, m, targets["valid"], q, c.region_dropout)
             for r, m in zip(jax.random.split(class_drop_rng, len(sets)), matches)]
  total, terms = mask_classification_loss(set_rng, sets, targets, config=mask_cfg, matches=matches,
                                          class_ignore=dropped)
  rows = None
  if c.synonym_weight:
    rows = draw_synonyms(syn_rng, targets["labels"], synonym_index, batch.get("mask_synonyms"))
    syn_dropped = [region_dropout(r, m, targets["valid"], q, c.region_dropout)
                   for r, m in zip(jax.random.split(syn_drop_rng, len(sets)), matches)]
    terms["loss_synonym"] = synonym_loss(cp, sets, matches, syn_dropped, targets["labels"],
                                         targets["valid"], rows, text, name_of_row, synonym_index,
                                         pad_text, group, c.void_weight)
    total = total + c.synonym_weight * terms["loss_synonym"]
  if c.kd_weight:
    if "teacher_image" not in batch:
      raise KeyError("GKC's distillation reads batch['teacher_image'] and ['teacher_segments'], "
                     "the un-augmented view GKC's loader adds (input_pipeline/teacher_view.py)")
    image, slot, ok = kd.choose_crops(crop_rng, targets["valid"], group,
                                      c.get("kd_max_crops", kd.MAX_CROPS))
    values = batch["mask_ids"] if "mask_ids" in batch else batch["mask_classes"]
    size = c.kd_crop_size or model.clip.config.vision.image_size
    crops, present = kd.teacher_crops(batch["teacher_image"], batch["teacher_segments"], image,
                                      values[image, slot], size, group)
    teacher = model.teacher(crops.reshape(-1, *crops.shape[2:])).reshape(*image.shape, -1)
    # The text of a crop is its segment's drawn synonym (release kd_text_ebmd = syn_class_ebmd).
    names = text[rows[image, slot]] if rows is not None else class_text[
        targets["labels"][image, slot]]
    terms["loss_kd"] = kd.text_guided_kd_loss(model.kd_proj, sets, matches, image, slot,
                                              ok & present, teacher, names, model.kd_scale[...])
    total = total + c.kd_weight * terms["loss_kd"]
  if c.get("caption_weight", 0) and "caption_nouns" in batch:
    tokens = batch["caption_nouns"]  # (B, nouns, ctx) token ids, zero rows = none
    word_valid = tokens.any(-1)
    words = model.clip.get_text_features(tokens.reshape(-1, tokens.shape[-1])).astype(jnp.float32)
    words = jnp.where(word_valid[..., None], jax.lax.stop_gradient(words).reshape(
        *tokens.shape[:2], -1), 0.0)
    terms["loss_caption"] = caption_grounding_loss(
        caption_rng, sets, matches, targets["valid"], words, word_valid,
        jnp.exp(cp.logit_scale[...]), group)
    total = total + c.caption_weight * terms["loss_caption"]
  return total, terms


# ---- inference ----

def class_logits(class_path, embedding, text, synonym_index):
  """(B, Q, E) unit embeddings vs a vocabulary's synonym rows -> (B, Q, C+1): each class's logit
  is the max over its synonyms, void last."""
  syn = class_path.logits(embedding, text)
  return jnp.concatenate([max_over_synonyms(syn[..., :-1], synonym_index), syn[..., -1:]], -1)


def semantic_scores(pred_logits, pred_masks, image_hw):
  """Mask2Former's semantic inference: Σ_q softmax_{C+1}(logits)_q[c]·σ(m_q) -> (B, H, W, C)."""
  probs = jax.nn.softmax(pred_logits.astype(jnp.float32), -1)[..., :-1]
  masks = jax.nn.sigmoid(resize_nchw(pred_masks.astype(jnp.float32), *image_hw))
  return jnp.einsum("bqc,bqhw->bhwc", probs, masks)


class GKCMethod(Method):
  name = "gkc"

  def build_model(self, config, architecture=None) -> GKC:
    from ovs_jax.methods.common import clip_from_config, compute_dtype
    clip = clip_from_config(config, architecture)
    return GKC(clip, config.model, dtype=compute_dtype(config.model.dtype),
               rngs=nnx.Rngs(config.seed + 1))

  def architecture(self, model):
    from ovs_jax.models import clip_family
    return {"clip": clip_family.to_record(model.clip.config)}

  def train_source(self, config):
    """The default source; its records carry their segments' filtered synonyms with
    `loss.synonym_filter` (`input_pipeline/segment_synonyms.py`) and, with caption grounding on,
    their captions (`input_pipeline/caption_nouns.py`; nouns are tagged per example) where the dataset has
    captions."""
    from absl import logging
    check_synonym_filter(config.loss)
    source = super().train_source(config)
    if config.loss.synonym_weight and config.loss.get("synonym_filter"):
      from input_pipeline.datasets import dataset_meta
      from input_pipeline.segment_synonyms import WithSegmentSynonyms
      from input_pipeline.synonyms import load_synonyms
      vocab_name = dataset_meta(config.data.train, "train").vocabulary
      sets = load_synonyms(vocab_name, config.loss.get("synonyms") or None)
      source = WithSegmentSynonyms(source, config.loss.synonym_filter, sets)
      logging.info("synonym filter %s covers %d of %d training images (the rest draw among all "
                   "synonyms)", config.loss.synonym_filter, source.covered, len(source))
    if not config.loss.get("caption_weight", 0):
      return source
    from input_pipeline import caption_nouns
    captions = caption_nouns.dataset_captions(config.data.train, "train", source,
                                              root=config.data.root or None)
    if captions is None:
      logging.warning("%s has no captions: caption grounding is off", config.data.train)
      return source
    return caption_nouns.WithCaptions(source, captions[:len(source)])

  def train_mapper(self, config, source):
    """The default mapper, first taking the un-augmented view the distillation teacher crops from
    (`input_pipeline/teacher_view.py`) and one caption's nouns when the source has captions."""
    from input_pipeline import caption_nouns
    from input_pipeline.teacher_view import TeacherView
    mapper = super().train_mapper(config, source)
    first = []
    if config.loss.kd_weight:
      first.append(TeacherView(config.loss.kd_canvas, source.ignore_label))
    if isinstance(source, caption_nouns.WithCaptions):
      first.append(caption_nouns.DrawCaptionNouns())
    return dataclasses.replace(mapper, ops=[*first, *mapper.ops])

  def batch_spec(self, config, batch_size, height, width):
    spec = super().batch_spec(config, batch_size, height, width)
    c = config.loss
    if c.kd_weight:
      spec["teacher_image"] = ((batch_size, c.kd_canvas, c.kd_canvas, 3), "uint8")
      spec["teacher_segments"] = ((batch_size, c.kd_canvas, c.kd_canvas), "int32")
    if c.synonym_weight and c.get("synonym_filter"):
      spec["mask_synonyms"] = ((batch_size, config.data.num_masks), "int32")
    if c.get("caption_weight", 0) and config.data.train in CAPTIONED:
      from input_pipeline.caption_nouns import MAX_NOUNS, NOUN_CONTEXT
      spec["caption_nouns"] = ((batch_size, MAX_NOUNS, NOUN_CONTEXT), "int32")
    return spec

  def train_context(self, model, config, vocabulary, templates, cache_dir):
    """(synonym embeddings (S, E), synonym index (C, K), name_of_row (S,), the zero-token
    embedding (E,)), raw names through the frozen text tower."""
    del templates  # GKC embeds raw names
    from ovs_jax.text_classifier import build_text_classifier
    sets = training_synonyms(config, vocabulary)
    clf = build_text_classifier(model.clip, sets, RAW_NAMES, cache_dir=cache_dir)
    return (jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index),
            jnp.asarray(name_of_row(sets)), pad_text_embedding(model.clip))

  def context_spec(self, model, num_classes, synonyms):
    dim = model.clip.config.projection_dim
    return (((num_classes * synonyms, dim), "float32"), ((num_classes, synonyms), "int32"),
            ((num_classes * synonyms,), "int32"), ((dim,), "float32"))

  def loss(self, model, batch, rng, context, config):
    stats = config.model.get("pixel_stats", "clip")
    if stats != "clip":  # the loader's pixels are CLIP-normalised (gkc_pixels.py)
      image = batch["image"]
      valid = (gkc_pixels.valid_from_hw(batch["image_hw"], image.shape) if "image_hw" in batch
               else jnp.ones(image.shape[:3], bool))
      batch = dict(batch, image=gkc_pixels.renormalize(image, valid, stats, gkc_pixels.TRAIN_PAD))
    return loss_fn(model, batch, rng, *context, config.loss)

  def complete_state_dict(self, state_dict):
    """Exports leave the teacher out: it restarts from the imported image encoder."""
    if any(k.startswith("teacher.") for k in state_dict):
      return state_dict
    sd = dict(state_dict)
    for src, dst in (("clip.vision_model.", "teacher.tower."), ("clip.visual.", "teacher.tower."),
                     ("clip.visual_projection.", "teacher.projection.")):
      sd.update({dst + k[len(src):]: v for k, v in state_dict.items() if k.startswith(src)})
    return sd

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    """Inference over `vocabulary` (raw names, max over each class's synonyms) with the student
    only: `Segmenter`'s parameters, no text tower, teacher or CLIP head."""
    del templates, train_vocabulary
    from ovs_jax.inference.segmentation_model import SegmentationModel
    from ovs_jax.text_classifier import build_text_classifier
    model = nnx.merge(graphdef, *states)
    rule = config.model.get("test_names", "all")  # checkpoints from before the key: "all"
    if rule not in TEST_NAMES:
      raise ValueError(f"config.model.test_names={rule!r}: expected one of {sorted(TEST_NAMES)}")
    if rule == "first":
      vocabulary = [list(names[:1]) for names in vocabulary]
    clf = build_text_classifier(model.clip, vocabulary, RAW_NAMES, cache_dir=cache_dir)
    seg_graph, seg_state = nnx.split(Segmenter(model, strip_head=True))

    stats = gkc_pixels.check(config.model.get("pixel_stats", "clip"))

    def apply(params, pixels, valid):
      state, text, index = params
      segmenter = nnx.merge(seg_graph, state)
      if stats != "clip":
        pixels = gkc_pixels.renormalize(pixels, valid, stats)
      final = segmenter(pixels)[0]
      logits = class_logits(segmenter.class_path, final["embedding"], text, index)
      return semantic_scores(logits, final["pred_masks"], pixels.shape[1:3])
    return SegmentationModel(f"{name or self.name} [{TEST_NAMES[rule]}]", apply,
                             (seg_state, jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index)),
                             [v[0] for v in vocabulary], input_multiple=32)


def check_synonym_filter(c):
  """The synonym CE draws among the synonyms CLIP kept for each segment (the release's
  `syn_class_train2017.json`, made by its syn_CLIP_sim.py: ViT-B/32, "a photo of {syn}" on the
  segment's box, KD mapper 259 keeps p > 0.1). Unfiltered WordNet lemmas at weight 10 teach
  e.g. person = "soul", so training without the file must be asked for."""
  if c.synonym_weight and not c.get("synonym_filter") and not c.get("unfiltered_synonyms", False):
    raise ValueError(
        "config.loss.synonym_filter is empty: GKC's synonym loss needs the per-segment CLIP "
        "filter file. Make it once (CLIP ViT-B/32 weights, COCO panoptic under DATA/coco):\n"
        "  python -m input_pipeline.synonyms filter --clip=PATH/TO/ViT-B-32 --data=DATA "
        "--out=synonym_filter.json\n"
        "then train with --config.loss.synonym_filter=synonym_filter.json, or say "
        "--config.loss.unfiltered_synonyms=True to train on unfiltered synonym sets (docs/gkc.md)")


def name_of_row(sets) -> np.ndarray:
  """(S,) for each row of the text table of `sets` the first row holding the same string: the
  release compares synonym names as strings (KD mapper 260, 268)."""
  from ovs_jax.text_classifier import synonym_layout
  flat, _ = synonym_layout(sets)
  first: dict[str, int] = {}
  return np.asarray([first.setdefault(n, i) for i, n in enumerate(flat)], np.int32)


def pad_text_embedding(clip) -> jnp.ndarray:
  """(E,) unit text embedding of an all-zero token row: what the release's padding columns hold
  (maskformer_model_voca_dense_kd_syn.py 442–447 pads the token rows with zeros and encodes them;
  CLIP pools the argmax token, here the first)."""
  ids = jnp.zeros((1, clip.config.text.max_position_embeddings), jnp.int32)
  return l2_normalize(clip.get_text_features(ids).astype(jnp.float32))[0]


def training_synonyms(config, vocabulary):
  """The synonym sets of the training classes (`vocabulary`, seen classes only under the
  zero-shot protocol): the shipped file of the training dataset's vocabulary, or
  `config.loss.synonyms` (a path); without the synonym loss, each class's cleaned first name."""
  from input_pipeline.datasets import dataset_meta
  from input_pipeline.synonyms import clean_name, load_synonyms
  from input_pipeline.zero_shot import unseen_for
  if not config.loss.synonym_weight:
    return [[clean_name(names[0])] for names in vocabulary]
  vocab_name = dataset_meta(config.data.train, "train").vocabulary
  synonyms = load_synonyms(vocab_name, config.loss.get("synonyms") or None)
  unseen = set(unseen_for(config.data.train, config.data.get("unseen", "")))
  sets = [list(s) for i, s in enumerate(synonyms.sets) if i not in unseen]
  if len(sets) != len(vocabulary):
    raise ValueError(f"synonym sets of {vocab_name}: {len(sets)} training classes, the training "
                     f"vocabulary has {len(vocabulary)}")
  return sets


METHOD = GKCMethod()
