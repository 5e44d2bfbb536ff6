"""Image–caption data (SimZSS): COCO Captions in its usual layout, or its prepared ArrayRecord shards.

  root/annotations/captions_{train,val}2017.json    {"images": [{id, file_name}], "annotations":
  root/{train,val}2017/<file_name>                    [{image_id, caption}]}

A record is {image (H, W, 3) uint8, captions [str, ...], file_name}, read as the segmentation
sources read theirs (`raw` stores bytes and names, `decode` validates), so the grain loader's host
shards, exact resume and skip_bad behave alike. The annotation file is read once, at construction:
a missing or broken file is an error then; a missing image, an image without captions or an empty
caption is a DataError naming the file when the record is read (skipped with skip_bad).

  python -m input_pipeline.captions prepare --root datasets/coco --split train,val --out prepared
    -> prepared/coco_captions/{train,val}/{manifest.json, shard-*.array_record}

The training map (`caption_transforms`): RandomResizedCrop, CLIP mean/std, one random caption per
image per epoch (the draw follows grain's per-record seed, so each epoch draws again), CLIP BPE
token ids and the caption's concept spans (`input_pipeline.concepts`).
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys

import grain
import numpy as np

from input_pipeline import files
from input_pipeline import transforms as T
from input_pipeline.array_record import MANIFEST, ArrayRecordSource
from input_pipeline.files import DataError
from input_pipeline.source import DatasetMeta, Source

NAME = "coco_captions"
SPLITS = {"train": "train2017", "val": "val2017"}
KEYS = ("image", "text_ids", "concept_ids", "concept_starts", "concept_ends")


def annotation_file(root: str, split: str) -> str:
  if split not in SPLITS:
    raise KeyError(f"unknown split {split!r} for {NAME}; expected one of {sorted(SPLITS)}")
  return os.path.join(root, "annotations", f"captions_{SPLITS[split]}.json")


def read_annotations(path: str) -> list[tuple[str, int, list]]:
  """(file name, image id, captions) per image of a COCO Captions file, in its `images` order."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: caption annotations not found; expected the COCO Captions layout "
                    "(annotations/captions_{train,val}2017.json beside {train,val}2017/, docs/data.md)") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: invalid JSON ({e})") from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
      or not isinstance(data.get("annotations"), list):
    raise DataError(f"{path}: expected an object with lists 'images' and 'annotations'")
  captions, order = collections.defaultdict(list), []
  for n, image in enumerate(data["images"]):
    if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
      raise DataError(f"{path}: images[{n}] needs 'id' and a string 'file_name', got {image!r:.200}")
    order.append((image["file_name"], image["id"]))
  ids = {i for _, i in order}
  for n, a in enumerate(data["annotations"]):
    if not isinstance(a, dict) or a.get("image_id") not in ids or not isinstance(a.get("caption"), str):
      raise DataError(f"{path}: annotations[{n}] needs the 'image_id' of a listed image and a string "
                      f"'caption', got {a!r:.200}")
    captions[a["image_id"]].append(a["caption"])
  return [(name, i, captions[i]) for name, i in order]


def decode_captions(raw: dict, meta: DatasetMeta) -> dict:
  """raw {image_bytes, captions, file_name, annotation_file, image_id} -> validated record."""
  where = f"{raw['annotation_file']} (image id {raw['image_id']}, {raw['file_name']})"
  if not raw["captions"]:
    raise DataError(f"{where}: the image has no caption")
  empty = [k for k, c in enumerate(raw["captions"]) if not c.strip()]
  if empty:
    raise DataError(f"{where}: caption {empty[0]} is empty")
  image = files.read_image(raw["file_name"], raw["image_bytes"])
  return {"image": image, "captions": list(raw["captions"]), "file_name": raw["file_name"]}


def caption_meta(split: str) -> DatasetMeta:
  return DatasetMeta(NAME, split, vocabulary="", num_classes=0, kind="captions")


class CocoCaptionsSource(Source):
  """COCO Captions read from its folder layout (module docstring)."""

  def __init__(self, root: str, split: str, skip_bad: bool = False):
    super().__init__(caption_meta(split), skip_bad)
    self.annotation_file = annotation_file(root, split)
    self.image_dir = os.path.join(root, SPLITS[split])
    if not os.path.isdir(self.image_dir):
      raise DataError(f"{self.image_dir}: image folder not found for {NAME}/{split} (root {root!r})")
    self.entries = read_annotations(self.annotation_file)
    if not self.entries:
      raise DataError(f"{self.annotation_file}: lists no images; {NAME}/{split} is empty")

  def __len__(self) -> int:
    return len(self.entries)

  def raw(self, index: int) -> dict:
    name, image_id, captions = self.entries[index]
    path = os.path.join(self.image_dir, name)
    return {"file_name": path, "annotation_file": self.annotation_file, "image_id": image_id,
            "captions": captions, "image_bytes": files.read_bytes(path)}

  def decode(self, raw: dict) -> dict:
    return decode_captions(raw, self.meta)

  def image_hw(self, index: int) -> tuple[int, int]:
    return files.image_size(os.path.join(self.image_dir, self.entries[int(index)][0]))


class PreparedCaptions(ArrayRecordSource):
  """A split written by `python -m input_pipeline.captions prepare`."""

  def decode(self, raw: dict) -> dict:
    return decode_captions(raw, self.meta)


def prepared_dir(root: str, split: str) -> str:
  return os.path.join(root, NAME, split)


