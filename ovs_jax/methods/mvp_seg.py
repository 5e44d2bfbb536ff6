"""MVP-SEG (Guo et al. 2023): multi-view learned prompts on a frozen CLIP, with an orthogonal
constraint between the views and global prompt refining. No public code exists; the formulas are
the paper's (DESIGN §7) and every value it leaves open is ours (docs/mvp_seg.md).

* Frozen CLIP; MaskCLIP dense features (a ViT's last-block value path, a CLIP ResNet's
  attention-pool value path) through the CLIP head, L2-normalised.
* k+1 learned contexts (p0 global, p1..pk views) spliced into the frozen text tower
  (`heads/learned_prompts.py`): text features t_i^c for every class c and view i.
* m_i^c = cos(dense pixel, t_i^c) (max over the class's synonyms), upsampled to the label size;
  m_f = softmax_c(τ1·Σ_{i≥1} m_i).
* Global prompt refining: g_c = σ(Σ_p m0^c(p)·softmax_p(γ·m0^c(p)) / τ2), pooled over the pixels
  that count (labelled ones in training, the unpadded image at inference); m^c = m_f^c·g_c.
* L = λ1·L_seg (pixel CE of m renormalised over classes) + λ2·L_cls (BCE of g against the classes
  present) + λ3·L_OC (Σ_{i<j} |cos(mean p_i, mean p_j)| over the k views). τ1, τ2 learnable.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.heads.learned_prompts import prompt_token_ids, prompted_text_features, template_contexts
from ovs_jax.losses.multi_view import (image_level_loss, orthogonal_constraint_loss,
                                       pixel_cross_entropy)
from ovs_jax.methods.base import Method
from ovs_jax.models.clip import CLIPBase, l2_normalize
from ovs_jax.ops.resize import resize
from ovs_jax.text_classifier import max_over_synonyms, synonym_layout

# Only the contexts and the temperatures train: all of CLIP is frozen.
FROZEN = (r"clip/",)


class MVPSeg(nnx.Module):

  def __init__(self, clip: CLIPBase, model_config, *, rngs: nnx.Rngs):
    c = model_config
    self.clip = clip
    views, width = c.views + 1, clip.config.text.hidden_size
    if c.context_init == "random":  # CoOp's generic context: N(0, 0.02²)
      contexts = jnp.zeros((views, c.context_length, width))
    else:  # a handcrafted prompt (n = its word count), plus the same noise so the views can move
      # apart (identical views get identical gradients and |cos| = 1 has zero gradient)
      contexts = template_contexts(clip, c.context_init, views)
    contexts = contexts + 0.02 * jax.random.normal(rngs.params(), contexts.shape)
    self.contexts = nnx.Param(contexts)  # (k+1, n, D): p0 global, p1..pk views
    self.log_tau1 = nnx.Param(jnp.asarray(math.log(c.tau1_init), jnp.float32))
    self.log_tau2 = nnx.Param(jnp.asarray(math.log(c.tau2_init), jnp.float32))
    # OURS (option): a learnable threshold b in g = σ((pooled − b)/τ2). Without it (the paper's
    # form) an absent class's gate stays above 0.5 whenever its pooled cosine is positive.
    self.gpr_bias = nnx.Param(jnp.zeros((), jnp.float32)) if c.get("gpr_bias", False) else nnx.data(None)
    self.gamma = c.gamma
    # Ablation switch (the paper's "w/o GPR" rows): m = m_f, no image-level loss.
    self.refine = c.get("global_prompt_refining", True)

  @property
  def context_length(self) -> int:
    return self.contexts.shape[1]

  def text_features(self, ids, eot):
    """(S, L) prompt ids, (S,) EOT positions -> (k+1, S, P) unit-norm text features."""
    return prompted_text_features(self.clip, self.contexts[...], ids, eot)

  def view_maps(self, pixels, text, synonym_index):
    """-> (k+1, B, h, w, C) cosine maps m_i of the frozen MaskCLIP features, max over synonyms."""
    dense = jax.lax.stop_gradient(self.clip.dense_features(pixels, maskclip=True))
    dense = l2_normalize(dense.astype(jnp.float32))
    return max_over_synonyms(jnp.einsum("bhwp,vsp->vbhws", dense, text), synonym_index)

  def __call__(self, pixels, text, synonym_index, out_hw, pixel_mask):
    """pixels (B, H, W, 3) normalised; text (k+1, S, P); synonym_index (C, K); out_hw the label
    size; pixel_mask (B, *out_hw) the pixels that count -> (log m (B, *out_hw, C), GPR logits
    (B, C))."""
    maps = self.view_maps(pixels, text, synonym_index)
    # Bilinear upsampling is linear: upsampling Σ m_i equals summing the upsampled m_i.
    bias = 0.0 if self.gpr_bias is None else self.gpr_bias[...]
    log_m, class_logits = multi_view_segmentation(
        resize(maps[1:].sum(0), *out_hw), resize(maps[0], *out_hw), pixel_mask,
        jnp.exp(self.log_tau1[...]), jnp.exp(self.log_tau2[...]), self.gamma, bias)
    if not self.refine:  # m = m_f: undo the gate (log g is constant over pixels for each class)
      log_m = log_m - jax.nn.log_sigmoid(class_logits)[:, None, None, :]
    return log_m, class_logits


def multi_view_segmentation(views_sum, global_map, pixel_mask, tau1, tau2, gamma, bias=0.0):
  """views_sum Σ_{i≥1} m_i and global_map m0 (B, H, W, C), pixel_mask (B, H, W) ->
  (log m = log m_f + log g (B, H, W, C), GPR logits (Σ_p m0·softmax_p(γ·m0) − bias) / τ2 (B, C)).
  Masked-out pixels are replaced before any arithmetic: their values never matter."""
  mask = pixel_mask[..., None]
  views_sum, global_map = jnp.where(mask, views_sum, 0.0), jnp.where(mask, global_map, 0.0)
  log_fused = jax.nn.log_softmax(tau1 * views_sum, -1)
  b, _, _, c = global_map.shape
  m0 = global_map.reshape(b, -1, c)
  weights = jax.nn.softmax(jnp.where(mask.reshape(b, -1, 1), gamma * m0, -1e30), axis=1)
  class_logits = ((weights * m0).sum(1) - bias) / tau2
  return log_fused + jax.nn.log_sigmoid(class_logits)[:, None, None, :], class_logits


def loss_terms(log_m, class_logits, contexts, label, num_classes, c, refine=True):
  """L = λ1·L_seg + λ2·L_cls + λ3·L_OC (weights from config.loss; no L_cls without refining)."""
  terms = {"loss_seg": pixel_cross_entropy(jax.nn.log_softmax(log_m, -1), label, num_classes),
           "loss_cls": image_level_loss(class_logits, label, num_classes),
           "loss_oc": orthogonal_constraint_loss(contexts[1:])}
  total = (c.seg_weight * terms["loss_seg"] + refine * c.cls_weight * terms["loss_cls"]
           + c.oc_weight * terms["loss_oc"])
  return total, terms


def loss_fn(model: MVPSeg, batch, ids, eot, synonym_index, loss_config):
  label = batch["label"]
  num_classes = synonym_index.shape[0]
  text = model.text_features(ids, eot)  # in the step: gradients reach the contexts
  log_m, class_logits = model(batch["image"], text, synonym_index, label.shape[1:],
                              (label >= 0) & (label < num_classes))
  total, terms = loss_terms(log_m, class_logits, model.contexts[...], label, num_classes, loss_config,
                            model.refine)
  terms["tau1"], terms["tau2"] = jnp.exp(model.log_tau1[...]), jnp.exp(model.log_tau2[...])
  return total, terms


def prompt_context(model: MVPSeg, vocabulary):
  """(ids (S, L), eot (S,), synonym_index (C, K)) for a vocabulary's synonyms."""
  flat, index = synonym_layout(vocabulary)
  t = model.clip.config.text
  ids, eot = prompt_token_ids(flat, model.context_length, t.max_position_embeddings, t.eos_token_id)
  return jnp.asarray(ids), jnp.asarray(eot), jnp.asarray(index)


