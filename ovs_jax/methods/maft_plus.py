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
from ovs_jax.models.clip import CLIP, l2_normalize
from ovs_jax.ops.mask_pooling import mask_pool
from ovs_jax.ops.resize import resize_nchw
from ovs_jax.text_classifier import max_over_synonyms

# Parameters that never train (regexes over 'a/b/c' paths), as in the paper's recipe.
FROZEN = (r"clip/text_model/", r"clip/text_projection/", r"clip/logit_scale",
          r"clip/vision_model/post_layernorm/", r"clip/visual_projection/", r"teacher/")
BACKBONE = r"clip/vision_model/"


class MAFTPlus(nnx.Module):

  def __init__(self, clip: CLIP, model_config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    c = model_config
    width, dim = clip.config.vision.hidden_size, clip.config.projection_dim
    self.clip = clip
    # Frozen copy of the initial image tower, in its own buffers (jit donates the student's).
    self.teacher = nnx.clone(clip.vision_model)
    nnx.update(self.teacher, jax.tree.map(lambda x: jnp.array(x, copy=True), nnx.state(self.teacher)))
    kw = dict(dtype=dtype, rngs=rngs)
    self.pyramid = SimpleFeaturePyramid(width, c.hidden_dim, **kw)
    self.head = MaskFormerHead(SimpleFeaturePyramid.channels(c.hidden_dim), num_queries=c.num_queries,
                               hidden_dim=c.hidden_dim, mask_dim=c.hidden_dim, enc_layers=c.enc_layers,
                               enc_ffn_dim=c.enc_ffn_dim, dec_layers=c.dec_layers,
                               dec_ffn_dim=c.dec_ffn_dim, num_heads=c.num_heads,
                               num_points=c.deform_points, remat=c.get("remat", False), **kw)
    # FC-CLIP's `_mask_pooling_proj` (LayerNorm, Linear) and `class_embed` + void + scale.
    self.mask_pooling_norm = layer_norm(c.hidden_dim, **kw)
    self.mask_pooling_proj = linear(c.hidden_dim, c.hidden_dim, ("embed", "mlp"), **kw)
    self.in_vocab = CosineClassifier(c.hidden_dim, dim, **kw)
    self.cdt = ContentDependentTransfer(dim, c.cdt_heads, c.cdt_mode, **kw)

  def trunk_features(self, pixels):
    """(B, H, W, 3) -> the student's trunk patch tokens (B, h, w, width), before the CLIP head."""
    tokens, (h, w) = self.clip.vision_model(pixels)
    return tokens[:, 1:].reshape(tokens.shape[0], h, w, -1)

  def teacher_trunk(self, pixels):
    """Trunk features of the frozen initial tower (the RC teacher), no gradient."""
    tokens, (h, w) = self.teacher(pixels)
    return jax.lax.stop_gradient(tokens[:, 1:].reshape(tokens.shape[0], h, w, -1))

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
    transferred = self.cdt(text, self.clip.image_head(trunk)).astype(jnp.float32)  # T', not re-normalised
    scale = jnp.minimum(jnp.exp(self.clip.logit_scale[...]), 100.0)
    logits = scale * jnp.einsum("bqd,bsd->bqs", l2_normalize(pooled), transferred)
    return max_over_synonyms(logits, synonym_index)

  def __call__(self, pixels, text, synonym_index):
    """pixels (B, H, W, 3); text (S, D) unit rows; synonym_index (C, K).

    Returns the head output (every set with in-vocab 'pred_logits' (B, Q, C+1), void last, and
    'pred_masks' (B, Q, H/4, W/4)), plus 'out_vocab_logits' (B, Q, C) of the final set and the
    student's 'trunk' features (B, h, w, width).
    """
    trunk = self.trunk_features(pixels)
    classify = lambda s, mask_features: self.in_vocab_logits(s, mask_features, text, synonym_index)
    out = self.head(self.pyramid(jax.lax.stop_gradient(trunk)), classify)
    out["out_vocab_logits"] = self.out_of_vocab_logits(trunk, out["pred_masks"], text, synonym_index)
    out["trunk"] = trunk
    return out


def targets_from_batch(batch):
  """Loader batch -> {'labels', 'masks', 'valid'} targets; masks rebuilt on device if not shipped."""
  classes = batch["mask_classes"]
  masks = batch.get("masks")
  if masks is None:
    masks = batch["label"][:, None].astype(jnp.int32) == classes[..., None, None]
  return {"labels": jnp.maximum(classes, 0), "masks": masks, "valid": batch["mask_valid"] & (classes >= 0)}


def loss_fn(model: MAFTPlus, batch, rng, text, synonym_index, loss_config):
  """Total loss and its terms for one batch (DESIGN §4 weights)."""
  out = model(batch["image"], text, synonym_index)
  return loss_terms(out, targets_from_batch(batch), model.teacher_trunk(batch["image"]), rng,
                    loss_config)


def loss_terms(out, targets, teacher_trunk, rng, c):
  """Mask classification (deep supervision) + mask-aware + representation compensation."""
  mask_cfg = MaskLossConfig(c.class_weight, c.mask_weight, c.dice_weight, c.void_weight, c.num_points,
                            c.oversample_ratio, c.importance_sample_ratio)
  total, terms = mask_classification_loss(rng, prediction_sets(out), targets, config=mask_cfg)
  terms["loss_mask_aware"] = mask_aware_loss(out["out_vocab_logits"], out["pred_masks"], targets)
  terms["loss_rc"] = representation_compensation_loss(out["trunk"], teacher_trunk)
  total = total + c.mask_aware_weight * terms["loss_mask_aware"] + c.rc_weight * terms["loss_rc"]
  return total, terms


def semantic_scores(out, image_hw, seen=None, alpha=0.4, beta=0.8):
  """Per-class scores (B, H, W, C) = Σ_q p_q[c]·σ(m_q), as the official `semantic_inference`.

  p_q = [softmax_C(out-vocab)·(1 − p_void), p_void] with p_void from the in-vocab softmax over C+1
  (MAFT+ `maft_plus.py`). With `seen` (C,) bool: FC-CLIP's geometric ensemble (`fcclip.py`): void
  dropped from the in-vocab logits first, both softmaxed over C, in^(1−w)·out^w renormalised with
  w = α (seen) / β (unseen), then ×(1 − p_void). As the official code, the class probabilities go
  through log(p + 1e-8) and a softmax over C+1 before void is dropped.
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


# ---- construction, training context and inference, as the trainer and evaluator use them ----

def build_model(config) -> MAFTPlus:
  """A MAFT+ model from `config.clip` (weights) and `config.model` (head sizes)."""
  from ovs_jax.methods.common import clip_from_config, compute_dtype
  clip = clip_from_config(config)
  return MAFTPlus(clip, config.model, dtype=compute_dtype(config.model.dtype), rngs=nnx.Rngs(config.seed + 1))


def text_context(model: MAFTPlus, vocabulary, templates, cache_dir=None):
  """(text (S, D), synonym_index (C, K)) from the frozen text tower."""
  from ovs_jax.text_classifier import build_text_classifier
  clf = build_text_classifier(model.clip, vocabulary, templates, cache_dir=cache_dir)
  return jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index)


def seen_classes(vocabulary, train_vocabulary):
  """(C,) bool: which classes of `vocabulary` were training classes (by any shared name)."""
  train_names = {n.strip().lower() for names in train_vocabulary for n in names}
  return np.asarray([any(n.strip().lower() in train_names for n in names) for names in vocabulary])


def segmentation_model(graphdef, states, vocabulary, templates, cache_dir=None, name="maft_plus",
                       ensemble=None):
  """A `SegmentationModel` (for evaluate/predict) from a split MAFT+ model (graphdef, *states).

  ensemble: None (MAFT+: out-of-vocab class probabilities) or (seen (C,) bool, alpha, beta) for
  FC-CLIP's geometric ensemble with the in-vocab head.
  """
  from ovs_jax.inference.registry import SegmentationModel
  text, index = text_context(nnx.merge(graphdef, *states), vocabulary, templates, cache_dir)
  seen, alpha, beta = ensemble if ensemble is not None else (None, 0.4, 0.8)
  seen = None if seen is None else jnp.asarray(seen)

  def apply(params, pixels, valid):
    del valid
    states, text, index = params
    out = nnx.merge(graphdef, *states)(pixels, text, index)
    return semantic_scores(out, pixels.shape[1:3], seen, alpha, beta)
  return SegmentationModel(name, apply, (tuple(states), text, index), [v[0] for v in vocabulary],
                           input_multiple=32)


def ensemble_from_config(config, vocabulary, train_vocabulary):
  """`config.model.ensemble` ('none' | 'geometric') -> the `segmentation_model` ensemble argument."""
  mode = config.model.get("ensemble", "none")
  if mode not in ("none", "geometric"):
    raise ValueError(f"config.model.ensemble={mode!r}: expected 'none' or 'geometric'")
  if mode == "none":
    return None
  return (seen_classes(vocabulary, train_vocabulary), config.model.get("ensemble_alpha", 0.4),
          config.model.get("ensemble_beta", 0.8))


def _register_inference_builder():
  from ovs_jax.inference.registry import register_method

  @register_method("maft_plus")
  def from_checkpoint(directory, config, vocabulary, *, templates=None, cache_dir=None):
    """A trained MAFT+ workdir (newest checkpoint) as a `SegmentationModel` over `vocabulary`."""
    from ovs_jax.restore import restore_workdir
    from ovs_jax.templates import get_templates
    from input_pipeline.datasets import dataset_meta
    from input_pipeline.vocab import load_vocabulary
    cfg, graphdef, state, step = restore_workdir(directory)
    templates = templates or get_templates(cfg.clip.templates)
    train_vocab = load_vocabulary(dataset_meta(cfg.data.train, "train").vocabulary)
    return segmentation_model(graphdef, (state["params"], state["frozen"]), vocabulary, templates,
                              cache_dir, name=f"maft_plus@{step}",
                              ensemble=ensemble_from_config(cfg, vocabulary, train_vocab))


_register_inference_builder()
