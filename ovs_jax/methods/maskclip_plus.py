"""MaskCLIP+ (Zhou et al., ECCV 2022, "Extract Free Dense Labels from CLIP", §3.3): the transductive
zero-shot knowledge-transfer stage. MVP-SEG+ is the same stage with a trained MVP-SEG as the teacher
(`methods/mvp_seg_plus.py`). Every value follows MaskCLIP's code (github.com/chongzhou96/MaskCLIP,
`mmseg/models/decode_heads/maskclip_plus_head.py`, `configs/maskclip_plus/zero_shot/*.py`):

* Student: DeepLab (v2 ASPP, or v3+ for PASCAL Context) on a dilated ResNet-101-V1c-D8 from ImageNet
  (`models/dilated_resnet.py`, `heads/deeplab.py`). Its decoder outputs CLIP-width features that are
  classified by the frozen CLIP text embeddings of every class, seen and unseen, without feature
  normalisation (`cls_seg`, `norm_feat=False`, head.py:123-137).
* Training images keep their seen ground truth; the pixels of the unseen classes (whose names are
  known: the transductive setting) are *unlabelled* (`LoadAnnotations(suppress_labels=...)` -> -1;
  here `UNLABELLED`). Each step they get pseudo-labels (`assign_label`, head.py:166-208): the argmax
  over the unseen classes only of a score map upsampled bilinearly to the label size;
  - steps [start_teacher, end_teacher]: the frozen teacher's scores (MaskCLIP: cosine of its
    dense features with the text embeddings, optional prompt denoising / key smoothing; MVP-SEG:
    its m = m_f·g), `start_clip_guided` in the configs;
  - steps >= start_self_train: the student's own (detached) scores (self-training);
  - outside both windows the unlabelled pixels are ignored (head.py:354-355).
  The configs switch over without overlap: VOC (1, 1999) / 2000, COCO-Stuff (1, 7999) / 8000,
  PASCAL Context (1, 3999) / 4000 (the head's `trust_clip_on` merge, for overlapping windows, is
  undefined in the code; overlapping windows are refused here).
* Loss: pixel cross-entropy of the upsampled logits, ignore 255, averaged over ALL pixels of the
  batch as mmseg's `weight_reduce_loss(reduction='mean')` does (ignored pixels count as 0).

Steps count from 1 as MaskCLIP's `_iter_counter`: the loader stamps each batch with its index.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.heads.deeplab import HEADS
from ovs_jax.methods.base import Method
from ovs_jax.models.clip import l2_normalize
from ovs_jax.models.dilated_resnet import PRESETS, DilatedResNet, DilatedResNetConfig
from ovs_jax.ops.resize import resize
from ovs_jax.text_classifier import max_over_synonyms

UNLABELLED = 254  # a training label value: a pixel of an unseen class, to be pseudo-labelled
IGNORE = 255
FROZEN = (r"teacher/",)  # the teacher (and its CLIP text tower) never trains
# The student's ImageNet normalisation (mmseg img_norm_cfg, configs line 21-22), from our CLIP-normalised input.
IMAGENET_MEAN, IMAGENET_STD = np.array([123.675, 116.28, 103.53]) / 255, np.array([58.395, 57.12, 57.375]) / 255


class UnseenUnlabelled:
  """A training source whose unseen-class pixels become `UNLABELLED` (MaskCLIP's suppress_labels);
  every class keeps its dataset id, so the training vocabulary is the whole one."""

  def __init__(self, source, unseen: list[int]):
    meta = source.meta
    if meta.num_classes >= UNLABELLED or meta.ignore_label != IGNORE:
      raise ValueError(f"{meta.name}: the transductive setting marks unseen pixels {UNLABELLED}; it needs "
                       f"fewer than {UNLABELLED} classes and ignore label {IGNORE}")
    self.lut = np.arange(max(IGNORE, meta.num_classes) + 1).astype(meta.label_dtype)
    self.lut[list(unseen)] = UNLABELLED
    self.source, self.meta = source, meta

  num_classes = property(lambda self: self.meta.num_classes)
  ignore_label = property(lambda self: self.meta.ignore_label)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    return None if record is None else dict(record, label=self.lut[record["label"]])

  def __getattr__(self, name):
    return getattr(self.source, name)


class BatchIndex:
  """Stamps each batch with its 1-based index (`step`, (B,) int32); checkpointed with the loader."""

  def __init__(self, iterator):
    self.it, self.n = iterator, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    self.n += 1
    return dict(batch, step=np.full((len(batch["image"]),), self.n, np.int32))

  def get_state(self):
    return {"loader": self.it.get_state(), "batches": self.n}

  def set_state(self, state):
    self.it.set_state(state["loader"])
    self.n = state["batches"]


class MaskCLIPPlus(nnx.Module):
  """Student (backbone + DeepLab decoder, classified by CLIP text embeddings) and frozen teacher."""

  def __init__(self, backbone: DilatedResNetConfig, head: str, head_kwargs: dict, teacher, width: int,
               *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.backbone = DilatedResNet(backbone, dtype=dtype, rngs=rngs)
    kw = dict(head_kwargs)
    if head == "deeplabv3plus":
      kw.setdefault("c1_in_channels", backbone.channels[0])
    self.decode_module = HEADS[head](backbone.channels[-1], width, dtype=dtype, rngs=rngs, **kw)
    self.teacher = teacher  # a CLIP (MaskCLIP+) or an MVPSeg (MVP-SEG+)

  @property
  def clip(self):
    """The CLIP whose text tower gives the classifier."""
    return getattr(self.teacher, "clip", self.teacher)

  def features(self, pixels):
    """pixels (B, H, W, 3) CLIP-normalised -> decoder features (B, h, w, P)."""
    from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD
    rgb = pixels * jnp.asarray(CLIP_STD, pixels.dtype) + jnp.asarray(CLIP_MEAN, pixels.dtype)
    x = (rgb - jnp.asarray(IMAGENET_MEAN, pixels.dtype)) / jnp.asarray(IMAGENET_STD, pixels.dtype)
    return self.decode_module(self.backbone(x))

  def class_logits(self, pixels, text, synonym_index):
    """-> (B, h, w, C) = features · text embeddings (no normalisation), max over synonyms."""
    feat = self.features(pixels).astype(jnp.float32)
    return max_over_synonyms(jnp.einsum("bhwp,sp->bhws", feat, text), synonym_index)


def argmax_over(scores, classes, out_hw):
  """scores (B, h, w, U) of `classes` (U,) -> (B, *out_hw) class ids: bilinear upsampling, argmax."""
  return classes[jnp.argmax(resize(scores.astype(jnp.float32), *out_hw), axis=-1)]


def maskclip_teacher_scores(clip, pixels, text, synonym_index, unseen, teacher_config):
  """MaskCLIP as the teacher: cosine of its dense features with the unseen classes' embeddings
  (head.py:319-341: `assign_label(..., norm=True, clip=True)`), refined as configured."""
  from ovs_jax.methods.maskclip import dense_features_and_keys, refine_output
  pd, ks = teacher_config.get("pd_thresh", 0.0), teacher_config.get("ks_thresh", 0.0)
  if ks > 0:
    dense, keys = dense_features_and_keys(clip, pixels)
  else:
    dense, keys = clip.dense_features(pixels, maskclip=True), None
  dense = l2_normalize(dense.astype(jnp.float32))
  cos = max_over_synonyms(jnp.einsum("bhwp,sp->bhws", dense, text), synonym_index)[..., unseen]
  return refine_output(cos, keys, pd, ks)


def pseudo_labels(label, step, unseen, teacher_fn, student_scores, schedule):
  """MaskCLIP+'s rule: seen ground truth kept; UNLABELLED pixels -> the teacher's argmax over the
  unseen classes while step is in [start_teacher, end_teacher], the student's own argmax from
  start_self_train on, else ignored."""
  hw = label.shape[1:]
  t0, t1 = schedule.start_teacher, schedule.end_teacher
  s0, s1 = schedule.start_self_train, schedule.end_self_train
  in_teacher = (t0 >= 0) & (step >= t0) & ((step <= t1) | (t1 < 0))
  in_self = (s0 >= 0) & (step >= s0) & ((step <= s1) | (s1 < 0))
  ignore = lambda: jnp.full(label.shape, IGNORE, jnp.int32)
  self_fn = lambda: argmax_over(jax.lax.stop_gradient(student_scores), unseen, hw)
  fill = jax.lax.cond(in_teacher, lambda: argmax_over(teacher_fn(), unseen, hw),
                      lambda: jax.lax.cond(in_self, self_fn, ignore))
  return jnp.where(label == UNLABELLED, fill, label)


def cross_entropy_all_pixels(logits, target, num_classes):
  """mmseg CrossEntropyLoss (ignore 255, mean over every pixel: ignored ones add 0)."""
  valid = (target >= 0) & (target < num_classes)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  picked = jnp.take_along_axis(logp, jnp.where(valid, target, 0)[..., None], -1)[..., 0]
  return -jnp.where(valid, picked, 0.0).sum() / target.size


class MaskCLIPPlusMethod(Method):
  name = "maskclip_plus"

  # --- the teacher (MVP-SEG+ overrides these three) ---
  def build_teacher(self, config, record=None):
    from ovs_jax.methods.common import clip_from_config
    return clip_from_config(config, None if record is None else {"clip": record["clip"]})

  def teacher_record(self, teacher) -> dict:
    from ovs_jax.models import clip_family
    return {"clip": clip_family.to_record(teacher.config)}

  def teacher_scores(self, model, pixels, context, config, out_hw):
    text, index, unseen = context[:3]
    return maskclip_teacher_scores(model.teacher, pixels, text, index, unseen, config.teacher)

  def teacher_context(self, model, vocabulary):
    return ()

  # --- the contract ---
  def build_model(self, config, architecture=None):
    m = config.model
    if architecture is None:
      backbone = PRESETS[m.backbone]
      teacher = self.build_teacher(config)
    else:
      backbone = DilatedResNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in architecture["backbone"].items()})
      teacher = self.build_teacher(config, architecture["teacher"])
    width = teacher_width(teacher)
    model = MaskCLIPPlus(backbone, m.head, dict(m.head_kwargs), teacher, width,
                         rngs=nnx.Rngs(config.seed + 1))
    if architecture is None and m.get("backbone_weights"):
      from ovs_jax.interchange.dilated_resnet import load_backbone_weights
      load_backbone_weights(model.backbone, m.backbone_weights)
    return model

  def architecture(self, model):
    return {"backbone": dataclasses.asdict(model.backbone.config), "teacher": self.teacher_record(model.teacher)}

  def train_source(self, config):
    from input_pipeline import zero_shot
    from input_pipeline.datasets import get_dataset
    from ovs_jax.inference.engine import FirstRecords
    d = config.data
    if not d.get("transductive"):
      raise ValueError(f"method {self.name}: config.data.transductive must be True (the unseen names "
                       "are known at training; their pixels get pseudo-labels)")
    train = get_dataset(d.train, "train", root=d.root or None, skip_bad=d.skip_bad)
    if d.get("train_max_images"):
      train = FirstRecords(train, d.train_max_images)
    return UnseenUnlabelled(train, zero_shot.unseen_for(d.train, d.unseen))

  def training_vocabulary(self, config):
    """Every class of the training dataset, seen and unseen (the transductive setting)."""
    from input_pipeline import vocab as vocab_lib
    from input_pipeline.datasets import dataset_meta
    from ovs_jax.methods.mvp_seg import class_names_only
    return class_names_only(vocab_lib.load_vocabulary(dataset_meta(config.data.train, "train").vocabulary), config)

  def train_data(self, config, source, mesh):
    from input_pipeline import loader
    from input_pipeline.global_batch import DevicePrefetcher
    from ovs_jax import sharding
    d = config.data
    it = iter(loader.make_train_loader(source, config.train.batch_size, self.train_mapper(config, source),
                                       seed=config.seed, worker_count=d.worker_count,
                                       bucket=d.get("train_bucket", 32)))
    return DevicePrefetcher(BatchIndex(it), sharding.batch_sharding(mesh))

  def train_mapper(self, config, source):
    """mmseg's pipeline of MaskCLIP+'s configs (`input_pipeline/mmseg_pipeline.py`)."""
    from input_pipeline.mmseg_pipeline import mmseg_train
    d = config.data
    return mmseg_train(source, tuple(d.img_scale), tuple(d.ratio_range), (d.crop_size, d.crop_size),
                       d.cat_max_ratio, d.photometric, num_masks=d.num_masks, with_masks=False)

  def batch_spec(self, config, batch_size, height, width):
    return dict(super().batch_spec(config, batch_size, height, width), step=((batch_size,), "int32"))

  def train_context(self, model, config, vocabulary, templates, cache_dir):
    from input_pipeline.zero_shot import unseen_for
    from ovs_jax.text_classifier import build_text_classifier
    clf = build_text_classifier(model.clip, vocabulary, templates, cache_dir=cache_dir)
    unseen = jnp.asarray(unseen_for(config.data.train, config.data.unseen), jnp.int32)
    return (jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index), unseen,
            *self.teacher_context(model, vocabulary))

  def context_spec(self, model, num_classes, synonyms):
    p = teacher_width(model.teacher)
    return (((num_classes * synonyms, p), "float32"), ((num_classes, synonyms), "int32"),
            ((min(2, num_classes),), "int32"), *self.teacher_context_spec(model, num_classes, synonyms))

  def teacher_context_spec(self, model, num_classes, synonyms):
    return ()

  def loss(self, model, batch, rng, context, config):
    del rng
    text, index, unseen = context[:3]
    label, pixels = batch["label"], batch["image"]
    check_schedule(config.schedule)
    logits = model.class_logits(pixels, text, index)
    target = pseudo_labels(label, batch["step"].max(), unseen,
                           lambda: self.teacher_scores(model, pixels, context, config, label.shape[1:]),
                           logits[..., unseen], config.schedule)
    loss = cross_entropy_all_pixels(resize(logits, *label.shape[1:]), target, index.shape[0])
    return loss, {"loss_seg": loss,
                  "pseudo_fraction": ((label == UNLABELLED) & (target < index.shape[0])).mean()}

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    from ovs_jax.inference.segmentation_model import SegmentationModel
    from ovs_jax.templates import get_templates
    from ovs_jax.methods.mvp_seg import class_names_only
    from ovs_jax.text_classifier import build_text_classifier
    model = nnx.merge(graphdef, *states)
    vocabulary = class_names_only(vocabulary, config)
    templates = templates or get_templates(config.clip.templates)
    clf = build_text_classifier(model.clip, vocabulary, templates, cache_dir=cache_dir)

    def apply(params, pixels, valid):
      del valid
      states, text, index = params
      return resize(nnx.merge(graphdef, *states).class_logits(pixels, text, index), *pixels.shape[1:3])
    return SegmentationModel(name or self.name, apply,
                             (tuple(states), jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index)),
                             [v[0] for v in vocabulary], input_multiple=8)


def teacher_width(teacher) -> int:
  clip = getattr(teacher, "clip", teacher)
  return clip.text_projection.kernel.shape[-1]


def check_schedule(s):
  """The teacher and self-training windows must not overlap (MaskCLIP's merge rule is undefined)."""
  t0, t1, s0 = s.start_teacher, s.end_teacher, s.start_self_train
  if t0 >= 0 and s0 >= 0 and (t1 < 0 or s0 <= t1):
    raise ValueError(f"config.schedule: self-training from step {s0} overlaps the teacher's steps "
                     f"[{t0}, {t1}]; MaskCLIP+'s configs switch over (e.g. teacher (1, 1999), self-training 2000)")


METHOD = MaskCLIPPlusMethod()
