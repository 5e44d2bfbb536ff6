"""Mask-classification targets with fixed shapes: up to N binary masks, class ids, validity flags.

Outputs (N = num_masks):
  masks         (N, H, W) bool   (omitted with with_masks=False: rebuild on device as
                                   `label[None] == mask_classes[:, None, None]` or
                                   `pan_seg[None] == mask_ids[:, None, None]`, N× less host traffic)
  mask_classes  (N,) int32       class id of each mask, -1 for padding
  mask_valid    (N,) bool        True for real masks
  mask_ids      (N,) int32       panoptic only: the segment's value in pan_seg (0 for padding)
  mask_synonyms (N,) int32       panoptic with a record's `segment_synonyms` (GKC's synonym filter,
                                 input_pipeline/segment_synonyms.py): its bitmask per slot (0 padding)
Slots are filled in ascending class (semantic) or segment (panoptic) order; when more than N are
present, the N largest by area are kept.
"""
import numpy as np
import grain


def _keep_largest(ids: np.ndarray, areas: np.ndarray, n: int) -> np.ndarray:
  if len(ids) > n:
    ids = np.sort(ids[np.argsort(-areas, kind="stable")[:n]])
  return ids


def _pack(el, classes, ids, masks, num_masks, with_masks):
  k = len(classes)
  out = dict(el)
  out["mask_classes"] = np.pad(classes.astype(np.int32), (0, num_masks - k), constant_values=-1)
  out["mask_valid"] = np.arange(num_masks) < k
  if ids is not None:
    out["mask_ids"] = np.pad(ids.astype(np.int32), (0, num_masks - k))
  if with_masks:
    h, w = el["label"].shape
    out["masks"] = np.concatenate([masks, np.zeros((num_masks - k, h, w), bool)])
  return out


class SemanticToMasks(grain.transforms.Map):
  """label (H, W) -> one mask per class present (ignore excluded)."""

  def __init__(self, num_masks: int, ignore_label: int = 255, with_masks: bool = True):
    self.num_masks, self.ignore_label, self.with_masks = num_masks, ignore_label, with_masks

  def map(self, el):
    label = el["label"]
    counts = np.bincount(label.ravel())  # O(pixels), unlike np.unique's sort
    if self.ignore_label < len(counts):
      counts[self.ignore_label] = 0
    classes = np.flatnonzero(counts)
    areas = counts[classes]
    classes = _keep_largest(classes, areas, self.num_masks)
    masks = label[None] == classes[:, None, None] if self.with_masks else None
    return _pack(el, classes, None, masks, self.num_masks, self.with_masks)


class PanopticToMasks(grain.transforms.Map):
  """pan_seg (H, W) + segment_classes/iscrowd -> one mask per (non-crowd) segment still visible.

  Crowd segments are dropped as targets (Mask2Former's convention) and their pixels set to the
  ignore label in `label`. Removes the variable-length segment_* fields so records batch.
  """

  def __init__(self, num_masks: int, ignore_label: int = 255, with_masks: bool = True,
               drop_crowd: bool = True):
    self.num_masks, self.ignore_label = num_masks, ignore_label
    self.with_masks, self.drop_crowd = with_masks, drop_crowd

  def map(self, el):
    pan = el["pan_seg"]
    seg_classes, crowd = el["segment_classes"], el["segment_iscrowd"]
    ids, areas = np.unique(pan[pan > 0], return_counts=True)
    if self.drop_crowd and crowd.any():
      keep = ~crowd[ids - 1]
      el = dict(el, label=np.where(np.isin(pan, ids[~keep]), self.ignore_label, el["label"]).astype(
          el["label"].dtype))
      ids, areas = ids[keep], areas[keep]
    ids = _keep_largest(ids, areas, self.num_masks)
    masks = pan[None] == ids[:, None, None] if self.with_masks else None
    out = _pack(el, seg_classes[ids - 1], ids, masks, self.num_masks, self.with_masks)
    del out["segment_classes"], out["segment_iscrowd"]
    if "segment_synonyms" in out:
      bits = out.pop("segment_synonyms")[ids - 1].astype(np.int32)
      out["mask_synonyms"] = np.pad(bits, (0, self.num_masks - len(ids)))
    return out