def class_names_only(vocabulary, config):
  """One name per class (the dataset's; the paper's protocol) unless `config.data.class_synonyms`
  (e.g. FC-CLIP's multi-name files, which raise unseen mIoU with hand-picked names)."""
  if config.get("data", {}).get("class_synonyms", True):
    return vocabulary
  return [names[:1] for names in vocabulary]


def text_features(graphdef, states, ids, eot, chunk: int = 256):
  """(k+1, S, P) for a whole vocabulary, in fixed-size jitted chunks (one compile)."""
  fn = jax.jit(lambda states, i, e: nnx.merge(graphdef, *states).text_features(i, e))
  out = []
  for s in range(0, ids.shape[0], chunk):
    i, e = ids[s:s + chunk], eot[s:s + chunk]
    n = i.shape[0]
    out.append(fn(states, jnp.pad(i, ((0, chunk - n), (0, 0))), jnp.pad(e, (0, chunk - n)))[:, :n])
  return jnp.concatenate(out, 1)


class MVPSegMethod(Method):
  name = "mvp_seg"

  def build_model(self, config, architecture=None) -> MVPSeg:
    from ovs_jax.methods.common import clip_from_config
    return MVPSeg(clip_from_config(config, architecture), config.model, rngs=nnx.Rngs(config.seed + 1))

  def architecture(self, model):
    from ovs_jax.models import clip_family
    return {"clip": clip_family.to_record(model.clip.config)}

  def training_vocabulary(self, config):
    return class_names_only(super().training_vocabulary(config), config)

  def train_mapper(self, config, source):
    """`data.train_mapper="mmseg"`: MaskCLIP+'s mmseg pipeline (`input_pipeline/mmseg_pipeline.py`)."""
    d = config.data
    if d.get("train_mapper") != "mmseg":
      return super().train_mapper(config, source)
    from input_pipeline.mmseg_pipeline import mmseg_train
    return mmseg_train(source, tuple(d.img_scale), tuple(d.ratio_range), (d.crop_size, d.crop_size),
                       d.cat_max_ratio, d.photometric, num_masks=d.num_masks, with_masks=False)

  def train_context(self, model, config, vocabulary, templates, cache_dir):
    return prompt_context(model, vocabulary)

  def context_spec(self, model, num_classes, synonyms):
    s, length = num_classes * synonyms, model.clip.config.text.max_position_embeddings
    return (((s, length), "int32"), ((s,), "int32"), ((num_classes, synonyms), "int32"))

  def loss(self, model, batch, rng, context, config):
    del rng  # deterministic: no dropout, no sampling
    return loss_fn(model, batch, *context, config.loss)

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    """m = m_f·g over `vocabulary`; the prompts' text features are computed once."""
    from ovs_jax.inference.segmentation_model import SegmentationModel
    del templates, cache_dir, train_vocabulary  # learned prompts replace the templates
    vocabulary = class_names_only(vocabulary, config)
    model = nnx.merge(graphdef, *states)
    ids, eot, index = prompt_context(model, vocabulary)
    text = text_features(graphdef, states, ids, eot)

    def apply(params, pixels, valid):
      states, text, index = params
      log_m, _ = nnx.merge(graphdef, *states)(pixels, text, index, pixels.shape[1:3], valid)
      return jnp.exp(log_m)
    return SegmentationModel(name or self.name, apply, (tuple(states), text, index),
                             [v[0] for v in vocabulary], input_multiple=model.clip.dense_stride)


METHOD = MVPSegMethod()
