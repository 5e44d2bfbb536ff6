"""MaskCLIP+ / MVP-SEG+: the pseudo-label rule and loss re-derived here from MaskCLIP's
`maskclip_plus_head.py` (assign_label :166-208, forward_train :300-357) and mmseg's CrossEntropyLoss
with torch; the transductive source, the batch index, the schedule check, the evaluator's setting."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jax.numpy as jnp
import ml_collections
from ovs_jax.methods.maskclip_plus import (IGNORE, UNLABELLED, BatchIndex, UnseenUnlabelled,
                                           check_schedule, cross_entropy_all_pixels, pseudo_labels)

SCHEDULE = ml_collections.ConfigDict(dict(start_teacher=1, end_teacher=4, start_self_train=5,
                                          end_self_train=-1))


def reference(label, scores, unseen):
  """maskclip_plus_head.assign_label on (B, H, W) labels with -1 for unlabelled pixels: the scores
  (B, U, h, w) resized bilinearly (align_corners=False) to the label size, argmax over U."""
  gt = torch.from_numpy(label.astype(np.int64))
  gt[gt == UNLABELLED] = -1
  out = F.interpolate(torch.from_numpy(scores).permute(0, 3, 1, 2), size=gt.shape[1:], mode="bilinear",
                      align_corners=False).permute(0, 2, 3, 1)
  idx = gt < 0
  gt[idx] = torch.from_numpy(unseen).long()[out[idx].argmax(dim=1)]
  return gt.numpy()


def _case(seed=0):
  rng = np.random.RandomState(seed)
  label = rng.choice([0, 1, 3, UNLABELLED, UNLABELLED, IGNORE], size=(2, 12, 10)).astype(np.int32)
  unseen = np.array([2, 4, 5], np.int32)
  teacher = rng.randn(2, 3, 5, 3).astype(np.float32)
  student = rng.randn(2, 3, 5, 3).astype(np.float32)
  return label, unseen, teacher, student


@pytest.mark.parametrize("step,source", [(1, "teacher"), (4, "teacher"), (5, "self"), (900, "self")])
def test_pseudo_labels_follow_maskclip_plus(step, source):
  label, unseen, teacher, student = _case()
  got = pseudo_labels(jnp.asarray(label), jnp.int32(step), jnp.asarray(unseen), lambda: jnp.asarray(teacher),
                      jnp.asarray(student), SCHEDULE)
  want = reference(label, teacher if source == "teacher" else student, unseen)
  np.testing.assert_array_equal(np.asarray(got), want)
  seen = (label != UNLABELLED)
  np.testing.assert_array_equal(np.asarray(got)[seen], label[seen])  # seen ground truth and 255 kept


def test_outside_both_windows_unlabelled_pixels_are_ignored():
  label, unseen, teacher, student = _case(1)
  sched = ml_collections.ConfigDict(dict(SCHEDULE, start_self_train=-1))
  got = np.asarray(pseudo_labels(jnp.asarray(label), jnp.int32(7), jnp.asarray(unseen),
                                 lambda: jnp.asarray(teacher), jnp.asarray(student), sched))
  np.testing.assert_array_equal(got, np.where(label == UNLABELLED, IGNORE, label))


def test_loss_is_mmseg_cross_entropy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 6, 7, 5).astype(np.float32)
  target = rng.choice([0, 1, 2, 3, 4, IGNORE], size=(2, 6, 7)).astype(np.int32)
  want = F.cross_entropy(torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(target).long(),
                         ignore_index=IGNORE, reduction="none").mean()  # mmseg: mean over every pixel
  got = cross_entropy_all_pixels(jnp.asarray(logits), jnp.asarray(target), 5)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_overlapping_windows_are_refused():
  check_schedule(SCHEDULE)
  with pytest.raises(ValueError, match="overlaps"):
    check_schedule(ml_collections.ConfigDict(dict(SCHEDULE, start_self_train=3)))
  with pytest.raises(ValueError, match="overlaps"):
    check_schedule(ml_collections.ConfigDict(dict(SCHEDULE, end_teacher=-1)))


class _Source:
  def __init__(self, labels):
    from input_pipeline.source import DatasetMeta
    self.labels = labels
    self.meta = DatasetMeta("toy", "train", "demo", 6)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": np.zeros((2, 2, 3), np.uint8), "label": self.labels[i]}


def test_unseen_pixels_become_unlabelled_ids_kept():
  lab = np.array([[0, 2], [5, 255]], np.uint8)
  src = UnseenUnlabelled(_Source([lab]), [2, 4])
  np.testing.assert_array_equal(src[0]["label"], [[0, UNLABELLED], [5, 255]])
  assert src.num_classes == 6


def test_batch_index_counts_from_one_and_resumes():
  class It:
    def __init__(self):
      self.i = 0

    def __next__(self):
      self.i += 1
      return {"image": np.zeros((2, 1))}

    def get_state(self):
      return {"i": self.i}

    def set_state(self, s):
      self.i = s["i"]
  b = BatchIndex(It())
  assert next(b)["step"].tolist() == [1, 1] and next(b)["step"].tolist() == [2, 2]
  state = b.get_state()
  c = BatchIndex(It())
  c.set_state(state)
  assert next(c)["step"].tolist() == [3, 3] and c.it.i == 3


def test_evaluator_names_and_checks_the_setting():
  from ovs_jax.evaluators.zero_shot import training_setting
  inductive = ml_collections.ConfigDict({"data": {"transductive": False}})
  transductive = ml_collections.ConfigDict({"data": {"transductive": True}})
  assert training_setting(inductive, "", "x") == "inductive"
  assert training_setting(transductive, "", "x") == "transductive"
  assert training_setting(ml_collections.ConfigDict({"data": {}}), "", "x") == "inductive"
  with pytest.raises(ValueError, match="refused: its training never saw the unseen"):
    training_setting(inductive, "transductive", "config.evals.zs.setting")
  with pytest.raises(ValueError, match="refused: its training saw"):
    training_setting(transductive, "inductive", "config.evals.zs.setting")


def test_sgd_with_mmseg_poly_matches_torch():
  """optim.optimizer='sgd' = torch.optim.SGD(momentum, weight_decay) under mmseg's poly policy
  lr = (lr0 - min_lr)(1 - t/T)^0.9 + min_lr (schedule_20k.py)."""
  import jax
  import optax
  from ovs_jax.optim import make_optimizer
  c = ml_collections.ConfigDict(dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
                                     schedule="poly", poly_power=0.9, min_lr=1e-4, warmup_steps=0,
                                     lr_multipliers=[], no_decay=r"$^", no_decay_1d=False, clip_norm=0.0))
  w0 = np.random.RandomState(0).randn(3, 4).astype(np.float32)
  params = {"conv": {"kernel": jnp.asarray(w0)}}
  opt = make_optimizer(c, 10, params)
  state = opt.init(params)
  tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  topt = torch.optim.SGD([tw], lr=0.01, momentum=0.9, weight_decay=5e-4)
  for t in range(10):
    g = np.random.RandomState(t + 1).randn(3, 4).astype(np.float32)
    updates, state = opt.update({"conv": {"kernel": jnp.asarray(g)}}, state, params)
    params = optax.apply_updates(params, updates)
    for group in topt.param_groups:
      group["lr"] = (0.01 - 1e-4) * (1 - t / 10) ** 0.9 + 1e-4
    tw.grad = torch.from_numpy(g)
    topt.step()
  np.testing.assert_allclose(np.asarray(params["conv"]["kernel"]), tw.detach().numpy(), atol=1e-6)


def test_mmseg_resize_and_photometric_distortion():
  import colorsys
  from input_pipeline.mmseg_pipeline import MMSegResize, PhotoMetricDistortion, _hsv_to_rgb, _rgb_to_hsv
  el = {"image": np.zeros((300, 500, 3), np.uint8), "label": np.zeros((300, 500), np.uint8)}
  for seed in range(5):
    rng = np.random.default_rng(seed)
    r = np.random.default_rng(seed).uniform(0.5, 2.0)
    out = MMSegResize((2048, 512), (0.5, 2.0)).random_map(el, rng)
    f = min(2048 * r / 500, 512 * r / 300)  # mmcv.imrescale: short side 512·r
    assert out["image"].shape[:2] == (int(300 * f + 0.5), int(500 * f + 0.5)) == out["label"].shape
  img = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
  hsv = _rgb_to_hsv(img)
  ref = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in img.reshape(-1, 3)]).reshape(16, 16, 3)
  np.testing.assert_allclose(hsv[..., 0], (ref[..., 0] * 180) % 180, atol=1e-3)  # OpenCV's H in [0, 180)
  np.testing.assert_allclose(hsv[..., 1:], ref[..., 1:] * 255, atol=1e-3)
  assert np.abs(_hsv_to_rgb(hsv).astype(int) - img).max() <= 1
  out = PhotoMetricDistortion().random_map({"image": img}, np.random.default_rng(3))["image"]
  assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)


@pytest.mark.slow  # ~40-55 s each on 2 loaded cores
@pytest.mark.parametrize("recipe", ["maskclip_plus_r101.py", "mvp_seg_plus_vitb16.py"])
def test_trains_and_evaluates_through_the_shared_contract(tmp_path, recipe):
  """The :demo recipes shrunk (random CLIP / untrained MVP-SEG teacher): the teacher window and
  self-training both run inside the jitted step, the evaluator reports the transductive setting, and
  the workdir restores into a SegmentationModel over any vocabulary."""
  from pathlib import Path

  from ovs_jax.config_utils import recipe_config
  from ovs_jax.inference.segmentation_model import build_from_checkpoint
  from ovs_jax.trainer import train_and_evaluate
  from trainer_helpers import apply_overrides
  config = recipe_config(Path(__file__).resolve().parents[1] / "configs" / recipe, "demo")
  overrides = {"clip.weights": "random", "data.crop_size": 64, "data.img_scale": (256, 64),
               "schedule.end_teacher": 1, "schedule.start_self_train": 2,
               "evals.zero_shot.short_side": 64, "evals.zero_shot.max_images": 4,
               "evals.zero_shot.every": 0, "evals.zero_shot.baseline": "", "evals.pictures.every": -1,
               "train.steps": 2, "train.ckpt_every": 2, "train.log_every": 1}
  if "checkpoint" in config.teacher:
    overrides["teacher.checkpoint"] = "random"
  result = train_and_evaluate(apply_overrides(config, overrides), tmp_path)
  zs = result["evals"]["zero_shot"]
  assert zs["setting"] == "transductive" and zs["num_images"] == 4 and "hIoU" in zs
  seg = build_from_checkpoint(tmp_path, [["sky"], ["grass", "lawn"]])
  assert seg.class_names == ["sky", "grass"]
