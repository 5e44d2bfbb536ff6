"""Caption nouns per training example, for GKC's caption grounding.

Each image's captions are reduced once to concept-bank ids (`concepts.ConceptMatcher`: exact
bank names, offline, no tagger), a (captions, C) table; at training time `DrawCaptionNouns` picks
one caption per example, drops each of its nouns with p = 0.25 and keeps at most 5:

  caption_nouns  (5,) int32  concept-bank ids, −1 = none

Captions come from the dataset: the demo's generated captions (`demo.demo_captions`), or COCO
Captions (`coco/annotations/captions_{split}2017.json`) joined to COCO panoptic by image id. A
dataset without captions has none (`dataset_captions` returns None; grounding is then off).
"""
from __future__ import annotations

import json
import os

import grain
import numpy as np

MAX_NOUNS = 5
NOUN_DROP = 0.25


def coco_captions(root: str, split: str, image_files: list[str]) -> list[list[str]]:
  """COCO Captions of each image (file names whose stem is the COCO image id), in that order."""
  path = os.path.join(root, "coco", "annotations", f"captions_{split}2017.json")
  try:
    with open(path) as f:
      data = json.load(f)
    by_id: dict[int, list[str]] = {}
    for a in data["annotations"]:
      by_id.setdefault(int(a["image_id"]), []).append(a["caption"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: cannot read COCO captions ({type(e).__name__}: {e}); caption "
                     "grounding needs captions_{train,val}2017.json of COCO 2017 (or "
                     "config.loss.caption_weight=0)") from None
  return [by_id.get(int(os.path.splitext(os.path.basename(f))[0]), []) for f in image_files]


def dataset_captions(name: str, split: str, source, root: str | None = None,
                     cache_dir: str | None = None) -> list[list[str]] | None:
  """Captions of each record of `source` (a `datasets.get_dataset` source), or None when the
  dataset has none."""
  if name == "demo":
    from input_pipeline import demo
    return demo.demo_captions(split, cache_dir)
  if name == "coco_panoptic_133":
    from input_pipeline.datasets import default_root
    files = [r["file_name"] for r in getattr(source, "records", [])]
    return coco_captions(root or default_root(), split, files)
  return None


def concept_table(captions: list[list[str]], matcher, max_captions: int = 5) -> np.ndarray:
  """(N, max_captions, C) int32 bank ids of each image's first captions' concepts, −1 padded."""
  from ovs_jax import tokenizer
  table = np.full((len(captions), max_captions, matcher.max_concepts), -1, np.int32)
  for i, caps in enumerate(captions):
    caps = caps[:max_captions]
    if caps:
      table[i, :len(caps)] = matcher(tokenizer.tokenize(caps))["concept_ids"]
  return table


class WithCaptionConcepts:
  """A source whose records carry `caption_concepts` (captions, C): row i of `table`."""

  def __init__(self, source, table: np.ndarray):
    if len(table) != len(source):
      raise ValueError(f"{len(table)} caption rows for the {len(source)} records of "
                       f"{source.meta.name}/{source.meta.split}")
    self.source, self.table = source, table

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    return None if record is None else dict(record, caption_concepts=self.table[i])

  def __getattr__(self, name):
    return getattr(self.source, name)


class DrawCaptionNouns(grain.transforms.RandomMap):
  """caption_concepts (captions, C) -> caption_nouns (MAX_NOUNS,): the concepts of one caption
  drawn among those with any, each dropped with `drop`, the first MAX_NOUNS kept."""

  def __init__(self, drop: float = NOUN_DROP, max_nouns: int = MAX_NOUNS):
    self.drop, self.max_nouns = drop, max_nouns

  def random_map(self, el, rng):
    el = dict(el)
    table = el.pop("caption_concepts")
    nouns = np.full(self.max_nouns, -1, np.int32)
    rows = np.flatnonzero((table >= 0).any(1))
    if len(rows):
      ids = table[rows[rng.integers(len(rows))]]
      ids = ids[ids >= 0]
      ids = ids[rng.random(len(ids)) >= self.drop][:self.max_nouns]
      nouns[:len(ids)] = ids
    el["caption_nouns"] = nouns
    return el
