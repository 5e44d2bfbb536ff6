"""GKC: each loss term against a re-derivation written here (numpy loops, torch's cross-entropy),
the on-device crop against PIL, the inference parameters, the recipe files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from ovs_jax.config_utils import recipe_config
from ovs_jax.losses.caption_grounding import caption_grounding_loss, choose_regions, grounding_loss
from ovs_jax.losses.gkc_distillation import choose_crops, teacher_crops, text_guided_kd_loss
from ovs_jax.losses.gkc_synonyms import draw_synonyms, synonym_classes, synonym_loss
from ovs_jax.losses.set_criterion import MaskLossConfig, mask_classification_loss
from ovs_jax.methods import gkc
from ovs_jax.ops.segment_crops import segment_crop
from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD

RNG = np.random.default_rng(0)
B, Q, T, E, SETS = 3, 7, 4, 8, 2
# Text table: class 0 has synonyms rows 0,1,2; class 1: 3; class 2: 4,5; class 3: 6,7.
INDEX = np.array([[0, 1, 2], [3, -1, -1], [4, 5, -1], [6, 7, -1]], np.int32)
# Image 0: three segments (two of class 2), image 1: one (then padding), image 2: none.
LABELS = np.array([[2, 0, 2, 1], [0, 0, 0, 0], [0, 0, 0, 0]], np.int32)
VALID = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
MATCH = np.array([[5, 0, 3, 6], [2, -1, -1, -1], [-1, -1, -1, -1]], np.int32)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def torch_ce(logits, targets, weight_void, ignore):
  """torch's weighted cross-entropy with ignore_index over (N, K+1) logits, void last."""
  k = logits.shape[-1]
  w = torch.ones(k, dtype=torch.float64)
  w[-1] = weight_void
  t = torch.tensor(np.where(ignore, -100, targets), dtype=torch.long)
  return float(torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64), t,
                                                 weight=w, ignore_index=-100))


def class_path():
  return gkc.ClassPath(16, E, SETS, dtype=jnp.float32, rngs=nnx.Rngs(0))


def kd_path():
  return gkc.KDProjections(16, E, SETS, dtype=jnp.float32, rngs=nnx.Rngs(1))


def sets_for(cp):
  sets = []
  for i in range(SETS):
    shared = jnp.asarray(RNG.normal(size=(B, Q, 16)), jnp.float32)
    sets.append({"shared": shared, "embedding": cp.class_embedding(shared, i), "index": i,
                 "pred_masks": jnp.asarray(RNG.normal(size=(B, Q, 8, 8)), jnp.float32)})
  return sets


def test_region_dropout_ignores_only_matched_queries_with_the_rate():
  rng = jax.random.PRNGKey(3)
  got = np.asarray(gkc.region_dropout(rng, jnp.asarray(MATCH), jnp.asarray(VALID), Q, 0.5))
  u = np.asarray(jax.random.uniform(rng, (B, Q)))  # the same draws, then the rule by hand
  want = np.zeros((B, Q), bool)
  for b in range(B):
    for t in range(T):
      if VALID[b, t] and MATCH[b, t] >= 0:
        want[b, MATCH[b, t]] = u[b, MATCH[b, t]] < 0.5
  np.testing.assert_array_equal(got, want)
  # Over many images about half of the matched queries are dropped, never an unmatched one.
  many = np.asarray(gkc.region_dropout(jax.random.PRNGKey(0), jnp.tile(jnp.asarray(MATCH), (500, 1)),
                                       jnp.tile(jnp.asarray(VALID), (500, 1)), Q, 0.5))
  assert 0.45 < many.sum() / (500 * VALID.sum()) < 0.55
  assert not many[2::3].any()


