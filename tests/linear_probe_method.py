"""A tiny method written only against the method contract (`ovs_jax/methods/base.py`), to show
that a new method needs its own module, a config and one registry line — nothing else.

Linear probe on frozen dense CLIP features: each patch's CLIP feature goes through a learned
Linear, then cosine with the text classifier (max over synonyms) × a learned scale; trained with
per-patch cross-entropy against the label at each patch centre.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.layers import linear
from ovs_jax.methods.base import Method
from ovs_jax.methods.common import clip_from_config
from ovs_jax.models import clip_config
from ovs_jax.models.clip import l2_normalize
from ovs_jax.text_classifier import build_text_classifier, max_over_synonyms


class LinearProbeModel(nnx.Module):

  def __init__(self, clip, *, rngs):
    d = clip.config.projection_dim
    self.clip = clip
    self.probe = linear(d, d, ("embed", "proj"), dtype=jnp.float32, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(jnp.log(10.0)))

  def __call__(self, pixels, text, synonym_index):
    """-> class logits on the patch grid (B, h, w, C)."""
    dense = jax.lax.stop_gradient(self.clip.dense_features(pixels))
    emb = l2_normalize(self.probe(dense.astype(jnp.float32)))
    return max_over_synonyms(jnp.exp(self.logit_scale[...]) * emb @ text.T, synonym_index)


class LinearProbe(Method):
  name = "linear_probe"

  def build_model(self, config, architecture=None):
    return LinearProbeModel(clip_from_config(config, architecture), rngs=nnx.Rngs(config.seed))

  def architecture(self, model):
    return {"clip": clip_config.to_hf_dict(model.clip.config)}

  def train_context(self, model, config, vocabulary, templates, cache_dir):
    clf = build_text_classifier(model.clip, vocabulary, templates, cache_dir=cache_dir)
    return jnp.asarray(clf.embeddings), jnp.asarray(clf.synonym_index)

  def context_spec(self, model, num_classes, synonyms):
    return (((num_classes * synonyms, model.clip.config.projection_dim), "float32"),
            ((num_classes, synonyms), "int32"))

  def loss(self, model, batch, rng, context, config):
    logits = model(batch["image"], *context)
    b, h, w, c = logits.shape
    p = batch["image"].shape[1] // h  # patch centres pick their labels
    label = batch["label"][:, p // 2::p, p // 2::p][:, :h, :w].astype(jnp.int32)
    valid = (label >= 0) & (label < c)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), jnp.clip(label, 0, c - 1)[..., None], -1)[..., 0]
    loss = jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1)
    return loss, {"loss_ce": loss}

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    from ovs_jax.inference.segmentation_model import SegmentationModel
    model = nnx.merge(graphdef, *states)
    text, index = self.train_context(model, config, vocabulary, templates, cache_dir)

    def apply(params, pixels, valid):
      logits = nnx.merge(graphdef, *params[0])(pixels, params[1], params[2])
      b, hh, ww, _ = pixels.shape
      return jax.image.resize(logits, (b, hh, ww, logits.shape[-1]), "bilinear")
    return SegmentationModel(name or self.name, apply, (tuple(states), text, index),
                             [v[0] for v in vocabulary], input_multiple=model.clip.config.vision.patch_size)


METHOD = LinearProbe()
