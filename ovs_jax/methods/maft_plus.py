"""MAFT+ (Jiao et al. 2024): collaborative vision-text optimisation on a CLIP + Mask2Former model.

* The CLIP image tower is fine-tuned (lr ×0.1) and feeds the mask head through a simple feature
  pyramid; the text tower, logit scale and CLIP head (post-LN, projection) stay frozen.
* In-vocabulary classifier: query features -> MLP -> cosine with the text classifier (+ void).
* Out-of-vocabulary classifier: each query's binarised mask average-pools the dense CLIP map;
  cosine with the *Content-Dependent Transfer* classifier (text rows attend to the image).
* *Representation Compensation*: a frozen copy of the initial image tower is the teacher of a
  POD SmoothL1 loss on dense maps; plus the mask-aware loss on out-of-vocabulary scores.
Inference fuses the in-vocab void probability with out-of-vocab class probabilities.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.heads.cdt import ContentDependentTransfer
from ovs_jax.heads.cosine_classifier import CosineClassifier
from ovs_jax.heads.feature_pyramid import SimpleFeaturePyramid
from ovs_jax.heads.mask_former import MaskFormerHead, prediction_sets
from ovs_jax.heads.pixel_decoder import resize
from ovs_jax.losses.mask_aware import mask_aware_loss
from ovs_jax.losses.representation_compensation import representation_compensation_loss
from ovs_jax.losses.set_criterion import MaskLossConfig, mask_classification_loss
from ovs_jax.models.clip import CLIP, l2_normalize
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
    self.in_vocab = CosineClassifier(c.hidden_dim, dim, **kw)
    self.cdt = ContentDependentTransfer(dim, c.cdt_heads, c.cdt_mode, **kw)

  def image_features(self, pixels):
    """(B, H, W, 3) -> (patch tokens (B, h, w, width) for the mask head, dense CLIP map (B, h, w, D))."""
    tokens, (h, w) = self.clip.vision_model(pixels)
    grid = tokens[:, 1:].reshape(tokens.shape[0], h, w, -1)
    return grid, self.clip.image_head(grid)

  def teacher_dense(self, pixels):
    """Dense CLIP map of the frozen initial tower (the RC teacher), no gradient."""
    tokens, (h, w) = self.teacher(pixels)
    grid = tokens[:, 1:].reshape(tokens.shape[0], h, w, -1)
    return jax.lax.stop_gradient(self.clip.image_head(grid))

  def out_of_vocab_logits(self, dense, pred_masks, text, synonym_index):
    """Mask-pooled dense CLIP features vs the CDT classifier -> (B, Q, C), max over synonyms."""
    b, h, w, _ = dense.shape
    m = resize(pred_masks.transpose(0, 2, 3, 1).astype(jnp.float32), h, w) > 0  # σ > 0.5
    m = m.astype(jnp.float32)
    pooled = jnp.einsum("bhwq,bhwd->bqd", m, dense.astype(jnp.float32)) / (
        m.sum((1, 2))[..., None] + 1e-8)
    transferred = self.cdt(text, dense).astype(jnp.float32)  # (B, S, D): T' (not re-normalised)
    scale = jnp.minimum(jnp.exp(self.clip.logit_scale[...]), 100.0)
    logits = scale * jnp.einsum("bqd,bsd->bqs", l2_normalize(pooled), transferred)
    return max_over_synonyms(logits, synonym_index)

  def __call__(self, pixels, text, synonym_index):
    """pixels (B, H, W, 3); text (S, D) unit rows; synonym_index (C, K).

    Returns the head output (every set with in-vocab 'pred_logits' (B, Q, C+1), void last, and
    'pred_masks' (B, Q, H/4, W/4)), plus 'out_vocab_logits' (B, Q, C) of the final set and the
    student's 'dense' map (B, h, w, D).
    """
    grid, dense = self.image_features(pixels)

    def classify(features):
      syn = self.in_vocab(features, text)  # (B, Q, S+1)
      return jnp.concatenate([max_over_synonyms(syn[..., :-1], synonym_index), syn[..., -1:]], -1)
    out = self.head(self.pyramid(grid), classify)
    out["out_vocab_logits"] = self.out_of_vocab_logits(dense, out["pred_masks"], text, synonym_index)
    out["dense"] = dense
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
  return loss_terms(out, targets_from_batch(batch), model.teacher_dense(batch["image"]), rng,
                    loss_config)


def loss_terms(out, targets, teacher_dense, rng, c):
  """Mask classification (deep supervision) + mask-aware + representation compensation."""
  mask_cfg = MaskLossConfig(c.class_weight, c.mask_weight, c.dice_weight, c.void_weight, c.num_points,
                            c.oversample_ratio, c.importance_sample_ratio)
  total, terms = mask_classification_loss(rng, prediction_sets(out), targets, config=mask_cfg)
  terms["loss_mask_aware"] = mask_aware_loss(out["out_vocab_logits"], out["pred_masks"], targets)
  terms["loss_rc"] = representation_compensation_loss(out["dense"], teacher_dense)
  total = total + c.mask_aware_weight * terms["loss_mask_aware"] + c.rc_weight * terms["loss_rc"]
  return total, terms


def semantic_scores(out, image_hw, seen=None, alpha=0.4, beta=0.8):
  """Per-class scores (B, H, W, C) = Σ_q p_q[c]·σ(m_q).

  p = softmax(out-vocab)·(1 − p_void), p_void from the in-vocab head. With `seen` (C,) bool,
  FC-CLIP's geometric ensemble of in- and out-of-vocab probabilities (α seen, β unseen) instead.
  """
  p_in = jax.nn.softmax(out["pred_logits"].astype(jnp.float32), -1)
  p_void = p_in[..., -1:]
  p_out = jax.nn.softmax(out["out_vocab_logits"].astype(jnp.float32), -1)
  if seen is None:
    probs = p_out
  else:
    p_in_cls = p_in[..., :-1]  # as FC-CLIP: softmax over C+1, void dropped
    w = jnp.where(seen, alpha, beta)
    probs = jax.nn.softmax(jnp.log(p_in_cls + 1e-8) * (1 - w) + jnp.log(p_out + 1e-8) * w, -1)
  masks = jax.nn.sigmoid(resize(out["pred_masks"].transpose(0, 2, 3, 1).astype(jnp.float32), *image_hw))
  return jnp.einsum("bqc,bhwq->bhwc", probs * (1 - p_void), masks)


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
