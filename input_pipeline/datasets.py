"""Registry of the OVS benchmarks: name -> vocabulary, ignore label, on-disk layout, readers.

`get_dataset(name, split, root)` returns a random-access source (see source.py for the record
format). Layouts are those of the widely used detectron2-style preparation scripts; the exact
trees are documented in docs/data.md.
"""
import dataclasses
import os

from input_pipeline import vocab as vocab_lib
from input_pipeline.array_record import MANIFEST, ArrayRecordSource
from input_pipeline.files import DataError
from input_pipeline.folder import FolderSource, Layout
from input_pipeline.panoptic import CocoPanopticSource
from input_pipeline.source import DatasetMeta, Source
from input_pipeline.tfds_source import TfdsSource, TfdsSpec

_ADE = {"train": "training", "val": "validation"}
_COCO = {"train": "train2017", "val": "val2017"}
_TV = {"train": "train", "val": "val"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  vocabulary: str
  layout: Layout | None            # None: a custom reader (COCO panoptic)
  ignore_label: int = 255          # 65535 where class ids pass 255 (16-bit TIFF labels)
  kind: str = "semantic"
  tfds: TfdsSpec | None = None


DATASETS = {
    "ade20k_150": DatasetSpec("ade20k_150", Layout(
        "ADEChallengeData2016/images/{split}", "ADEChallengeData2016/annotations_detectron2/{split}",
        ".jpg", ".png", _ADE)),
    "ade20k_847": DatasetSpec("ade20k_847", Layout(
        "ADE20K_2021_17_01/images_detectron2/{split}", "ADE20K_2021_17_01/annotations_detectron2/{split}",
        ".jpg", ".tif", _ADE), ignore_label=65535),
    "pc_59": DatasetSpec("pc_59", Layout(
        "VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc59_{split}",
        ".jpg", ".png", _TV, index_by="label")),
    "pc_459": DatasetSpec("pc_459", Layout(
        "VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc459_{split}",
        ".jpg", ".tif", _TV, index_by="label"), ignore_label=65535),
    "voc_20": DatasetSpec("voc_20", Layout(
        "VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2/{split}",
        ".jpg", ".png", _TV, index_by="label")),
    "voc_21": DatasetSpec("voc_21", Layout(
        "VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2_bg/{split}",
        ".jpg", ".png", _TV, index_by="label")),
    "coco_stuff_171": DatasetSpec("coco_stuff_171", Layout(
        "coco/{split}", "coco/stuffthingmaps_detectron2/{split}", ".jpg", ".png", _COCO)),
    "coco_panoptic_133": DatasetSpec("coco_panoptic_133", None, kind="panoptic"),
    "cityscapes_19": DatasetSpec("cityscapes_19", Layout(
        "cityscapes/leftImg8bit/{split}", "cityscapes/gtFine/{split}",
        "_leftImg8bit.png", "_gtFine_labelTrainIds.png", _TV, recursive=True),
        tfds=TfdsSpec("cityscapes/semantic_segmentation", "image_left", "segmentation_label",
                      {"train": "train", "val": "validation"}, lut="cityscapes")),
    "demo": DatasetSpec("demo", Layout("images/{split}", "annotations/{split}", ".png", ".png", _TV)),
}


def dataset_names() -> list[str]:
  return sorted(DATASETS)


def default_root() -> str:
  """$OVS_JAX_DATA, else $DETECTRON2_DATASETS, else ./datasets."""
  return os.environ.get("OVS_JAX_DATA") or os.environ.get("DETECTRON2_DATASETS") or "datasets"


def dataset_meta(name: str, split: str) -> DatasetMeta:
  if name not in DATASETS:
    raise KeyError(f"unknown dataset {name!r}; expected one of {dataset_names()}")
  spec = DATASETS[name]
  splits = spec.layout.splits if spec.layout else _COCO
  if split not in splits:
    raise KeyError(f"unknown split {split!r} for {name}; expected one of {sorted(splits)}")
  return DatasetMeta(name, split, spec.vocabulary, len(vocab_lib.load_vocabulary(spec.vocabulary)),
                     spec.ignore_label, spec.kind)


def prepared_dir(root: str, name: str, split: str) -> str:
  """Where `python -m input_pipeline.prepare --out root` puts a split."""
  return os.path.join(root, name, split)


def get_dataset(name: str, split: str, root: str | None = None, *, source: str = "auto",
                skip_bad: bool = False, cache_dir: str | None = None) -> Source:
  """A random-access source for split 'train' or 'val' of dataset `name`.

  source: 'folder' (the prepared layout under root), 'array_record' (root/<name>/<split> made by
  `input_pipeline.prepare`), 'tfds' (root is the TFDS data_dir), or 'auto' (array_record when
  its manifest exists, else folder). skip_bad: drop and count unreadable records instead of
  raising. The 'demo' dataset is generated into cache_dir on first use and ignores root.
  """
  meta = dataset_meta(name, split)
  spec = DATASETS[name]
  if name == "demo" and source in ("auto", "folder") and root is None:
    from input_pipeline import demo  # pylint: disable=g-import-not-at-top  (demo imports us)
    return demo.demo_dataset(split, cache_dir=cache_dir, skip_bad=skip_bad)
  root = default_root() if root is None else root
  if source == "auto":
    source = ("array_record" if os.path.isfile(os.path.join(prepared_dir(root, name, split), MANIFEST))
              else "folder")
  if source == "array_record":
    src = ArrayRecordSource(prepared_dir(root, name, split), skip_bad=skip_bad)
    if (src.meta.name, src.meta.split) != (name, split):
      raise DataError(f"{prepared_dir(root, name, split)}: manifest is for "
                      f"{src.meta.name}/{src.meta.split}, not {name}/{split}")
    return src
  if source == "tfds":
    if spec.tfds is None:
      raise DataError(f"{name}: no TFDS dataset is registered; use source='folder' or 'array_record'")
    return TfdsSource(meta, spec.tfds, data_dir=root, skip_bad=skip_bad)
  if source != "folder":
    raise ValueError(f"source={source!r}; expected 'auto', 'folder', 'array_record' or 'tfds'")
  if spec.kind == "panoptic":
    return CocoPanopticSource(meta, root, _COCO[split], skip_bad=skip_bad)
  return FolderSource(meta, spec.layout, root, skip_bad=skip_bad)
