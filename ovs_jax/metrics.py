"""Semantic segmentation metrics: a confusion matrix built inside the jitted eval step, and the
definitions of detectron2's SemSegEvaluator (mIoU in MAFT+'s or current detectron2's convention).

The matrix has rows = ground truth, columns = prediction (detectron2 stores the transpose).
Counts are exact at any size: a step's matrix is int32 (one step never holds 2³¹ pixels) and the
running sum lives on device as two uint32 words with carry, i.e. a 64-bit count, read out as int64.
Under `jit` with the batch sharded, `jnp.bincount` sums over devices (and hosts) by itself.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred, label, num_classes: int, ignore_label: int, valid=None):
  """pred, label (...) integer maps -> (C, C) int32 counts[label, pred].

  Pixels whose label is the ignore label (or outside [0, C)), or where `valid` (broadcastable to
  label) is False, are not counted.
  """
  label = label.astype(jnp.int32)
  keep = (label != ignore_label) & (label >= 0) & (label < num_classes)
  if valid is not None:
    keep &= valid
  bins = num_classes * num_classes
  index = jnp.where(keep, label * num_classes + pred.astype(jnp.int32), bins)
  counts = jnp.bincount(index.reshape(-1), length=bins + 1)[:bins]
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def zero_counts(num_classes: int):
  """The 64-bit running confusion matrix as (low, high) uint32 words."""
  shape = (num_classes, num_classes)
  return jnp.zeros(shape, jnp.uint32), jnp.zeros(shape, jnp.uint32)  # distinct: both are donated


def add_counts(acc, step_counts):
  """acc (low, high) + a step's int32 counts, with carry into the high word."""
  low, high = acc
  new = low + step_counts.astype(jnp.uint32)  # wraps modulo 2³²
  return new, high + (new < low).astype(jnp.uint32)


def counts_to_numpy(acc) -> np.ndarray:
  """(low, high) device words -> (C, C) int64 on the host (replicated arrays: any shard is whole)."""
  low, high = (np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
               for x in acc)
  return ((high.astype(np.uint64) << np.uint64(32)) | low.astype(np.uint64)).astype(np.int64)


# mIoU denominators. "maft_plus": MAFT+'s own evaluator, maft/evaluation/semantic_evaluation.py
# (github.com/jiaosiyu1999/MAFT-Plus; the formula of detectron2 <= v0.6), which produced MAFT+'s
# tables. "detectron2": detectron2 since commit f3c1bc19 (2022-07-06), which FC-CLIP installs from
# git and whose logs (PC-459: mIoU = mean IoU over the 345 classes with ground truth) match it.
MIOU_CONVENTIONS = ("maft_plus", "detectron2")
DEFAULT_MIOU_CONVENTION = "maft_plus"


def check_miou_convention(convention: str, name: str = "miou_convention") -> str:
  if convention not in MIOU_CONVENTIONS:
    raise ValueError(f"{name}={convention!r}: expected one of {', '.join(MIOU_CONVENTIONS)}")
  return convention


def segmentation_metrics(counts: np.ndarray, convention: str = DEFAULT_MIOU_CONVENTION) -> dict:
  """SemSegEvaluator metrics (in %) from counts[label, pred], mIoU under `convention`.

  IoU_c = TP/(TP+FP+FN) and Acc_c = TP/(TP+FN) are defined for classes with ground truth present
  (others NaN); mACC averages Acc over those; fwIoU weights IoU by ground-truth frequency;
  pACC = ΣTP / Σ labelled pixels. FP counts only predictions on labelled pixels. mIoU sums IoU over
  classes with ground truth and divides by the number of those ("detectron2") or, as MAFT+'s
  evaluator (semantic_evaluation.py lines 138, 142: iou_valid = pos_gt + pos_pred > 0), by the
  number of classes with ground truth or prediction ("maft_plus"): a class predicted but absent
  from the ground truth adds 0 to the sum and 1 to the count (its per-class IoU stays NaN there
  too, line 140). Both evaluators agree on every other number.
  """
  check_miou_convention(convention)
  counts = np.asarray(counts, np.float64)
  tp = np.diag(counts)
  pos_gt, pos_pred = counts.sum(1), counts.sum(0)
  union = pos_gt + pos_pred - tp
  has_gt = pos_gt > 0
  valid = has_gt & (union > 0)
  n_miou = (valid if convention == "detectron2" else has_gt | (pos_pred > 0)).sum()
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.where(has_gt, tp / pos_gt, np.nan)
    iou = np.where(valid, tp / union, np.nan)
    total = pos_gt.sum()
    return {
        "mIoU": 100 * float(iou[valid].sum() / n_miou) if n_miou else float("nan"),
        "fwIoU": 100 * float(np.sum(iou[valid] * pos_gt[valid]) / total) if total else float("nan"),
        "mACC": 100 * acc[has_gt].mean() if has_gt.any() else float("nan"),
        "pACC": 100 * float(tp.sum() / total) if total else float("nan"),
        "IoU": 100 * iou,
        "ACC": 100 * acc,
    }


def zero_shot_metrics(counts: np.ndarray, unseen, convention: str = DEFAULT_MIOU_CONVENTION) -> dict:
  """mIoU over the seen and over the unseen classes (each under `convention`, restricted to the
  subset) and their harmonic mean hIoU = 2·seen·unseen / (seen + unseen) (ZS3Net, MVP-SEG).

  counts[label, pred] over the whole vocabulary: a pixel of one subset predicted as the other
  counts against both, as in the papers' tables (one evaluation over all classes).
  """
  counts = np.asarray(counts, np.float64)
  unseen = np.zeros(len(counts), bool) | np.isin(np.arange(len(counts)), list(unseen))
  iou = segmentation_metrics(counts, convention)["IoU"]
  pos_gt, pos_pred = counts.sum(1), counts.sum(0)
  counted = (pos_gt > 0) if convention == "detectron2" else (pos_gt > 0) | (pos_pred > 0)
  out = {}
  for key, subset in (("mIoU_seen", ~unseen), ("mIoU_unseen", unseen)):
    n = (counted & subset).sum()
    out[key] = 100 * float(np.nansum(np.where(subset, iou / 100, np.nan)) / n) if n else float("nan")
  s, u = out["mIoU_seen"], out["mIoU_unseen"]
  out["hIoU"] = 2 * s * u / (s + u) if s + u > 0 else float("nan")
  return out
