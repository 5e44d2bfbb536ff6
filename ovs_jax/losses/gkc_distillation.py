"""GKC's text-guided knowledge distillation.

Release (yongliu20/GKC @21313c8):
* data mapper `detr_panoptic_caption_syn_kd_dataset_mapper.py` 299–331: one crop per non-crowd
  segment of the *original* image: grey (128) outside the mask, `Image.crop([x_min, y_min, x_max,
  y_max])` (PIL's right/lower edge is exclusive, so the last row and column of the segment fall
  out), bicubic resize to 224 × 224, CLIP-normalised (377–382);
* `maskformer_model_voca_dense_kd_syn.py` 559–656: crops in matched-target order; when the GPU's
  batch has more than `KD.MAX_LIST_LEN` = 200 (config.py 154) a random 200 of them (592–599);
  the frozen CLIP's embedding (601–606) is regressed by a per-set `Linear` of the query feature
  (`KD.STU_SOURCE = 'prior'`, 248–252, 608–617); the text is each crop's class column of the
  *synonym* classifier (`kd_text_ebmd = syn_class_ebmd`, 561–570, with the synonym targets of
  538), i.e. the embedding of the segment's drawn synonym;
* `loss_text_kd` 925–952: per image, (s·t_i · s·t_j − v_i·c_j)² for every pair i, j of its crops,
  and ‖v_i − c_i‖² per crop, one mean over all of them (s learnable, init 1, 263).
Crops are chosen per device (groups of `per_device.split`); the loss is the mean over devices of
each device's mean, as DDP averages the GPUs' gradients.
"""
import jax
import jax.numpy as jnp

from ovs_jax.losses.per_device import split
from ovs_jax.ops.segment_crops import segment_crop
from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD

MAX_CROPS = 200  # KD.MAX_LIST_LEN, mask2former/config.py:154


def choose_crops(rng, valid, group, max_crops=MAX_CROPS):
  """Up to `max_crops` valid targets of each group of `group` images, drawn at random (all of them
  when there are fewer). valid (B, T) -> image, slot, ok (G, K), K = min(max_crops, group·T)."""
  t = valid.shape[1]
  flat = split(valid, group).reshape(-1, group * t)
  k = min(max_crops, group * t)
  chosen, idx = jax.lax.top_k(jnp.where(flat, jax.random.uniform(rng, flat.shape), -1.0), k)
  image = jnp.arange(flat.shape[0])[:, None] * group + idx // t
  return image, idx % t, chosen >= 0


def teacher_crops(view, segments, image, values, size, group=None, chunk=16):
  """The teacher's inputs from the un-augmented view (`input_pipeline/teacher_view.py`).

  view (B, S, S, 3) uint8, segments (B, S, S) its segment map; image, values (G, K): each crop's
  image and value in its segment map (panoptic segment id or semantic class) -> ((G, K, size,
  size, 3) CLIP-normalised crops with the release's box, (G, K) bool: the segment is in the view).
  Each group reads only its own `group` images (B / G by default), so under data parallelism a
  device crops its own images; crops are made `chunk` at a time, so memory does not grow with
  the crop count.
  """
  mean, std = jnp.asarray(CLIP_MEAN), jnp.asarray(CLIP_STD)
  group = group or view.shape[0] // image.shape[0]
  local = image - jnp.arange(image.shape[0])[:, None] * group

  def per_group(views, segs, idx, vals):
    def one(args):
      i, value = args
      mask = segs[i] == value
      crop = segment_crop(views[i].astype(jnp.float32), mask, size, exclusive_end=True)
      return (crop / 255.0 - mean) / std, mask.any()
    return jax.lax.map(one, (idx, vals), batch_size=min(chunk, idx.shape[0]))
  return jax.vmap(per_group)(split(view, group), split(segments, group), local, values)


def pairwise_kd(v, c, t, image, ok, scale):
  """v, c, t (G, K, E) unit student, teacher and text embeddings of a group's crops, image (G, K),
  ok (G, K) -> mean over groups of the mean of {(s²·t_i·t_j − v_i·c_j)² for crops i, j of one
  image} ∪ {‖v_i − c_i‖²} (a group without crops adds 0)."""
  pair = ok[:, :, None] & ok[:, None, :] & (image[:, :, None] == image[:, None, :])
  text = scale ** 2 * jnp.einsum("gie,gje->gij", t, t)
  pair_terms = jnp.where(pair, (text - jnp.einsum("gie,gje->gij", v, c)) ** 2, 0.0)
  self_terms = jnp.where(ok, jnp.sum((v - c) ** 2, -1), 0.0)
  count = pair.sum((1, 2)) + ok.sum(1)
  per_group = (pair_terms.sum((1, 2)) + self_terms.sum(1)) / jnp.maximum(count, 1)
  return jnp.mean(per_group)


def text_guided_kd_loss(kd_proj, sets, matches, image, slot, ok, teacher, text, scale):
  """Σ over prediction sets of `pairwise_kd` between the distillation embeddings of the queries
  each set matched to the crops' targets and the teacher's crop embeddings. image, slot, ok
  (G, K) from `choose_crops`; teacher, text (G, K, E) unit."""
  total = 0.0
  for s, m in zip(sets, matches):
    query = m[image, slot]
    v = kd_proj(s["shared"][image, jnp.maximum(query, 0)], s["index"])
    total = total + pairwise_kd(v, teacher, text, image, ok & (query >= 0), scale)
  return total
