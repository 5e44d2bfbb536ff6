"""Random-access data sources: shared metadata, record decoding and the skip-bad-records mode.

Every source (folder, ArrayRecord, TFDS, demo) yields the same record dicts:
  image      (H, W, 3) uint8
  label      (H, W) uint8, or uint16 when ignore_label is 65535 (ADE-847, PC-459, whose class ids
             pass 255); values in [0, num_classes) or ignore_label
  file_name  str, the image path
and for panoptic datasets also
  pan_seg          (H, W) int32: 0 void, k >= 1 the k-th segment
  segment_classes  (S,) int32 label id of each segment
  segment_iscrowd  (S,) bool
A source reads a record in two steps, `raw(i)` (file bytes and names: what ArrayRecord shards
store) and `decode(raw)` (pixels, with validation), so every storage path validates alike.
"""
import dataclasses

import numpy as np

from input_pipeline import files
from input_pipeline import vocab as vocab_lib
from input_pipeline.files import DataError


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What a model needs to know about a source's labels."""
  name: str
  split: str
  vocabulary: str           # shipped vocabulary name (input_pipeline.vocab)
  num_classes: int
  ignore_label: int = 255
  kind: str = "semantic"    # or "panoptic"

  @property
  def class_names(self) -> list[str]:
    return vocab_lib.class_names(self.vocabulary)

  @property
  def label_dtype(self):
    return np.uint16 if self.ignore_label > 255 else np.uint8


def decode_semantic(raw: dict, meta: DatasetMeta) -> dict:
  """raw {image_bytes, label_bytes, file_name, label_file} -> validated record."""
  image, orientation = files.decode_image(raw["file_name"], raw["image_bytes"])
  label = files.read_label(raw["label_file"], raw["label_bytes"])
  files.check_label(label, image.shape[:2], meta.num_classes, meta.ignore_label, raw["label_file"],
                    orientation)
  return {"image": image, "label": label.astype(meta.label_dtype, copy=False),
          "file_name": raw["file_name"]}


def decode_panoptic(raw: dict, meta: DatasetMeta) -> dict:
  """raw {image_bytes, pan_bytes, segment_ids, segment_classes, segment_iscrowd, ...} -> record.

  COCO panoptic PNGs encode a segment id as R + 256 G + 256² B; ids are remapped to 1..S in
  segments-info order and the semantic label is painted from each segment's class.
  """
  image, orientation = files.decode_image(raw["file_name"], raw["image_bytes"])
  path = raw["label_file"]
  rgb = files.read_panoptic_png(path, raw["pan_bytes"]).astype(np.int32)
  ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  files.check_size("panoptic map", ids.shape, image.shape[:2], path, orientation)
  seg_ids = np.asarray(raw["segment_ids"], np.int64)
  classes = np.asarray(raw["segment_classes"], np.int32)
  if classes.size and (classes.min() < 0 or classes.max() >= meta.num_classes):
    raise DataError(f"{path}: segment classes {classes.tolist()} outside [0, {meta.num_classes})")
  present = np.unique(ids)
  unknown = np.setdiff1d(present[present != 0], seg_ids)
  if unknown.size:
    raise DataError(f"{path}: segment ids {unknown[:10].tolist()} are in the PNG but not in "
                    "its segments_info")
  # Remap raw ids -> 1..S through a sorted lookup (ids can be up to 2^24).
  order = np.argsort(seg_ids)
  pos = np.searchsorted(seg_ids[order], ids)
  pos = np.minimum(pos, max(len(seg_ids) - 1, 0))
  hit = (ids != 0) & (seg_ids[order][pos] == ids) if len(seg_ids) else np.zeros(ids.shape, bool)
  pan_seg = np.where(hit, order[pos] + 1, 0).astype(np.int32)
  lut = np.concatenate([[meta.ignore_label], classes]).astype(meta.label_dtype)
  return {"image": image, "label": lut[pan_seg], "file_name": raw["file_name"],
          "pan_seg": pan_seg, "segment_classes": classes,
          "segment_iscrowd": np.asarray(raw["segment_iscrowd"], bool)}


DECODERS = {"semantic": decode_semantic, "panoptic": decode_panoptic}


class Source:
  """Base random-access source (grain's `__len__`/`__getitem__` protocol).

  With skip_bad, a record that fails to read or validate is logged, counted, and returned as
  None, which grain's dataset pipeline drops; otherwise DataError propagates.
  """

  def __init__(self, meta: DatasetMeta, skip_bad: bool = False):
    self.meta = meta
    self.skip_bad = skip_bad
    self.skips = files.SkipCounter(f"{meta.name}/{meta.split}")

  # Metadata shortcuts used by trainers and evaluators.
  num_classes = property(lambda self: self.meta.num_classes)
  ignore_label = property(lambda self: self.meta.ignore_label)
  vocabulary = property(lambda self: self.meta.vocabulary)
  class_names = property(lambda self: self.meta.class_names)

  def __len__(self) -> int:
    raise NotImplementedError

  def raw(self, index: int) -> dict:
    """The stored form of record `index`: file bytes plus names (see module docstring)."""
    raise NotImplementedError

  def decode(self, raw: dict) -> dict:
    return DECODERS[self.meta.kind](raw, self.meta)

  def image_hw(self, index: int) -> tuple[int, int]:
    """(H, W) of record `index`'s image (plans batch canvases): from the file header where the
    stored bytes allow, else by decoding. Raises DataError for an unreadable record."""
    raw = self.raw(int(index))
    if "image_bytes" in raw:
      return files.image_size(raw["file_name"], raw["image_bytes"])
    return tuple(self.decode(raw)["image"].shape[:2])

  def __getitem__(self, index: int) -> dict | None:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"{self.meta.name}/{self.meta.split}: index {index} outside [0, {len(self)})")
    try:
      return self.decode(self.raw(index))
    except DataError as e:
      if not self.skip_bad:
        raise
      self.skips.skip(e)
      return None

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.meta.name}/{self.meta.split}, {len(self)} records)"