def test_class_ce_with_region_dropout_equals_torch():
  cp = class_path()
  sets = sets_for(cp)
  text = unit(RNG.normal(size=(4, E)))
  dropped = [np.asarray(gkc.region_dropout(jax.random.PRNGKey(i), jnp.asarray(MATCH),
                                           jnp.asarray(VALID), Q, 0.5)) for i in range(SETS)]
  for s in sets:
    s["pred_logits"] = cp.logits(s["embedding"], jnp.asarray(text, jnp.float32))
  targets = {"labels": jnp.asarray(LABELS), "valid": jnp.asarray(VALID),
             "masks": jnp.asarray(RNG.random((B, T, 16, 16)) > 0.5)}
  cfg = MaskLossConfig(2.0, 5.0, 5.0, 0.1, 64, 3.0, 0.75)
  _, terms = mask_classification_loss(jax.random.PRNGKey(0), sets, targets, config=cfg,
                                      matches=[jnp.asarray(MATCH)] * SETS,
                                      class_ignore=[jnp.asarray(d) for d in dropped])
  scale = float(np.exp(cp.logit_scale[...]))
  want = 0.0
  for s, d in zip(sets, dropped):
    emb = np.asarray(s["embedding"], np.float64)
    void = unit(np.asarray(cp.void_embedding[...], np.float64))
    logits = scale * emb @ np.concatenate([text, void]).T
    tgt = np.full((B, Q), 4)
    for b in range(B):
      for t in range(T):
        if VALID[b, t]:
          tgt[b, MATCH[b, t]] = LABELS[b, t]
    want += torch_ce(logits.reshape(-1, 5), tgt.reshape(-1), 0.1, d.reshape(-1))
  np.testing.assert_allclose(float(terms["loss_ce"]), want, rtol=1e-5)


# The synonym test's batch: rows' strings (row 7 repeats row 4's "sea" under another class).
NAMES = ["person", "human", "man", "car", "sea", "ocean", "sky", "sea"]
S_LABELS = np.array([[2, 0, 2, 1, 3, 3], [0, 3, 0, 0, 0, 0], [0] * 6], np.int32)
S_VALID = np.array([[1] * 6, [1, 1, 0, 0, 0, 0], [0] * 6], bool)
S_MATCH = np.array([[5, 0, 3, 6, 1, 2], [2, 4, -1, -1, -1, -1], [-1] * 6], np.int32)
# Image 0: class 2 draws "ocean" (in place) then "sea" (appended), class 3 "sky" (in place) then
# "sea" (found among the appended names: class 2's column); image 1 starts afresh: class 0 "man"
# and class 3 "sea" both in place.
S_ROWS = np.array([[5, 1, 4, 3, 6, 7], [2, 7, 0, 0, 0, 0], [0] * 6], np.int32)


def release_synonym_classifiers(rows):
  """The release's per-image rule (KD mapper 225-285, written again here): a string list that
  starts from the class names; per segment, a draw equal to its class's current name stays in
  place, the class's first draw renames it, any other is looked up among the appended names
  (KD mapper 267-270, by string) and appended when new. -> per image (names, targets)."""
  out = []
  for b in range(len(rows)):
    cls_name = [NAMES[INDEX[c, 0]] for c in range(len(INDEX))]
    changed = [False] * len(INDEX)
    targets = []
    for t in range(rows.shape[1]):
      if not S_VALID[b, t]:
        continue
      c, new = S_LABELS[b, t], NAMES[rows[b, t]]
      new_id = c
      if cls_name[c] == new:
        changed[c] = True
      elif not changed[c]:
        cls_name[c], changed[c] = new, True
      else:
        found = [k for k in range(len(INDEX), len(cls_name)) if cls_name[k] == new]
        if found:
          new_id = found[-1]
        else:
          cls_name.append(new)
          new_id = len(cls_name) - 1
      targets.append(new_id)
    out.append((cls_name, targets))
  return out


def name_table():
  """Text rows for NAMES (equal strings, equal embeddings), the pad row, name_of_row."""
  text = unit(RNG.normal(size=(8, E)))
  text[7] = text[4]
  return text, unit(RNG.normal(size=E)), np.array([NAMES.index(n) for n in NAMES], np.int32)


