"""MAFT+ (Jiao et al. 2024): collaborative vision-text optimisation on a CLIP + Mask2Former model.

Follows the official MAFT-Plus code (`maft/maft_plus.py`, FC-CLIP's decoder
`maft/modeling/transformer_decoder/fcclip_transformer_decoder.py`, `maft/modeling/maft/*.py`):
* The CLIP image tower's *trunk* features (before the CLIP head: post-LN, projection) feed the mask
  head through a simple feature pyramid **detached**: the mask-classification losses never reach CLIP.
  CLIP is fine-tuned (lr ×0.1) only by the mask-aware loss and Representation Compensation; text
  tower, logit scale and CLIP head stay frozen.
* In-vocabulary classifier (FC-CLIP): MLP(decoder output + Linear(LN(mask-pool(mask features))))
  -> cosine with [text classifier; void], every prediction set.
* Out-of-vocabulary classifier: each final mask (binarised) average-pools the trunk features, *then*
  the CLIP head embeds the pooled vector; cosine with the *Content-Dependent Transfer* classifier
  (text rows attend to the dense CLIP map).
* *Representation Compensation*: POD SmoothL1 between the trunk features of the student and of a
  frozen copy of the initial tower; plus the mask-aware loss on out-of-vocabulary scores.
The official code runs the student twice in training (once detached for the head, once for the
CLIP-side losses); one forward with a stop-gradient on the head's copy gives the same values and
gradients.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.heads.cdt import ContentDependentTransfer
from ovs_jax.heads.cosine_classifier import CosineClassifier
from ovs_jax.heads.feature_pyramid import SimpleFeaturePyramid
from ovs_jax.layers import layer_norm, linear
from ovs_jax.heads.mask_former import MaskFormerHead, prediction_sets
from ovs_jax.losses.mask_aware import mask_aware_loss
from ovs_jax.losses.representation_compensation import representation_compensation_loss
from ovs_jax.losses.set_criterion import MaskLossConfig, mask_classification_loss
from ovs_jax.methods.base import Method
from ovs_jax.methods.common import frozen_copy, mask_targets
from ovs_jax.models.clip import CLIPBase, l2_normalize
from ovs_jax.models.resnet_clip import ResNetCLIP
from ovs_jax.ops.mask_pooling import mask_pool
from ovs_jax.ops.resize import resize_nchw
from ovs_jax.text_classifier import max_over_synonyms

# Parameters that never train (regexes over 'a/b/c' paths), as the official `_freeze`: text tower,
# logit scale, the CLIP head (ViT: post-LN + projection; ConvNeXt: trunk head norm + OpenCLIP head)
# and the teacher. The image trunk trains at lr x0.1 (BACKBONE).
FROZEN = (r"clip/text_model/", r"clip/text_projection/", r"clip/logit_scale",
          r"clip/vision_model/post_layernorm/", r"clip/visual_projection/",
          r"clip/visual/trunk/head/", r"clip/visual/head/", r"teacher/")
BACKBONE = r"clip/(vision_model|visual)/"
# The dense map CDT attends to: "official" = the official code's NCHW-as-rows reading (what the
# released checkpoints were trained with, `nchw_rows`); "per_pixel" = the paper's per-pixel CLIP map.
CDT_DENSE = ("official", "per_pixel")


class MAFTPlus(nnx.Module):

  def __init__(self, clip: CLIPBase, model_config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    c = model_config
    if isinstance(clip, ResNetCLIP):
      raise ValueError("MAFT+ on a CLIP ResNet is not supported: the official code builds CDT's map "
                       "with the ConvNeXt head (`visual_prediction_forward_convnext`) for every "
                       "backbone; use a ConvNeXt or ViT CLIP (docs/backbones.md)")
    dim = clip.config.projection_dim
    self.clip = clip
    self.teacher = frozen_copy(clip.image_tower)  # the initial image tower (RC's teacher)
    kw = dict(dtype=dtype, rngs=rngs)
    # A ViT's single stride-16 map goes through a simple feature pyramid; a convolutional tower
    # (ConvNeXt) gives res2..res5 itself, as the official backbone's `extract_features`.
    channels = clip.backbone_channels()
    self.pyramid = nnx.data(None)
    if channels is None:
      self.pyramid = SimpleFeaturePyramid(clip.config.vision.hidden_size, c.hidden_dim, **kw)
      channels = SimpleFeaturePyramid.channels(c.hidden_dim)
    self.head = MaskFormerHead(channels, num_queries=c.num_queries,
                               hidden_dim=c.hidden_dim, mask_dim=c.hidden_dim, enc_layers=c.enc_layers,
                               enc_ffn_dim=c.enc_ffn_dim, dec_layers=c.dec_layers,
                               dec_ffn_dim=c.dec_ffn_dim, num_heads=c.num_heads,
                               num_points=c.deform_points, remat=c.get("remat", False), **kw)
    # FC-CLIP's `_mask_pooling_proj` (LayerNorm, Linear) and `class_embed` + void + scale.
    self.mask_pooling_norm = layer_norm(c.hidden_dim, **kw)
    self.mask_pooling_proj = linear(c.hidden_dim, c.hidden_dim, ("embed", "mlp"), **kw)
    self.in_vocab = CosineClassifier(c.hidden_dim, dim, **kw)
    self.cdt = ContentDependentTransfer(dim, c.cdt_heads, c.cdt_mode, **kw)
    # Run configs from before this option trained on the per-pixel map.
    self.cdt_dense = c.get("cdt_dense", "per_pixel")
    if self.cdt_dense not in CDT_DENSE:
      raise ValueError(f"config.model.cdt_dense={self.cdt_dense!r}: expected one of {CDT_DENSE}")

  def teacher_trunk(self, pixels, rng=None):
    """Trunk features of the frozen initial tower (the RC teacher), no gradient. `rng`: the
    official code runs the teacher in train mode too (ConvNeXt stochastic depth)."""
    return jax.lax.stop_gradient(self.teacher.trunk_features(pixels, rng))

  def backbone(self, pixels, rng=None):
    """-> (mask-head input levels res2..res5, detached; the trunk's dense CLIP map)."""
    pyramid = self.clip.backbone_features(pixels, rng)
    if pyramid is None:
      trunk = self.clip.trunk_features(pixels)  # before the CLIP head
      return self.pyramid(jax.lax.stop_gradient(trunk)), trunk
    levels = {k: jax.lax.stop_gradient(pyramid[k]) for k in ("res2", "res3", "res4", "res5")}
    return levels, pyramid["clip_vis_dense"]

  def in_vocab_logits(self, prediction, mask_features, text, synonym_index):
    """FC-CLIP's class path for one prediction set -> (B, Q, C+1), void last."""
    features = prediction["class_features"]
    pooled = mask_pool(mask_features, prediction["pred_masks"]).astype(features.dtype)
    features = features + self.mask_pooling_proj(self.mask_pooling_norm(pooled))
    syn = self.in_vocab(features, text)  # (B, Q, S+1)
    return jnp.concatenate([max_over_synonyms(syn[..., :-1], synonym_index), syn[..., -1:]], -1)

  def out_of_vocab_logits(self, trunk, pred_masks, text, synonym_index):
    """Mask-pooled trunk features through the CLIP head vs the CDT classifier -> (B, Q, C)."""
    pooled = self.clip.image_head(mask_pool(trunk, pred_masks)).astype(jnp.float32)
    dense = nchw_rows(trunk) if self.cdt_dense == "official" else trunk
    transferred = self.cdt(text, self.clip.image_head(dense)).astype(jnp.float32)  # T', not re-normalised
    scale = jnp.minimum(jnp.exp(self.clip.logit_scale[...]), 100.0)
    logits = scale * jnp.einsum("bqd,bsd->bqs", l2_normalize(pooled), transferred)
    return max_over_synonyms(logits, synonym_index)

  def __call__(self, pixels, text, synonym_index, rng=None):
    """pixels (B, H, W, 3); text (S, D) unit rows; synonym_index (C, K); rng: training randomness
    of the backbone (None at inference).

    Returns the head output (every set with in-vocab 'pred_logits' (B, Q, C+1), void last, and
    'pred_masks' (B, Q, H/4, W/4)), plus 'out_vocab_logits' (B, Q, C) of the final set and the
    student's 'trunk' features (B, h, w, width).
    """
    levels, trunk = self.backbone(pixels, rng)
    classify = lambda s, mask_features: self.in_vocab_logits(s, mask_features, text, synonym_index)
    out = self.head(levels, classify)
    out["out_vocab_logits"] = self.out_of_vocab_logits(trunk, out["pred_masks"], text, synonym_index)
    out["trunk"] = trunk
    return out


def nchw_rows(x):
  """(B, h, w, C) -> (B, h, w, C) as the official code reads its NCHW map with
  `x.reshape(B*h*w, C)` before the CLIP head (`maft_plus.py` `visual_prediction_forward_convnext`,
  no permute): position r holds elements r*C .. r*C+C-1 of each image's channel-major flattening."""
  b, h, w, c = x.shape
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(b, h, w, c)


targets_from_batch = mask_targets  # loader batch -> mask targets (shared with GKC)


def loss_fn(model: MAFTPlus, batch, rng, text, synonym_index, loss_config):
  """Total loss and its terms for one batch (weights: config.loss; docs/maft_plus.md)."""
  rng, student_rng, teacher_rng = jax.random.split(rng, 3)
  out = model(batch["image"], text, synonym_index, student_rng)
  # Unlabelled pixels out of the mask losses (zero-shot protocol: unseen classes are no negatives).
  targets = targets_from_batch(batch, synonym_index.shape[0]
                               if loss_config.get("ignore_unlabelled_pixels", False) else None)
  return loss_terms(out, targets, model.teacher_trunk(batch["image"], teacher_rng), rng, loss_config)


def loss_terms(out, targets, teacher_trunk, rng, c):
  """Mask classification (deep supervision) + mask-aware + representation compensation."""
  mask_cfg = MaskLossConfig.from_config(c)
  total, terms = mask_classification_loss(rng, prediction_sets(out), targets, config=mask_cfg)
  terms["loss_mask_aware"] = mask_aware_loss(out["out_vocab_logits"], out["pred_masks"], targets)
  terms["loss_rc"] = representation_compensation_loss(out["trunk"], teacher_trunk)
  total = total + c.mask_aware_weight * terms["loss_mask_aware"] + c.rc_weight * terms["loss_rc"]
  return total, terms


def semantic_scores(out, image_hw, seen=None, alpha=None, beta=None):
  """Per-class scores (B, H, W, C) = Σ_q p_q[c]·σ(m_q), as the official `semantic_inference`.

  p_q = [softmax_C(out-vocab)·(1 − p_void), p_void] with p_void from the in-vocab softmax over C+1
  (MAFT+ `maft_plus.py`). With `seen` (C,) bool: FC-CLIP's geometric ensemble (`fcclip.py`): void
  dropped from the in-vocab logits first, both softmaxed over C, in^(1−w)·out^w renormalised with
  w = α (seen) / β (unseen; values from `config.model`), then ×(1 − p_void). As the official code,
  the class probabilities go through log(p + 1e-8) and a softmax over C+1 before void is dropped.
  """
  in_logits = out["pred_logits"].astype(jnp.float32)
  p_void = jax.nn.softmax(in_logits, -1)[..., -1:]
  log_out = jax.nn.log_softmax(out["out_vocab_logits"].astype(jnp.float32), -1)
  if seen is None:
    probs = jnp.exp(log_out)
  else:
    w = jnp.where(seen, alpha, beta)
    probs = jax.nn.softmax((1 - w) * jax.nn.log_softmax(in_logits[..., :-1], -1) + w * log_out, -1)
  probs = probs * (1 - p_void)
  probs = (probs + 1e-8) / (1.0 + (probs.shape[-1] + 1) * 1e-8)  # softmax(log(p + 1e-8)), void dropped
  masks = jax.nn.sigmoid(resize_nchw(out["pred_masks"].astype(jnp.float32), *image_hw))
  return jnp.einsum("bqc,bqhw->bhwc", probs, masks)


# ---- the method contract (methods/base.py) ----

def text_context(model: MAFTPlus, vocabulary, templates, cache_dir=None):
  """(text (S, D), synonym_index (C, K)) from the frozen text tower."""
  from ovs_jax.text_classifier import build_text_classifier
  clf = build_text_classifier(model.clip, vocabulary, templates, cache_dir=cache_dir)
  return jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index)


