"""GKC's text diversification: the class CE again, each segment named by a drawn synonym, with one
classifier per image.

The release (yongliu20/GKC @21313c8) builds the classifier in its data mapper,
`mask2former/data/dataset_mappers/detr_panoptic_caption_syn_kd_dataset_mapper.py`:
* 255–259: each segment draws one synonym uniformly among those its filter file kept (p > 0.1);
* 225–231, 260–274: the image starts from the 133 class names; a class's first draw takes the
  class's column (a draw equal to the column's current name stays there), every other draw is
  looked up among the names appended so far (by string, whatever their class) and appended when
  new — so each image has 133 + (its distinct extra names) columns;
* 368: those names are the image's classifier.
`mask2former/maskformer_model_voca_dense_kd_syn.py` 436–447 pads every image's list to the
largest of the GPU's batch with all-zero token rows, which the text encoder embeds like any other
row (they stay in the softmax); 543–557 and 834–866: the CE over [names; void] with void weight
0.1, its own region dropout draw (849–858), for every prediction set.

Names are compared by `name_of_row` (the first text row holding the same string), so two
classes sharing a synonym share its appended column, as the release's string test does.
"""
import jax
import jax.numpy as jnp

from ovs_jax.losses.mask_losses import classification_loss
from ovs_jax.losses.per_device import split
from ovs_jax.losses.set_criterion import matched_target_classes
from ovs_jax.models.clip import l2_normalize


def draw_synonyms(rng, labels, synonym_index, allowed_bits=None):
  """(B, T) row in the text table of a synonym of each target's class, uniform over the class's
  synonyms (synonym_index (C, K), −1 = padding). allowed_bits (B, T) int32, GKC's per-segment
  filter (`input_pipeline/segment_synonyms.py`): bit k set = synonym k may be drawn; a target
  whose bits keep none of its class's synonyms draws among all of them."""
  rows = synonym_index[labels]  # (B, T, K)
  allowed = rows >= 0
  if allowed_bits is not None:
    k = jnp.arange(rows.shape[-1], dtype=jnp.int32)
    kept = allowed & (((allowed_bits[..., None] >> k) & 1) == 1)
    allowed = jnp.where(kept.any(-1, keepdims=True), kept, allowed)
  pick = jnp.argmax(jnp.where(allowed, jax.random.uniform(rng, rows.shape), -1.0), -1)
  return jnp.take_along_axis(rows, pick[..., None], -1)[..., 0]


def _image_classes(labels, valid, names, class_names):
  """One image: labels, valid, names (T,) (name id of each segment's draw), class_names (C,)."""
  c, t = class_names.shape[0], labels.shape[0]
  order = jnp.arange(t)
  first = jnp.full((c,), t).at[jnp.where(valid, labels, c)].min(order, mode="drop")
  in_place_name = jnp.where(first < t, names[jnp.minimum(first, t - 1)], class_names)
  in_place = valid & (names == in_place_name[labels])
  extra = valid & ~in_place
  slot = jnp.argmax((names[:, None] == names[None, :]) & extra[None, :], axis=1)  # first user
  targets = jnp.where(in_place, labels, c + slot)
  used = jnp.concatenate([jnp.ones((c,), bool), extra & (slot == order)])
  return jnp.concatenate([in_place_name, names]), used, targets


def synonym_classes(labels, valid, rows, name_of_row, synonym_index, group):
  """Each image's synonym classifier, padded as the release pads it.

  labels, valid, rows (B, T): class, validity and drawn text row of each target; name_of_row (S,);
  synonym_index (C, K) (column 0: the class name); group: images per device.
  Returns names (B, C+T) name id of each column (C class columns, then column C+t for the extra
  name first used by target t), used (B, C+T), pad (B, C+T) the unused columns standing for
  the release's zero-token padding (as many as the group's largest extra count minus the
  image's), targets (B, T) each target's column.
  """
  c = synonym_index.shape[0]
  names, used, targets = jax.vmap(_image_classes, (0, 0, 0, None))(
      labels, valid, name_of_row[rows], name_of_row[synonym_index[:, 0]])
  extras = used[:, c:].sum(-1)
  most = jnp.repeat(split(extras, group).max(-1), group)
  free = ~used[:, c:]
  rank = jnp.cumsum(free, -1) - 1
  pad = jnp.zeros_like(used).at[:, c:].set(free & (rank < (most - extras)[:, None]))
  return names, used, pad, targets


def synonym_logits(class_path, embedding, columns, active):
  """embedding (B, Q, E) unit, columns (B, K, E) unit text of each image's columns, active (B, K)
  -> (B, Q, K+1): exp(logit_scale)·cosine with [columns; void], inactive columns −inf."""
  void = l2_normalize(class_path.void_embedding[...].astype(jnp.float32))
  text = jnp.concatenate([columns.astype(jnp.float32),
                          jnp.broadcast_to(void, (columns.shape[0], *void.shape))], 1)
  logits = jnp.exp(class_path.logit_scale[...]) * jnp.einsum("bqe,bke->bqk", embedding, text)
  keep = jnp.concatenate([active, jnp.ones((active.shape[0], 1), bool)], 1)
  return jnp.where(keep[:, None, :], logits, -jnp.inf)


def synonym_loss(class_path, sets, matches, dropped, labels, valid, rows, text, name_of_row,
                 synonym_index, pad_text, group, void_weight):
  """Σ over prediction sets of the synonym CE (matches and `dropped` per set; `dropped` drawn
  apart from the class CE's). text (S, E) unit rows, pad_text (E,) unit: the text encoder's
  embedding of an all-zero token row."""
  names, used, pad, targets = synonym_classes(labels, valid, rows, name_of_row, synonym_index,
                                              group)
  columns = jnp.where(pad[..., None], pad_text, text[names])
  active = used | pad
  q, k = sets[0]["embedding"].shape[1], names.shape[1]
  return sum(
      classification_loss(synonym_logits(class_path, s["embedding"], columns, active),
                          matched_target_classes(m, targets, valid, q, k), void_weight, d)
      for s, m, d in zip(sets, matches, dropped))
