"""Training mappers by name (`config.data.train_mapper`): a record's transforms, and how large they
can make it (what grouping.py needs to plan each batch's canvas).

mask_former_semantic  MAFT+'s (Mask2Former's) semantic mapper with detectron2's INPUT defaults:
                      ResizeShortestEdge (short side from `min_size`, long side <= `max_size`),
                      optional category-capped crop, horizontal flip; then CLIP normalisation and
                      padding with 0 (the mean colour) to the batch canvas, labels with ignore.
                      Images keep their aspect ratio, so shapes vary: batches are grouped by
                      orientation and padded to their largest image (grouping.py).
lsj                   scale jitter: fit `crop_size` × a factor from `scale_range`, category-capped
                      crop, flip, normalise, pad to `crop_size` (one fixed shape).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from input_pipeline import targets
from input_pipeline import transforms as T

KEYS = ["image", "label", "image_hw", "masks", "mask_classes", "mask_valid", "mask_ids", "pan_seg",
        "caption_nouns", "mask_synonyms", "teacher_image", "teacher_segments"]


@dataclasses.dataclass(frozen=True)
class Mapper:
  """ops: per-record transforms. size_bound: source (H, W) -> the largest (H', W') the ops can
  output (records then go on planned canvases); None when every output has one fixed shape."""
  ops: list
  size_bound: Callable | None = None


def _finish(ops, source, num_masks, with_masks, normalize, pad_size):
  ignore = source.ignore_label
  if normalize:
    ops.append(T.Normalize())  # before padding: the padding is 0 after normalisation
  ops.append(T.PadToSize(pad_size, ignore))
  if source.meta.kind == "panoptic":  # after padding: masks are 0 on padded pixels
    ops.append(targets.PanopticToMasks(num_masks or 100, ignore, with_masks))
  elif num_masks:
    ops.append(targets.SemanticToMasks(num_masks, ignore, with_masks))
  return ops + [T.SelectKeys(KEYS)]


def mask_former_semantic(source, min_size=(800,), max_size: int = 1333, sampling: str = "choice",
                         crop_size=None, cat_max_ratio: float = 1.0, num_masks: int | None = None,
                         with_masks: bool = True, normalize: bool = True) -> Mapper:
  """crop_size None: no crop (the official INPUT.CROP.ENABLED=False); (H, W): detectron2's
  'absolute' RandomCrop_CategoryAreaConstraint with `cat_max_ratio`."""
  resize = T.ResizeShortestEdge(tuple(min_size), max_size, sampling)
  ops = [resize]
  if crop_size:
    ops.append(T.RandomCrop(crop_size, cat_max_ratio, source.ignore_label))
  ops.append(T.RandomHorizontalFlip(0.5))

  def size_bound(hw):  # output size grows with the short side: the largest one bounds it
    h, w = T.shortest_edge_size(hw, resize.largest, max_size)
    return (min(h, crop_size[0]), min(w, crop_size[1])) if crop_size else (h, w)
  return Mapper(_finish(ops, source, num_masks, with_masks, normalize, None), size_bound)


def lsj(source, crop_size=(512, 512), scale_range=(0.5, 2.0), cat_max_ratio: float = 0.75,
        num_masks: int | None = None, with_masks: bool = True, normalize: bool = True) -> Mapper:
  ops = [T.RandomResize(crop_size, scale_range), T.RandomCrop(crop_size, cat_max_ratio, source.ignore_label),
         T.RandomHorizontalFlip()]
  return Mapper(_finish(ops, source, num_masks, with_masks, normalize, crop_size))


def mmseg(source, **kwargs) -> Mapper:
  """mmsegmentation's pipeline of MaskCLIP+'s configs (`input_pipeline/mmseg_pipeline.py`)."""
  from input_pipeline.mmseg_pipeline import mmseg_train
  return mmseg_train(source, **kwargs)


MAPPERS = {"mask_former_semantic": mask_former_semantic, "lsj": lsj, "mmseg": mmseg}


def build(name: str, source, **kwargs) -> Mapper:
  if name not in MAPPERS:
    raise ValueError(f"train mapper {name!r}; expected one of {sorted(MAPPERS)}")
  return MAPPERS[name](source, **kwargs)


def from_config(source, data, with_masks: bool) -> Mapper:
  """The mapper a recipe's `config.data` names (keys in configs/cdt_vitb.py)."""
  name = data.get("train_mapper", "mask_former_semantic")
  crop = (data.crop_size, data.crop_size)
  common = dict(cat_max_ratio=data.cat_max_ratio, num_masks=data.num_masks, with_masks=with_masks)
  if name == "lsj":
    return lsj(source, crop, tuple(data.scale_range), **common)
  if name == "mmseg":
    return mmseg(source, img_scale=tuple(data.img_scale), ratio_range=tuple(data.ratio_range),
                 crop_size=crop, photometric=data.get("photometric", True), **common)
  return build(name, source, min_size=tuple(data.min_size_train), max_size=data.max_size_train,
               sampling=data.min_size_train_sampling, crop_size=crop if data.crop_enabled else None,
               **common)
