"""Confusion matrix in a jitted, 8-device sharded step and SemSegEvaluator metrics in both mIoU
conventions (MAFT+'s evaluator, current detectron2), against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ovs_jax import metrics
from ovs_jax.inference.engine import data_mesh


CONVENTIONS = ("maft_plus", "detectron2")


def numpy_metrics(labels, preds, num_classes, ignore, convention):
  """Independent re-derivation: per-class TP/FP/FN by boolean masks over all pixels.

  mIoU = Σ IoU over classes with ground truth ÷ (maft_plus) the number of classes with ground truth
  or a prediction on a labelled pixel, (detectron2) the number of classes with ground truth.
  """
  lab = np.concatenate([l.ravel() for l in labels]).astype(np.int64)
  pred = np.concatenate([p.ravel() for p in preds]).astype(np.int64)
  keep = lab != ignore
  lab, pred = lab[keep], pred[keep]
  iou, acc, gt, seen = [], [], [], []
  for c in range(num_classes):
    tp = np.sum((lab == c) & (pred == c))
    fn, fp = np.sum((lab == c) & (pred != c)), np.sum((lab != c) & (pred == c))
    gt.append(tp + fn)
    seen.append(tp + fn + fp > 0)
    iou.append(tp / (tp + fp + fn) if tp + fn else np.nan)
    acc.append(tp / (tp + fn) if tp + fn else np.nan)
  iou, acc, gt = np.array(iou), np.array(acc), np.array(gt)
  present = gt > 0
  n = np.sum(seen) if convention == "maft_plus" else np.sum(present)
  return {"mIoU": 100 * np.sum(iou[present]) / n, "mACC": 100 * acc[present].mean(),
          "fwIoU": 100 * np.sum(iou[present] * gt[present]) / gt.sum(),
          "pACC": 100 * np.sum(lab == pred) / len(lab), "IoU": 100 * iou}


@pytest.mark.parametrize("num_classes,ignore", [(2, 255), (150, 255), (847, 65535)])
def test_sharded_accumulated_confusion_matrix_matches_numpy(num_classes, ignore):
  mesh = data_mesh()
  assert mesh.size == 8
  sharded, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  @jax.jit
  def step(acc, pred, label):
    return metrics.add_counts(acc, metrics.confusion_matrix(pred, label, num_classes, ignore))

  rng = np.random.default_rng(num_classes)
  acc = jax.device_put(metrics.zero_counts(num_classes), rep)
  # classes 0..C-1 minus a few absent from the ground truth; half of those are predicted (FP
  # only), the other half only on ignore pixels (which must not count), so absent from both
  absent = (rng.choice(num_classes, size=num_classes // 3, replace=False) if num_classes > 2
            else np.array([], int))
  allowed = np.setdiff1d(np.arange(num_classes), absent)
  never = absent[: len(absent) // 2]
  predictable = np.setdiff1d(np.arange(num_classes), never)
  labels, preds = [], []
  for _ in range(12):
    lab = rng.choice(allowed, size=(16, 24, 20)).astype(np.uint16 if ignore > 255 else np.uint8)
    ignored = rng.random(lab.shape) < 0.2
    lab[ignored] = ignore
    pred = np.where(rng.random(lab.shape) < 0.5, lab % num_classes, rng.choice(predictable, lab.shape))
    if len(never):
      pred = np.where(ignored, rng.choice(never, lab.shape), pred)
    labels.append(lab), preds.append(pred)
    acc = step(acc, jax.device_put(pred.astype(np.int32), sharded), jax.device_put(lab, sharded))
  counts = metrics.counts_to_numpy(acc)
  assert counts.dtype == np.int64 and counts.sum() == sum(np.sum(l != ignore) for l in labels)
  fp_only = np.setdiff1d(absent, never)
  # the cases under test: every allowed class in the ground truth, predicted-only, never counted
  assert counts.sum(1)[allowed].all() and counts[:, fp_only].sum(0).all() and not counts[:, never].any()
  for convention in CONVENTIONS:
    got = metrics.segmentation_metrics(counts, convention)
    want = numpy_metrics(labels, preds, num_classes, ignore, convention)
    for k in ("mIoU", "mACC", "fwIoU", "pACC"):
      np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
    np.testing.assert_allclose(got["IoU"], want["IoU"], rtol=1e-12)  # NaN where no ground truth
    assert np.isnan(got["IoU"][absent]).all()
  if len(fp_only):  # predicted-only classes lower MAFT+'s mIoU by the ratio of the denominators
    ratio = (num_classes - len(never)) / len(allowed)
    np.testing.assert_allclose(metrics.segmentation_metrics(counts, "detectron2")["mIoU"],
                               ratio * metrics.segmentation_metrics(counts)["mIoU"], rtol=1e-12)


def test_counts_are_exact_past_32_bits():
  acc = metrics.zero_counts(2)
  big = jnp.full((2, 2), 2**31 - 1, jnp.int32)
  for _ in range(5):
    acc = metrics.add_counts(acc, big)
  assert (metrics.counts_to_numpy(acc) == 5 * (2**31 - 1)).all()


def test_both_conventions_on_a_tiny_example():
  # 4 classes; class 2 absent from the ground truth but predicted on a labelled pixel; class 3
  # predicted only on the ignore pixel, which is not counted
  label = np.array([0, 0, 1, 1, 255])
  pred = np.array([0, 2, 1, 0, 3])
  counts = np.asarray(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), 4, 255))
  assert counts.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
  m = metrics.segmentation_metrics(counts)
  np.testing.assert_allclose(m["IoU"][:2], [100 / 3, 100 / 2])
  assert np.isnan(m["IoU"][2:]).all()  # per class, even MAFT+'s evaluator leaves class 2 NaN
  # default = MAFT+: class 2 adds 0 to the sum and 1 to the count; class 3 adds nothing
  np.testing.assert_allclose([m["mIoU"], m["pACC"], m["mACC"]], [(100 / 3 + 50) / 3, 50, 50])
  np.testing.assert_allclose(m["fwIoU"], (100 / 3 * 2 + 50 * 2) / 4)
  d2 = metrics.segmentation_metrics(counts, "detectron2")
  np.testing.assert_allclose([d2["mIoU"], d2["pACC"], d2["mACC"]], [(100 / 3 + 50) / 2, 50, 50])
  assert metrics.DEFAULT_MIOU_CONVENTION == "maft_plus"


@pytest.mark.parametrize("num_classes,ignore,dtype", [(20, 255, np.uint8), (847, 65535, np.uint16)])
def test_random_confusion_matrices_through_label_maps(num_classes, ignore, dtype):
  """A random sparse count matrix -> pixels (plus ignore pixels with any prediction) ->
  confusion_matrix must give it back, and both conventions must match the numpy re-derivation."""
  rng = np.random.default_rng(num_classes + 1)
  classes = rng.permutation(num_classes)
  gt_classes = classes[: num_classes // 2]  # the rest: predicted-only or absent from both
  predicted = classes[: num_classes * 3 // 4]
  want = np.zeros((num_classes, num_classes), np.int64)
  rows = rng.choice(gt_classes, 4 * num_classes)
  cols = np.where(rng.random(rows.size) < 0.4, rows, rng.choice(predicted, rows.size))
  np.add.at(want, (rows, cols), rng.integers(1, 20, rows.size))
  lab = np.repeat(np.arange(num_classes ** 2) // num_classes, want.ravel())
  pred = np.repeat(np.arange(num_classes ** 2) % num_classes, want.ravel())
  n_ignore = lab.size // 5
  lab = np.concatenate([lab, np.full(n_ignore, ignore)]).astype(dtype)
  pred = np.concatenate([pred, rng.integers(0, num_classes, n_ignore)])
  order = rng.permutation(lab.size)
  lab, pred = lab[order], pred[order]
  counts = np.asarray(metrics.confusion_matrix(jnp.asarray(pred, jnp.int32), jnp.asarray(lab),
                                               num_classes, ignore))
  np.testing.assert_array_equal(counts, want)
  has_gt, has_pred = want.sum(1) > 0, want.sum(0) > 0
  assert (has_pred & ~has_gt).any() and (~has_pred & ~has_gt).any()  # the cases under test
  for convention in CONVENTIONS:
    got = metrics.segmentation_metrics(counts, convention)
    ref = numpy_metrics([lab], [pred], num_classes, ignore, convention)
    for k in ("mIoU", "mACC", "fwIoU", "pACC", "IoU"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-12)
  default, maft = metrics.segmentation_metrics(counts), metrics.segmentation_metrics(counts, "maft_plus")
  assert default["mIoU"] == maft["mIoU"]


def test_unknown_convention_is_a_clear_error():
  with pytest.raises(ValueError, match="miou_convention='published': expected one of "
                                       "maft_plus, detectron2"):
    metrics.segmentation_metrics(np.eye(3), "published")
