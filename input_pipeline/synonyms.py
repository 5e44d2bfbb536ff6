"""GKC's text diversification data: per-class synonym sets, shipped in `vocab/synonyms/`.

A synonym file has one line per class of a training vocabulary, in label order, written as the
vocabulary files are (`id:name,synonym,...`); the first name is the class's GKC-cleaned name
(`clean_name`). Training only reads these files (`load_synonyms`); they are made once by

  python -m input_pipeline.synonyms build                # WordNet 3.0 -> vocab/synonyms/*.txt
  python -m input_pipeline.synonyms filter --clip=PATH --data=COCO_ROOT --out=FILE

the second writing GKC's optional per-segment CLIP filter (`load_segment_filter`). See
vocab/synonyms/README.md for how the shipped files were made.
"""
import argparse
import dataclasses
import hashlib
import importlib.resources
import json
import os
import sys

import numpy as np

from input_pipeline import vocab as vocab_lib

# Training vocabularies with shipped synonym sets: GKC's COCO-Panoptic-133, MAFT+'s COCO-Stuff-171
# and the demo dataset's.
SYNONYM_VOCABULARIES = ("coco_panoptic_133", "coco_stuff_171", "demo")
FILTER_FORMAT = "ovs_jax.synonym_filter/1"


class SynonymError(ValueError):
  """A synonym file or filter file that breaks its format; the message names the file and class."""


def clean_name(name: str) -> str:
  """GKC's class-name cleaning: drop '-merged' and '-other', then '-' -> ' '."""
  return name.replace("-merged", "").replace("-other", "").replace("-", " ")


def name_key(name: str) -> str:
  """What CLIP's tokenizer tells apart: case and runs of spaces do not count."""
  return " ".join(name.casefold().split())


def data_path(name: str) -> str:
  return str(importlib.resources.files(vocab_lib).joinpath("synonyms", name))


def file_name(vocabulary: str) -> str:
  return f"{vocabulary}.txt"


def format_synonyms(sets: list[list[str]]) -> str:
  """The file text of synonym lists (label order): `id:name,synonym,...` lines."""
  bad = [n for names in sets for n in names if any(ch in n for ch in ",;\n") or n != n.strip()]
  if bad:
    raise SynonymError(f"synonyms {bad} cannot be written: ',', ';', newlines and surrounding "
                       "spaces are the file's syntax")
  return "".join(f"{c}:{','.join(names)}\n" for c, names in enumerate(sets))


def parse_synonyms(text: str, vocabulary: str, where: str) -> list[list[str]]:
  """Synonym lists of `vocabulary` from file text, validated: one entry per class in label order,
  each starting with the cleaned class name, no empty or repeated names, no name in two classes."""
  try:
    sets = vocab_lib.parse_vocabulary(text, where)  # ids, empty names, a name in two classes
  except vocab_lib.VocabularyError as e:
    raise SynonymError(str(e)) from None
  classes = vocab_lib.class_names(vocabulary)
  if len(sets) != len(classes):
    c = min(len(sets), len(classes))
    missing = (f"class {c} ({classes[c]!r}) has no entry" if len(sets) < len(classes)
               else f"entry {c} ({sets[c][0]!r}) has no class")
    raise SynonymError(f"{where}: {len(sets)} entries for the {len(classes)} classes of {vocabulary}; "
                       f"{missing}")
  for c, (names, cls) in enumerate(zip(sets, classes)):
    if names[0] != clean_name(cls):
      raise SynonymError(f"{where}: class {c} ({cls!r}) starts with {names[0]!r}; expected its "
                         f"cleaned name {clean_name(cls)!r}")
    keys = [name_key(n) for n in names]
    repeated = sorted({n for n, k in zip(names, keys) if keys.count(k) > 1})
    if repeated:
      raise SynonymError(f"{where}: class {c} ({cls!r}) lists {repeated} more than once")
  return sets


@dataclasses.dataclass(frozen=True)
class SynonymSets:
  """A vocabulary's synonyms in the text classifier's layout (`text_classifier.synonym_layout`).

  sets   C lists of names, each starting with the cleaned class name
  names  (S,) every synonym, class after class: the rows of a text-embedding table
  index  (C, K) int32 rows of each class's synonyms in `names`, -1 = padding
  """
  vocabulary: str
  sets: tuple[tuple[str, ...], ...]
  names: tuple[str, ...]
  index: np.ndarray
  sha256: str  # of the file, so per-segment filters can tell which sets they index

  @property
  def counts(self) -> np.ndarray:
    """(C,) number of synonyms of each class."""
    return (self.index >= 0).sum(1)