def caption_source(name: str, split: str, root: str | None = None, *, source: str = "auto",
                   skip_bad: bool = False, cache_dir: str | None = None) -> Source:
  """Split `split` of caption dataset `name`: 'coco' (COCO Captions under `root`, or its prepared
  shards under root/coco_captions/<split>: source 'folder', 'array_record' or 'auto') or 'demo'
  (the demo scenes with generated captions, built in the cache on first use)."""
  if name == "demo":
    from input_pipeline.demo import demo_coco_root  # pylint: disable=g-import-not-at-top
    root = demo_coco_root(cache_dir)
  elif name != "coco":
    raise ValueError(f"caption dataset {name!r}: expected 'coco' or 'demo'")
  from input_pipeline.datasets import default_root  # pylint: disable=g-import-not-at-top
  root = default_root() if root is None else root
  if source == "auto":
    source = "array_record" if os.path.isfile(os.path.join(prepared_dir(root, split), MANIFEST)) else "folder"
  if source == "array_record":
    src = PreparedCaptions(prepared_dir(root, split), skip_bad=skip_bad)
    if (src.meta.name, src.meta.split) != (NAME, split):
      raise DataError(f"{prepared_dir(root, split)}: manifest is for {src.meta.name}/{src.meta.split}, "
                      f"not {NAME}/{split}")
    return src
  if source != "folder":
    raise ValueError(f"source={source!r}; expected 'auto', 'folder' or 'array_record'")
  return CocoCaptionsSource(root, split, skip_bad=skip_bad)


@functools.cache
def _matcher(bank_path: str | None):
  from input_pipeline.concepts import ConceptMatcher, load_bank  # pylint: disable=g-import-not-at-top
  return ConceptMatcher(load_bank(bank_path))


@functools.cache
def _bank_match(bank_path: str | None):
  from input_pipeline.caption_concepts import BankMatch  # pylint: disable=g-import-not-at-top
  from input_pipeline.concepts import load_bank  # pylint: disable=g-import-not-at-top
  return BankMatch(load_bank(bank_path))


EXTRACTORS = ("match", "bank-match")


def concept_arrays(found, max_concepts: int = 32) -> dict[str, np.ndarray]:
  """[(id, start, end), ...] -> concept_ids / concept_starts / concept_ends (C,) int32 (-1 / 0)."""
  out = np.zeros((3, max_concepts), np.int32)
  out[0] = -1
  for k, m in enumerate(list(found)[:max_concepts]):
    out[:, k] = m
  return {"concept_ids": out[0], "concept_starts": out[1], "concept_ends": out[2]}


class CaptionTokens(grain.transforms.RandomMap):
  """{captions, ...} -> one caption drawn at random as `text_ids` (L,) int32 (SOT, BPE, EOT, 0s)
  and its concepts `concept_ids`/`concept_starts`/`concept_ends` (32,) int32 (-1 / 0 where none):
  a record's cached `concepts` (n, 3) [id, start, end] (`input_pipeline.caption_concepts`, one
  caption per record), else `extractor` on the fly: "match" (bank phrases anywhere) or
  "bank-match" (the release rule's named fallback). Built on first use in each process."""

  def __init__(self, bank_path: str | None = None, context_length: int = 77, extractor: str = "match"):
    if extractor not in EXTRACTORS:
      raise ValueError(f"concept extractor {extractor!r}: expected one of {EXTRACTORS}")
    self.bank_path, self.context_length, self.extractor = bank_path, context_length, extractor

  def random_map(self, el, rng):
    from ovs_jax.tokenizer import tokenize  # pylint: disable=g-import-not-at-top  (numpy only)
    caption = el["captions"][int(rng.integers(len(el["captions"])))]
    ids = tokenize(caption, self.context_length)
    if "concepts" in el:
      out = concept_arrays(el["concepts"])
    elif self.extractor == "bank-match":
      out = concept_arrays(_bank_match(self.bank_path)(caption, ids[0]))
    else:
      out = {k: v[0] for k, v in _matcher(self.bank_path)(ids).items()}
    return dict(el, text_ids=ids[0], **out)


def caption_transforms(crop_size: int = 224, scale_range=(0.9, 1.0), bank_path: str | None = None,
                       context_length: int = 77, interpolation: str = "bicubic",
                       extractor: str = "match") -> list:
  """SimZSS's training map: crop (the release's RandomResizedCrop(224, (0.9, 1.0), BICUBIC),
  src/open_clip/transform.py L16, L105-110), CLIP normalisation, a caption and its concepts."""
  return [T.RandomResizedCrop((crop_size, crop_size), tuple(scale_range), interpolation=interpolation),
          T.Normalize(),
          CaptionTokens(bank_path, context_length, extractor), T.SelectKeys(KEYS)]


def main(argv=None) -> int:
  from input_pipeline.prepare import write_split  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="python -m input_pipeline.captions", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  prep = sub.add_parser("prepare", help="write ArrayRecord shards of COCO Captions splits")
  prep.add_argument("--root", required=True, help="the COCO folder (annotations/, train2017/, val2017/)")
  prep.add_argument("--split", default="train,val", help="comma-separated splits")
  prep.add_argument("--out", required=True, help=f"output root; a split goes to OUT/{NAME}/<split>")
  prep.add_argument("--num_shards", type=int, default=None)
  prep.add_argument("--skip_bad", action="store_true", help="skip (and list) bad records instead of failing")
  args = p.parse_args(argv)
  try:
    for split in args.split.split(","):
      src = CocoCaptionsSource(args.root, split, skip_bad=args.skip_bad)
      write_split(src, prepared_dir(args.out, split), args.root, args.num_shards, args.skip_bad)
  except (DataError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