def test_synonym_ce_per_image_equals_the_release_rule():
  """One classifier per image, padded to the group's largest with the zero-token embedding
  (model 436-447), void last with weight 0.1, region dropout as given (model 834-866), summed
  over sets; the reference is the release's string rule and torch's CE on the padded lists."""
  cp = class_path()
  sets = sets_for(cp)
  text, pad_text, name_of_row = name_table()
  dropped = [np.asarray(gkc.region_dropout(jax.random.PRNGKey(i), jnp.asarray(S_MATCH),
                                           jnp.asarray(S_VALID), Q, 0.5)) for i in range(SETS)]
  got = synonym_loss(cp, sets, [jnp.asarray(S_MATCH)] * SETS, [jnp.asarray(d) for d in dropped],
                     jnp.asarray(S_LABELS), jnp.asarray(S_VALID), jnp.asarray(S_ROWS),
                     jnp.asarray(text, jnp.float32), jnp.asarray(name_of_row), jnp.asarray(INDEX),
                     jnp.asarray(pad_text, jnp.float32), B, 0.1)
  ref = release_synonym_classifiers(S_ROWS)
  assert [r[0][4:] for r in ref] == [["sea"], [], []]
  assert ref[0][1] == [2, 0, 4, 1, 3, 4] and ref[1][0][:4] == ["man", "car", "sea", "sea"]
  width = max(len(names) for names, _ in ref)
  scale = float(np.exp(cp.logit_scale[...]))
  void = unit(np.asarray(cp.void_embedding[...], np.float64))
  want = 0.0
  for s, d in zip(sets, dropped):
    emb = np.asarray(s["embedding"], np.float64)
    logits, tgt = [], np.full((B, Q), width)
    for b, (names, targets) in enumerate(ref):
      columns = [text[NAMES.index(n)] for n in names] + [pad_text] * (width - len(names))
      logits.append(scale * emb[b] @ np.concatenate([np.stack(columns), void]).T)
      for t, target in zip(np.flatnonzero(S_VALID[b]), targets):
        tgt[b, S_MATCH[b, t]] = target
    want += torch_ce(np.concatenate(logits), tgt.reshape(-1), 0.1, d.reshape(-1))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_synonym_padding_follows_the_device_group():
  text, _, name_of_row = name_table()
  for group, pads in ((3, [0, 1, 1]), (1, [0, 0, 0])):
    _, used, pad, _ = synonym_classes(jnp.asarray(S_LABELS), jnp.asarray(S_VALID),
                                      jnp.asarray(S_ROWS), jnp.asarray(name_of_row),
                                      jnp.asarray(INDEX), group)
    assert np.asarray(pad).sum(1).tolist() == pads
    assert np.asarray(used)[:, 4:].sum(1).tolist() == [1, 0, 0]


def test_drawn_synonyms_are_uniform_over_each_class():
  labels = jnp.asarray(np.tile([[0, 1, 2]], (4000, 1)))
  rows = np.asarray(draw_synonyms(jax.random.PRNGKey(0), labels, jnp.asarray(INDEX)))
  assert set(rows[:, 1]) == {3} and set(rows[:, 2]) <= {4, 5}
  np.testing.assert_allclose(np.bincount(rows[:, 0], minlength=3) / 4000, [1 / 3] * 3, atol=0.03)


def test_drawn_synonyms_follow_the_segment_filter():
  """Bit k of a target's filter bits = synonym k of its class may be drawn (uniform among the
  kept ones); all bits (-1, a segment the filter file does not list) = every synonym; bits that
  keep none of the class's synonyms (padding slots: 0) fall back to every synonym."""
  n = 4000
  labels = jnp.asarray(np.tile([[0, 0, 2, 0, 2]], (n, 1)))
  bits = jnp.asarray(np.tile([[0b101, 0b010, -1, 0, 0b100]], (n, 1)), jnp.int32)
  rows = np.asarray(draw_synonyms(jax.random.PRNGKey(3), labels, jnp.asarray(INDEX), bits))
  assert set(rows[:, 0]) == {0, 2} and abs((rows[:, 0] == 0).mean() - 0.5) < 0.03
  assert set(rows[:, 1]) == {1}
  assert set(rows[:, 2]) == {4, 5} and set(rows[:, 3]) == {0, 1, 2}
  assert set(rows[:, 4]) == {4, 5}  # bit 2 is past class 2's two synonyms: none kept


def test_choose_crops_draws_at_most_200_per_device_group():
  """The release keeps every crop of a GPU's batch up to KD.MAX_LIST_LEN, then a random subset
  (model 592-599): crops of a group's images only, uniform, never a padding slot."""
  counts = np.zeros((B, T))
  for seed in range(300):
    image, slot, ok = map(np.asarray, choose_crops(jax.random.PRNGKey(seed), jnp.asarray(VALID),
                                                   3, 3))
    assert image.shape == slot.shape == ok.shape == (1, 3) and ok.all()
    assert VALID[image[ok], slot[ok]].all() and len(set(zip(image[0], slot[0]))) == 3
    counts[image[ok], slot[ok]] += 1
  np.testing.assert_allclose(counts[VALID] / 300, [3 / 5] * 5, atol=0.08)
  image, slot, ok = map(np.asarray, choose_crops(jax.random.PRNGKey(0), jnp.asarray(VALID), 1, 200))
  assert image.shape == (3, 4) and ok.sum(1).tolist() == [4, 1, 0]  # all of them, per image
  assert (image == np.arange(3)[:, None]).all()  # an image's crops stay in its group