def synonym_sets(vocabulary: str, sets: list[list[str]], sha256: str = "") -> SynonymSets:
  from ovs_jax.text_classifier import synonym_layout  # numpy only; keeps jax out of grain workers
  names, index = synonym_layout(sets)
  return SynonymSets(vocabulary, tuple(map(tuple, sets)), tuple(names), index, sha256)


def load_synonyms(vocabulary: str, path: str | None = None) -> SynonymSets:
  """The shipped synonym sets of a training vocabulary (or those at `path`), validated."""
  if path is None:
    if vocabulary not in SYNONYM_VOCABULARIES:
      raise KeyError(f"no synonym sets are shipped for {vocabulary!r}; they exist for "
                     f"{list(SYNONYM_VOCABULARIES)} (python -m input_pipeline.synonyms build)")
    path = data_path(file_name(vocabulary))
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise SynonymError(f"{path}: not UTF-8 text ({e})") from None
  return synonym_sets(vocabulary, parse_synonyms(text, vocabulary, path), hashlib.sha256(data).hexdigest())


def load_segment_filter(path: str, synonyms: SynonymSets) -> dict[str, dict[int, tuple[int, ...]]]:
  """{panoptic PNG name: {segment id: indices into its class's synonyms}} written by `filter`,
  checked against the synonym sets it was made from."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    fmt, vocabulary, sha, segments = (data["format"], data["vocabulary"], data["synonyms_sha256"],
                                      data["segments"])
    if not all(isinstance(v, dict) for v in segments.values()):
      raise TypeError("'segments' must map image names to {segment id: indices}")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise SynonymError(f"{path}: not a synonym filter file ({type(e).__name__}: {e})") from None
  if fmt != FILTER_FORMAT or vocabulary != synonyms.vocabulary:
    raise SynonymError(f"{path}: a {fmt!r} filter for {vocabulary!r}; expected {FILTER_FORMAT!r} "
                       f"for {synonyms.vocabulary!r}")
  if sha != synonyms.sha256:
    raise SynonymError(f"{path}: made from other {vocabulary} synonym sets (sha256 {sha[:12]}..., "
                       f"now {synonyms.sha256[:12]}...); rerun `python -m input_pipeline.synonyms filter`")
  k = synonyms.index.shape[1]
  out = {}
  for image, segs in segments.items():
    out[image] = {}
    for seg_id, keep in segs.items():
      ok = (isinstance(keep, list) and keep and all(isinstance(i, int) for i in keep)
            and sorted(set(keep)) == keep and 0 <= keep[0] and keep[-1] < k and seg_id.isdigit())
      if not ok:
        raise SynonymError(f"{path}: {image} segment {seg_id} keeps {keep}; expected a segment id "
                           f"with increasing synonym indices in [0, {k})")
      out[image][int(seg_id)] = tuple(keep)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m input_pipeline.synonyms", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="synonym sets from WordNet 3.0 + hand_fixes.json")
  b.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0 dict directory")
  b.add_argument("--out", default=os.path.dirname(data_path("x")), help="where the files go")
  b.add_argument("--check", action="store_true", help="compare with the files in --out; write nothing")
  f = sub.add_parser("filter", help="GKC's per-segment CLIP filter over COCO panoptic")
  f.add_argument("--clip", required=True, help="CLIP weights (load_clip path, or random:/demo:<arch>)")
  f.add_argument("--data", required=True, help="dataset root holding coco/")
  f.add_argument("--out", required=True, help="output JSON file")
  f.add_argument("--split", default="train")
  f.add_argument("--threshold", type=float, default=0.1)
  f.add_argument("--batch_size", type=int, default=64)
  f.add_argument("--max_images", type=int, default=0, help="0 = all")
  args = p.parse_args(argv)
  if args.command == "build":
    from input_pipeline import synonym_wordnet  # pylint: disable=g-import-not-at-top  (needs nltk)
    files = synonym_wordnet.build_files(args.wordnet)
    stale = []
    for name, text in files.items():
      path = os.path.join(args.out, name)
      old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
      if old != text:
        stale.append(path)
        if not args.check:
          with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
      print(f"{path}: {text.count(chr(10))} classes, {text.count(',') + text.count(chr(10))} synonyms"
            f"{'' if old == text else (' (differs)' if args.check else ' (written)')}")
    return 1 if args.check and stale else 0
  from input_pipeline import synonym_filter  # pylint: disable=g-import-not-at-top  (needs jax)
  synonym_filter.run(args.clip, args.data, args.out, split=args.split, threshold=args.threshold,
                     batch_size=args.batch_size, max_images=args.max_images)
  return 0


if __name__ == "__main__":
  sys.exit(main())
