"""Transforms keep image and maps aligned, respect the ignore label, and build exact mask targets."""
import numpy as np
import pytest

from input_pipeline import loader, targets, transforms as T
from input_pipeline.source import DatasetMeta


def _record(h=20, w=30, seed=0):
  """Label in blocks of 5 px; the image's channels encode the label (for alignment checks)."""
  rng = np.random.default_rng(seed)
  label = np.kron(rng.integers(0, 6, (h // 5, w // 5)), np.ones((5, 5), np.int64)).astype(np.uint8)
  label[0, 0] = 255
  image = np.stack([label * 7, label, 255 - label], -1)
  return {"image": image, "label": label, "file_name": "x.png"}


def test_crop_flip_pad_keep_alignment():
  el = _record()
  rng = np.random.default_rng(1)
  for _ in range(10):
    out = T.RandomCrop((16, 16)).random_map(el, rng)
    out = T.RandomHorizontalFlip(0.5).random_map(out, rng)
    out = T.PadToSize((24, 24), 255).map(out)
    h, w = out["image_hw"]
    assert (h, w) == (16, 16) and out["image"].shape == (24, 24, 3)
    np.testing.assert_array_equal(out["image"][:h, :w, 1], out["label"][:h, :w])
    assert (out["label"][h:] == 255).all() and (out["label"][:, w:] == 255).all()
    assert (out["image"][h:] == 0).all()


def test_resize_nearest_and_scale_range():
  el = _record(20, 30)
  out = T.resize(el, (40, 60))  # exact 2x: nearest replicates every pixel
  np.testing.assert_array_equal(out["label"], el["label"].repeat(2, 0).repeat(2, 1))
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = T.RandomResize((100, 100), (0.5, 2.0)).random_map(el, rng)
    h, w = out["label"].shape
    assert out["image"].shape[:2] == (h, w) and 50 * 20 / 30 - 1 <= h <= 200 * 20 / 30 + 1
    assert abs(w / h - 1.5) < 0.1
    assert set(np.unique(out["label"])) <= set(np.unique(el["label"]))  # no interpolated ids
  out = T.ResizeShortestEdge(10, max_size=12).random_map(el, rng)
  assert out["image"].shape[:2] == (8, 12)


def test_category_area_cap():
  label = np.zeros((40, 40), np.uint8)
  label[:16, :16] = 1  # class 0 dominates most 16x16 crops
  el = {"image": np.zeros((40, 40, 3), np.uint8), "label": label}
  rng = np.random.default_rng(0)
  ratios = []
  for _ in range(100):
    lab = T.RandomCrop((16, 16), cat_max_ratio=0.75, tries=10).random_map(el, rng)["label"]
    ratios.append(np.bincount(lab.ravel(), minlength=2).max() / lab.size)
  unconstrained = [np.bincount(T.RandomCrop((16, 16)).random_map(el, rng)["label"].ravel()).max() / 256
                   for _ in range(100)]
  ok, ok_unconstrained = np.mean(np.array(ratios) < 0.75), np.mean(np.array(unconstrained) < 0.75)
  assert ok > 0.3 and ok > 2 * ok_unconstrained


def test_normalize_matches_formula():
  el = _record()
  out = T.Normalize().map(el)
  want = (el["image"] / 255.0 - np.array(T.CLIP_MEAN)) / np.array(T.CLIP_STD)
  assert out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"], want, atol=1e-5)


def test_semantic_to_masks():
  el = _record(20, 30, seed=3)
  out = targets.SemanticToMasks(8, 255).map(el)
  valid, classes, masks = out["mask_valid"], out["mask_classes"], out["masks"]
  present = np.unique(el["label"][el["label"] != 255])
  assert masks.shape == (8, 20, 30) and masks.dtype == bool
  np.testing.assert_array_equal(classes[valid], present)
  assert (classes[~valid] == -1).all() and not masks[~valid].any()
  rebuilt = np.where(masks.any(0), (masks * classes[:, None, None]).sum(0), 255)
  np.testing.assert_array_equal(rebuilt, el["label"])  # masks partition the labelled pixels
  # Cap: keep the N largest, in class order; ids-only mode agrees.
  capped = targets.SemanticToMasks(2, 255).map(el)
  areas = {c: (el["label"] == c).sum() for c in present}
  assert list(capped["mask_classes"]) == sorted(sorted(present, key=lambda c: -areas[c])[:2])
  ids_only = targets.SemanticToMasks(8, 255, with_masks=False).map(el)
  assert "masks" not in ids_only and (ids_only["mask_classes"] == classes).all()


def test_panoptic_to_masks():
  pan = np.array([[0, 1, 1, 2], [3, 3, 2, 2]], np.int32)
  el = {"image": np.zeros((2, 4, 3), np.uint8), "pan_seg": pan,
        "label": np.array([[255, 7, 7, 9], [4, 4, 9, 9]], np.uint8),
        "segment_classes": np.array([7, 9, 4], np.int32),
        "segment_iscrowd": np.array([False, False, True])}
  out = targets.PanopticToMasks(4, 255).map(el)
  assert out["mask_classes"].tolist() == [7, 9, -1, -1] and out["mask_ids"].tolist() == [1, 2, 0, 0]
  np.testing.assert_array_equal(out["masks"][1], pan == 2)
  assert (out["label"][1, :2] == 255).all()  # crowd pixels ignored
  assert "segment_classes" not in out and "segment_iscrowd" not in out


def test_pipelines_output_fixed_shapes():
  class Src:
    meta = DatasetMeta("x", "train", "demo", 10)
    ignore_label = 255
  ops = loader.train_transforms(Src, crop_size=(16, 16), num_masks=5)
  rng = np.random.default_rng(0)
  for seed in range(5):
    el = _record(20 + 5 * seed, 30, seed)
    for op in ops:
      el = op.random_map(el, rng) if hasattr(op, "random_map") else op.map(el)
    assert el["image"].shape == (16, 16, 3) and el["label"].shape == (16, 16)
    assert el["masks"].shape == (5, 16, 16) and "file_name" not in el


def test_pad_rejects_larger_images():
  with pytest.raises(ValueError, match="x.png: 20x30 image exceeds the pad size 16x16"):
    T.PadToSize((16, 16)).map(_record())