def test_text_guided_kd_equals_the_release_loss():
  """loss_text_kd (model 925-952) written again: per image the (s t_i . s t_j - v_i . c_j)^2 of
  every pair of its crops, the plain ||v_i - c_i||^2 of each, one mean per device (group), the
  mean over devices; every set's queries matched to the same crops (indice2main, 642)."""
  cp, kdp = class_path(), kd_path()
  sets = sets_for(cp)
  image, slot, ok = map(np.asarray, choose_crops(jax.random.PRNGKey(1), jnp.asarray(VALID), 1, 3))
  ok = ok.copy()
  ok[0, 1] = False  # a segment the teacher view lost (scaled away): left out
  teacher = unit(RNG.normal(size=(*image.shape, E)))
  names = unit(RNG.normal(size=(*image.shape, E)))
  s = 1.3
  got = text_guided_kd_loss(kdp, sets, [jnp.asarray(MATCH)] * SETS, jnp.asarray(image),
                            jnp.asarray(slot), jnp.asarray(ok), jnp.asarray(teacher, jnp.float32),
                            jnp.asarray(names, jnp.float32), s)
  want = 0.0
  for i, st in enumerate(sets):
    shared = np.asarray(st["shared"], np.float64)
    kernel = np.asarray(kdp.proj[i].kernel[...], np.float64)
    bias = np.asarray(kdp.proj[i].bias[...], np.float64)
    device_means = []
    for g in range(image.shape[0]):
      crops = [k for k in range(image.shape[1]) if ok[g, k]]
      v = {k: unit(shared[image[g, k], MATCH[image[g, k], slot[g, k]]] @ kernel + bias)
           for k in crops}
      terms = [np.sum((v[k] - teacher[g, k]) ** 2) for k in crops]
      for b in sorted({image[g, k] for k in crops}):
        mine = [k for k in crops if image[g, k] == b]
        terms += [(s * names[g, a] @ (s * names[g, c]) - v[a] @ teacher[g, c]) ** 2
                  for a in mine for c in mine]
      device_means.append(np.mean(terms) if terms else 0.0)
    want += np.mean(device_means)
  assert ok.sum() == 3
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def pil_crop(image, mask, size):
  """The reference: grey 128 outside the mask, bounding-box crop, bicubic resize (PIL, float)."""
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  box = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
  filled = np.where(mask[..., None], image, 128.0).astype(np.float32)
  return np.stack([np.asarray(Image.fromarray(filled[..., ch], mode="F").crop(box).resize(
      (size, size), Image.BICUBIC)) for ch in range(3)], -1)


@pytest.mark.parametrize("box", [(3, 5, 40, 60), (10, 10, 14, 13), (0, 0, 50, 70), (20, 30, 21, 31),
                                 (0, 40, 50, 70)])
def test_segment_crop_equals_pil(box):
  image = RNG.integers(0, 256, (50, 70, 3)).astype(np.float32)
  y0, x0, y1, x1 = box
  mask = np.zeros((50, 70), bool)
  mask[y0:y1, x0:x1] = RNG.random((y1 - y0, x1 - x0)) > 0.3
  mask[y0, x0] = mask[y1 - 1, x1 - 1] = True
  for size in (32, 24):  # shrinking (antialiased) and enlarging
    got = jax.jit(segment_crop, static_argnums=2)(image, mask, size)
    np.testing.assert_allclose(np.asarray(got), pil_crop(image, mask, size), atol=1e-3)


def release_crop(image, mask, size):
  """The release's crop (KD mapper 313-324): grey 128 outside the mask, `crop([w_min, h_min,
  w_max, h_max])` (PIL: right and lower edges excluded), bicubic resize (float, no rounding)."""
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  box = (cols[0], rows[0], cols[-1], rows[-1])
  filled = np.where(mask[..., None], image, 128.0).astype(np.float32)
  return np.stack([np.asarray(Image.fromarray(filled[..., ch], mode="F").crop(box).resize(
      (size, size), Image.BICUBIC)) for ch in range(3)], -1)