def seen_classes(vocabulary, train_vocabulary):
  """(C,) bool: which classes of `vocabulary` were training classes (by any shared name), as
  FC-CLIP's `category_overlapping_mask`."""
  train_names = {n.strip().lower() for names in train_vocabulary for n in names}
  return np.asarray([any(n.strip().lower() in train_names for n in names) for names in vocabulary])


class MAFTPlusMethod(Method):
  name = "maft_plus"

  def build_model(self, config, architecture=None) -> MAFTPlus:
    """A MAFT+ model from `config.clip` (weights) or an architecture record, and `config.model`."""
    from ovs_jax.methods.common import clip_from_config, compute_dtype
    clip = clip_from_config(config, architecture)
    return MAFTPlus(clip, config.model, dtype=compute_dtype(config.model.dtype),
                    rngs=nnx.Rngs(config.seed + 1))

  def architecture(self, model):
    from ovs_jax.models import clip_family
    return {"clip": clip_family.to_record(model.clip.config)}

  def train_context(self, model, config, vocabulary, templates, cache_dir):
    return text_context(model, vocabulary, templates, cache_dir)

  def context_spec(self, model, num_classes, synonyms):
    return (((num_classes * synonyms, model.clip.config.projection_dim), "float32"),
            ((num_classes, synonyms), "int32"))

  def loss(self, model, batch, rng, context, config):
    return loss_fn(model, batch, rng, *context, config.loss)

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    """Inference over `vocabulary`: MAFT+'s fusion, or FC-CLIP's geometric ensemble when
    `config.model.ensemble == 'geometric'` (seen classes: names shared with `train_vocabulary`)."""
    from ovs_jax.inference.segmentation_model import SegmentationModel
    m = config.model
    if m.ensemble not in ("none", "geometric"):
      raise ValueError(f"config.model.ensemble={m.ensemble!r}: expected 'none' or 'geometric'")
    seen = None
    if m.ensemble == "geometric":
      seen = jnp.asarray(seen_classes(vocabulary, train_vocabulary or []))
    text, index = text_context(nnx.merge(graphdef, *states), vocabulary, templates, cache_dir)
    alpha, beta = m.ensemble_alpha, m.ensemble_beta

    def apply(params, pixels, valid):
      del valid
      states, text, index = params
      out = nnx.merge(graphdef, *states)(pixels, text, index)
      return semantic_scores(out, pixels.shape[1:3], seen, alpha, beta)
    return SegmentationModel(name or self.name, apply, (tuple(states), text, index),
                             [v[0] for v in vocabulary], input_multiple=32)


METHOD = MAFTPlusMethod()
