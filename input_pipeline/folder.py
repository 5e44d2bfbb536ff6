"""Semantic-segmentation datasets read straight from their prepared folder layout."""
import dataclasses
import os

from input_pipeline import files
from input_pipeline.files import DataError
from input_pipeline.source import DatasetMeta, Source


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a split's images and label maps live, relative to the data root.

  `{split}` in the folder patterns is replaced by the on-disk split name. A record's key is its
  path below the listing folder minus the suffix; the pair file is `<other dir>/<key><suffix>`.
  index_by names the folder that defines the split ('label' where one image folder holds
  several splits, as VOC's JPEGImages).
  """
  image_dir: str
  label_dir: str
  image_suffix: str
  label_suffix: str
  splits: dict                 # canonical split name -> on-disk split name
  index_by: str = "image"
  recursive: bool = False      # Cityscapes: one sub-folder per city

  def dirs(self, root: str, split: str) -> tuple[str, str]:
    if split not in self.splits:
      raise KeyError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
    s = self.splits[split]
    return (os.path.join(root, self.image_dir.format(split=s)),
            os.path.join(root, self.label_dir.format(split=s)))


class FolderSource(Source):
  """Pairs image and label files by name at construction; decodes one pair per `__getitem__`.

  Missing folders, an empty split and missing pair files raise DataError at construction (with
  skip_bad, unpaired files are dropped and counted instead).
  """

  def __init__(self, meta: DatasetMeta, layout: Layout, root: str, skip_bad: bool = False):
    super().__init__(meta, skip_bad)
    image_dir, label_dir = layout.dirs(root, meta.split)
    index_dir, index_suffix, other_dir, other_suffix = (
        (image_dir, layout.image_suffix, label_dir, layout.label_suffix)
        if layout.index_by == "image" else
        (label_dir, layout.label_suffix, image_dir, layout.image_suffix))
    for d in (image_dir, label_dir):
      if not os.path.isdir(d):
        raise DataError(f"{d}: dataset folder not found for {meta.name}/{meta.split} "
                        f"(root {root!r}); see docs/data.md for the layout")
    keys = [f[:-len(index_suffix)] for f in files.list_files(index_dir, index_suffix, layout.recursive)]
    if not keys:
      raise DataError(f"{index_dir}: no '*{index_suffix}' files; {meta.name}/{meta.split} is empty")
    others = set(files.list_files(other_dir, other_suffix, layout.recursive))
    self.pairs = []
    for k in keys:
      if k + other_suffix in others:
        pair = (os.path.join(index_dir, k + index_suffix), os.path.join(other_dir, k + other_suffix))
        self.pairs.append(pair if layout.index_by == "image" else pair[::-1])
        continue
      what = "label" if layout.index_by == "image" else "image"
      err = DataError(f"{os.path.join(other_dir, k + other_suffix)}: missing {what} file for "
                      f"{os.path.join(index_dir, k + index_suffix)}")
      if not skip_bad:
        raise err
      self.skips.skip(err)
    if not self.pairs:
      raise DataError(f"{index_dir}: no complete image/label pairs in {meta.name}/{meta.split}")

  def __len__(self) -> int:
    return len(self.pairs)

  def raw(self, index: int) -> dict:
    image_file, label_file = self.pairs[index]
    return {"file_name": image_file, "label_file": label_file,
            "image_bytes": files.read_bytes(image_file), "label_bytes": files.read_bytes(label_file)}

  def image_hw(self, index: int) -> tuple[int, int]:
    return files.image_size(self.pairs[int(index)][0])  # the header only: no label read, no decode