def test_teacher_crops_come_from_the_view_by_segment_value():
  """Crops cut from the uint8 teacher view: crop (g, k) is the region of its image's segment map
  equal to its value, cut as the release cuts it, CLIP-normalised (KD mapper 377-382); a value
  absent from the view is reported so."""
  view = RNG.integers(0, 256, (2, 40, 48, 3)).astype(np.uint8)
  segments = np.zeros((2, 40, 48), np.int32)
  segments[0, 5:20, 10:30] = 3
  segments[0, 25:, :] = 1
  segments[1, 30:, :7] = 2
  image = np.array([[0, 0, 1, 1]], np.int32)
  values = np.array([[3, 1, 2, 5]], np.int32)
  crops, present = teacher_crops(jnp.asarray(view), jnp.asarray(segments), jnp.asarray(image),
                                 jnp.asarray(values), 16, chunk=3)
  assert np.asarray(present).tolist() == [[True, True, True, False]]
  for k in range(3):
    mask = segments[image[0, k]] == values[0, k]
    want = (release_crop(view[image[0, k]].astype(np.float32), mask, 16) / 255 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(np.asarray(crops[0, k]), want, atol=1e-3)
  assert np.isfinite(np.asarray(crops[0, 3])).all()
  # One group per image (a device each): the same crops, each group reading its own image.
  per_image, present2 = teacher_crops(jnp.asarray(view), jnp.asarray(segments),
                                      jnp.asarray(image.reshape(2, 2)), jnp.asarray(values.reshape(2, 2)),
                                      16, chunk=1)
  np.testing.assert_allclose(np.asarray(per_image).reshape(4, 16, 16, 3)[:3],
                             np.asarray(crops)[0, :3], atol=1e-5)
  assert np.asarray(present2).reshape(-1).tolist() == [True, True, True, False]


def test_teacher_view_keeps_the_unaugmented_image_and_segments():
  """TeacherView runs before augmentation: the original image and segment map at the top left of
  a fixed canvas (scaled only when larger), so the loss's crops equal crops of the original."""
  from input_pipeline.teacher_view import TeacherView
  image = RNG.integers(0, 256, (30, 50, 3)).astype(np.uint8)
  pan = RNG.integers(0, 4, (30, 50)).astype(np.int32)
  out = TeacherView(64).map({"image": image, "pan_seg": pan, "label": np.zeros((30, 50), np.uint8)})
  assert out["teacher_image"].shape == (64, 64, 3) and out["teacher_image"].dtype == np.uint8
  np.testing.assert_array_equal(out["teacher_image"][:30, :50], image)
  assert (out["teacher_image"][30:] == 128).all() and (out["teacher_segments"][:, 50:] == 0).all()
  np.testing.assert_array_equal(out["teacher_segments"][:30, :50], pan)
  label = RNG.integers(0, 5, (100, 60)).astype(np.uint8)
  small = TeacherView(50, ignore_label=255).map({"image": np.zeros((100, 60, 3), np.uint8),
                                                 "label": label})
  assert (small["teacher_segments"][:, 30:] == 255).all()  # 100x60 -> 50x30, ignore around it
  rows, cols = (np.arange(50) + 0.5) * 2, (np.arange(30) + 0.5) * 2  # nearest, pixel centres
  np.testing.assert_array_equal(small["teacher_segments"][:, :30],
                                label[rows.astype(int)[:, None], cols.astype(int)[None]])


@pytest.mark.parametrize("recipe", ["gkc_vitb", "gkc_r50"])
def test_inference_parameters_hold_no_clip_head_text_tower_or_teacher(recipe):
  config = recipe_config(f"configs/{recipe}.py", "demo")
  config.clip.weights = "random"
  config.model.update(num_queries=4, hidden_dim=32, enc_ffn_dim=32, dec_layers=1, dec_ffn_dim=32,
                      num_heads=2, deform_points=1)
  model = gkc.METHOD.build_model(config)
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  seg = gkc.METHOD.segmentation_model(graphdef, (params, frozen), config, [["sky"], ["grass", "lawn"]],
                                      templates=())
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(seg.params[0])]
  for banned in ("teacher", "clip", "text_model", "text_projection", "post_layernorm",
                 "visual_projection", "attnpool", "kd_proj", "kd_scale"):
    assert not [p for p in paths if banned in p], banned
  assert any(p.startswith("tower/") for p in paths) and any("class_proj" in p for p in paths)
  # Inference holds the student trunk and the heads; the frozen teacher (a whole CLIP image
  # encoder), the text tower and the distillation projections stay in the training model.
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  student = nnx.state(model.clip.image_tower)
  head = (student["post_layernorm"] if "post_layernorm" in student else student["attnpool"])
  assert size(seg.params[0]) == (size(student) - size(head) + size(nnx.state(model.head))
                                 + size(nnx.state(model.class_path)) + size(nnx.state(model.pyramid)))
  scores = seg.apply(seg.params, jnp.zeros((1, 64, 64, 3)), jnp.ones((1, 64, 64), bool))
  assert scores.shape == (1, 64, 64, 2) and np.isfinite(np.asarray(scores)).all()
  # The release's test vocabulary (VOCA_MULTINAME=False): one name per class, said in the name.
  assert seg.params[1].shape[0] == 2 and seg.name == "gkc [one name per class]"
  config.model.test_names = "all"
  multi = gkc.METHOD.segmentation_model(graphdef, (params, frozen), config,
                                        [["sky"], ["grass", "lawn"]], templates=())
  assert multi.params[1].shape[0] == 3 and multi.name == "gkc [max over names]"
  # The training model still has its CLIP head (the inference copy was stripped, not the model).
  assert model.clip.image_tower is not None and size(nnx.state(model.teacher)) > 0


