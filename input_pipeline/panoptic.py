"""COCO panoptic (133 classes) from its official layout: images, panoptic PNGs and the JSON."""
import json
import os

from input_pipeline import files
from input_pipeline import vocab as vocab_lib
from input_pipeline.files import DataError
from input_pipeline.source import DatasetMeta, Source


class CocoPanopticSource(Source):
  """coco/{split}/*.jpg + coco/panoptic_{split}/*.png + coco/annotations/panoptic_{split}.json.

  Category ids (1..200, gaps) map to contiguous label ids 0..132 in the vocabulary's order.
  """

  def __init__(self, meta: DatasetMeta, root: str, disk_split: str, skip_bad: bool = False):
    super().__init__(meta, skip_bad)
    base = os.path.join(root, "coco")
    json_file = os.path.join(base, "annotations", f"panoptic_{disk_split}.json")
    self.image_dir = os.path.join(base, disk_split)
    self.pan_dir = os.path.join(base, f"panoptic_{disk_split}")
    for d in (self.image_dir, self.pan_dir):
      if not os.path.isdir(d):
        raise DataError(f"{d}: dataset folder not found for {meta.name}/{meta.split}")
    try:
      with open(json_file) as f:
        info = json.load(f)
      annotations = info["annotations"]
      images = {im["id"]: im["file_name"] for im in info["images"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f"{json_file}: cannot read panoptic annotations ({type(e).__name__}: {e})") from None
    to_label = {cid: i for i, cid in enumerate(vocab_lib.vocabulary_file_ids(meta.vocabulary))}
    self.records = []
    for ann in sorted(annotations, key=lambda a: a["file_name"]):
      try:
        segs = ann["segments_info"]
        bad = sorted({s["category_id"] for s in segs} - to_label.keys())
        if bad:
          raise DataError(f"{json_file}: {ann['file_name']} has category ids {bad} that are not "
                          f"in the {meta.vocabulary} vocabulary")
        self.records.append({
            "file_name": os.path.join(self.image_dir, images[ann["image_id"]]),
            "label_file": os.path.join(self.pan_dir, ann["file_name"]),
            "segment_ids": [int(s["id"]) for s in segs],
            "segment_classes": [to_label[s["category_id"]] for s in segs],
            "segment_iscrowd": [bool(s.get("iscrowd", 0)) for s in segs]})
      except DataError as e:
        if not skip_bad:
          raise
        self.skips.skip(e)
      except KeyError as e:
        raise DataError(f"{json_file}: annotation {ann.get('file_name')!r} lacks {e}") from None
    if not self.records:
      raise DataError(f"{json_file}: no annotations; {meta.name}/{meta.split} is empty")

  def __len__(self) -> int:
    return len(self.records)

  def raw(self, index: int) -> dict:
    r = self.records[index]
    return {**r, "image_bytes": files.read_bytes(r["file_name"]),
            "pan_bytes": files.read_bytes(r["label_file"])}

  def image_hw(self, index: int) -> tuple[int, int]:
    return files.image_size(self.records[int(index)]["file_name"])