def test_pyramid_blocks_are_checked():
  config = recipe_config("configs/gkc_vitb.py", "demo")
  config.clip.weights = "random"
  config.model.pyramid_blocks = (1, 2, 3, 9)
  with pytest.raises(ValueError, match=r"pyramid_blocks=\(1, 2, 3, 9\): expected 4 increasing block "
                                       r"numbers in 1..4"):
    nnx.eval_shape(lambda: gkc.METHOD.build_model(config))


TINY = {"clip.weights": "random", "model.num_queries": 8, "model.hidden_dim": 32,
        "model.enc_layers": 1, "model.enc_ffn_dim": 64, "model.dec_layers": 1,
        "model.dec_ffn_dim": 64, "model.num_heads": 2, "model.deform_points": 1,
        "loss.num_points": 256, "loss.kd_crop_size": 32,
        "data.crop_size": 64, "data.num_masks": 6, "evals.val.every": -1,
        "evals.pictures.every": -1, "train.batch_size": 8, "train.log_every": 1}


def _train(workdir, *extra):
  import subprocess
  import sys
  return [sys.executable, "-m", "ovs_jax.train", "--config=configs/gkc_vitb.py:demo",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in TINY.items()),
          "--config.train.steps=6", "--config.train.ckpt_every=3", *extra]


@pytest.mark.slow
def test_sigkill_then_restart_continues_with_identical_losses(tmp_path):
  """The shared trainer's resume, with GKC's rng-driven terms (synonym draws, region dropout,
  crop choice): a run killed after its step-3 checkpoint continues with bit-identical losses."""
  import json
  import os
  import signal
  import subprocess
  import time
  from pathlib import Path
  repo = Path(__file__).resolve().parents[1]
  full = subprocess.run(_train(tmp_path / "full"), cwd=repo, capture_output=True, text=True)
  assert full.returncode == 0, full.stderr[-3000:]
  proc = subprocess.Popen(_train(tmp_path / "killed"), cwd=repo, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (tmp_path / "killed" / "checkpoints" / "3").is_dir() and time.time() < deadline:
    time.sleep(0.2)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  again = subprocess.run(_train(tmp_path / "killed"), cwd=repo, capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from" in again.stderr + again.stdout

  def losses(workdir):
    rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: (r["loss"], r["loss_synonym"], r["loss_kd"]) for r in rows
            if r["kind"] == "train"}
  want, got = losses(tmp_path / "full"), losses(tmp_path / "killed")
  assert set(want) == set(range(1, 7))
  for s in range(4, 7):
    assert got[s] == want[s], (s, got[s], want[s])


def release_grounding(words, word_mask, regions, region_mask, temperature):
  """GroundingHead.forward (release loss.py 93-441) with clip_cosine, aligned_local, softmax,
  cross_entropy and both directions, written again with loops over (caption i, image j)."""
  n = len(words)
  norm = lambda x: x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-7)
  sims = {(i, j): norm(words[i]) @ norm(regions[j]).T for i in range(n) for j in range(n)}
  low = min(s.min() for s in sims.values()) * temperature - 100.0
  cost = {"w2r": np.zeros((n, n)), "r2w": np.zeros((n, n))}
  for (i, j), s in sims.items():
    dist = temperature * (1 - s)
    masked = np.where(word_mask[i][:, None] & region_mask[j][None, :], temperature * s, low)
    w2r = np.exp(masked - masked.max(1, keepdims=True))
    w2r = w2r / w2r.sum(1, keepdims=True) * word_mask[i][:, None]
    r2w = np.exp(masked - masked.max(0, keepdims=True))
    r2w = r2w / r2w.sum(0, keepdims=True) * region_mask[j][None, :]
    cost["w2r"][i, j] = (w2r * dist).sum() / max(word_mask[i].sum(), 1)
    cost["r2w"][i, j] = (r2w * dist).sum() / max(region_mask[j].sum(), 1)
  terms = []
  for c in cost.values():
    both_empty = np.array([[word_mask[i].sum() == 0 and region_mask[j].sum() == 0
                            for j in range(n)] for i in range(n)])
    c = np.where(both_empty, c.max() + 100.0, c)
    log_sm = lambda x, axis: x - np.log(np.exp(x - x.max(axis, keepdims=True)).sum(
        axis, keepdims=True)) - x.max(axis, keepdims=True)
    terms += [-np.diag(log_sm(-c, 0)).mean(), -np.diag(log_sm(-c, 1)).mean()]
  return np.mean(terms)


def test_caption_grounding_equals_the_release_head():
  """4 images: image 2 has no matched region, image 3 no noun (both still in the CEs, as the
  release keeps them); padded regions are zero vectors, as the release pads them."""
  regions = RNG.normal(size=(4, 3, E))
  words = RNG.normal(size=(4, 2, E))
  region_valid = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], bool)
  word_valid = np.array([[1, 1], [1, 0], [1, 1], [0, 0]], bool)
  regions[~region_valid] = 0.0
  words[~word_valid] = 0.0
  got = grounding_loss(jnp.asarray(words, jnp.float32), jnp.asarray(word_valid),
                       jnp.asarray(regions, jnp.float32), jnp.asarray(region_valid), 5.0)
  want = release_grounding(words, word_valid, regions, region_valid, 5.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  grads = jax.grad(lambda r: grounding_loss(jnp.asarray(words, jnp.float32), jnp.asarray(word_valid),
                                            r, jnp.asarray(region_valid), 5.0))(
      jnp.asarray(regions, jnp.float32))
  assert np.isfinite(np.asarray(grads)).all()


def test_caption_grounding_takes_25_random_matched_queries_per_device_and_every_set():
  cp = class_path()
  sets = sets_for(cp)
  words = RNG.normal(size=(B, 2, E)).astype(np.float32)
  word_valid = np.array([[1, 1], [1, 0], [1, 1]], bool)
  rng = jax.random.PRNGKey(5)
  got = caption_grounding_loss(rng, sets, [jnp.asarray(MATCH)] * SETS, jnp.asarray(VALID),
                               jnp.asarray(words), jnp.asarray(word_valid), 4.0, 1)
  got3 = caption_grounding_loss(rng, sets, [jnp.asarray(MATCH)] * SETS, jnp.asarray(VALID),
                                jnp.asarray(words), jnp.asarray(word_valid), 4.0, 3)
  want = want3 = 0.0
  for r, s in zip(jax.random.split(rng, SETS), sets):
    query, ok = map(np.asarray, choose_regions(r, jnp.asarray(MATCH), jnp.asarray(VALID)))
    assert sorted(query[0][ok[0]]) == sorted(MATCH[0]) and ok.sum(1).tolist() == [4, 1, 0]
    emb = np.asarray(s["embedding"], np.float64)
    regions = np.where(ok[..., None], emb[np.arange(B)[:, None], np.maximum(query, 0)], 0.0)
    want += np.mean([release_grounding(words[b:b + 1], word_valid[b:b + 1], regions[b:b + 1],
                                       ok[b:b + 1], 4.0) for b in range(B)])
    want3 += release_grounding(words, word_valid, regions, ok, 4.0)
  np.testing.assert_allclose([float(got), float(got3)], [want, want3], rtol=1e-5)
  many = np.tile(np.arange(30), (1, 1)).astype(np.int32)
  query, ok = choose_regions(jax.random.PRNGKey(0), jnp.asarray(many), jnp.ones((1, 30), bool))
  assert np.asarray(ok).sum() == 25 and len(set(np.asarray(query)[0])) == 25


def test_noun_draw_follows_the_release_mapper():
  """KD mapper 342-351: each noun kept when its draw exceeds 0.25, all kept if none is, then 5
  sampled at random; one caption per example, its nouns tagged, cleaned and tokenized."""
  from input_pipeline.caption_nouns import DrawCaptionNouns, draw_nouns
  nouns = [f"n{i}" for i in range(7)]
  for seed in range(20):
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(seed).random(7)
    kept = [n for n, p in zip(nouns, u) if p > 0.25] if (u > 0.25).any() else nouns
    got = draw_nouns(nouns, rng)
    assert set(got) <= set(kept) and len(got) == min(5, len(kept)) and len(set(got)) == len(got)
  always = draw_nouns(["a"], np.random.default_rng(0), drop=1.0)  # every draw <= drop: all kept
  assert always == ["a"]
  firsts = {tuple(draw_nouns(nouns, np.random.default_rng(s), drop=0.0)) for s in range(30)}
  assert len(firsts) > 20  # a random sample of 5, not the first 5
  from ovs_jax import tokenizer
  out = DrawCaptionNouns().random_map(
      {"captions": ["A fire-hydrant on the sidewalk."]}, np.random.default_rng(1))["caption_nouns"]
  rows = [r for r in out if r.any()]
  assert out.shape == (5, 16) and 1 <= len(rows) <= 2
  assert all(any((r == t).all() for t in tokenizer.tokenize(["fire hydrant", "sidewalk"], 16))
             for r in rows)
  empty = DrawCaptionNouns().random_map({"captions": []}, np.random.default_rng(0))
  assert not empty["caption_nouns"].any()


def test_caption_tagger_agrees_with_hand_checked_nouns():
  """The tagger in use (NLTK's perceptron when installed, else TextBlob's bundled one) against
  nouns checked by hand on 40 COCO-style captions; docs/gkc.md quotes the numbers."""
  import json
  from collections import Counter
  from pathlib import Path
  from input_pipeline.caption_tagging import caption_nouns
  data = json.loads((Path(__file__).parent / "data" / "gkc_captions" / "caption_nouns.json").read_text())
  tp = fp = fn = 0
  for caption, want in data["captions"]:
    got, want = Counter(caption_nouns(caption)), Counter(want)
    tp, fp, fn = tp + sum((got & want).values()), fp + sum((got - want).values()), fn + sum((want - got).values())
  assert tp / (tp + fp) > 0.95 and tp / (tp + fn) > 0.93, (tp, fp, fn)


def test_pixels_are_renormalised_to_the_release_statistics():
  """The loader's CLIP-normalised pixels become the release's (x - PIXEL_MEAN) / PIXEL_STD on
  0-255 (Base-COCO yaml 6-7); padding 0 at test time (ImageList), 128 grey normalised in
  training (FixedSizeCrop pad_value)."""
  from ovs_jax.methods import gkc_pixels
  raw = RNG.integers(0, 256, (2, 6, 7, 3)).astype(np.float32)
  valid = np.zeros((2, 6, 7), bool)
  valid[0, :5, :7] = valid[1, :6, :3] = True
  clip = np.where(valid[..., None], (raw / 255 - CLIP_MEAN) / CLIP_STD, 0.0).astype(np.float32)
  mean = np.array([123.675, 116.280, 103.530])
  std = np.array([58.395, 57.120, 57.375])
  got = gkc_pixels.renormalize(jnp.asarray(clip), jnp.asarray(valid), "imagenet")
  np.testing.assert_allclose(np.asarray(got), np.where(valid[..., None], (raw - mean) / std, 0.0),
                             atol=1e-4)
  got = gkc_pixels.renormalize(jnp.asarray(clip), jnp.asarray(valid), "imagenet", 128.0)
  np.testing.assert_allclose(np.asarray(got), np.where(valid[..., None], (raw - mean) / std,
                                                       (128 - mean) / std), atol=1e-4)
  hw = gkc_pixels.valid_from_hw(jnp.asarray([[5, 7], [6, 3]]), (2, 6, 7))
  np.testing.assert_array_equal(np.asarray(hw), valid)
  full = recipe_config("configs/gkc_r50.py")
  assert full.model.pixel_stats == "imagenet" and full.model.test_names == "first"
  assert (full.evals.val.short_side, full.evals.val.max_size) == (800, 1333)
