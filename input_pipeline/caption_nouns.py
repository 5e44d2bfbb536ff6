"""Caption nouns per training example, for GKC's caption grounding, as the release's data mapper
draws them (detr_panoptic_caption_syn_kd_dataset_mapper.py 333–363): one of the image's captions
at random, its POS-tagged nouns (`caption_tagging.py`), each dropped with p = 0.25 (all kept when
the draw would drop every one), at most 5 of them sampled at random, "-merged"/"-other" removed and
"-" read as a space (process_coco_cat), tokenized:

  caption_nouns  (5, NOUN_CONTEXT) int32  CLIP token ids of each noun, all-zero rows = none

The text tower embeds them in the step (the release encodes the tokens in every forward, model
430–432). NOUN_CONTEXT = 16 tokens: the causal tower pools at the EOT token, so a noun's
embedding does not depend on the padding after it.

Captions come from the dataset: the demo's generated captions (`demo.demo_captions`), or COCO
Captions (`coco/annotations/captions_{split}2017.json`) joined to COCO panoptic by image id. A
dataset without captions has none (`dataset_captions` returns None; grounding is then off).
Nothing here depends on an evaluation vocabulary.
"""
from __future__ import annotations

import json
import os

import grain
import numpy as np

MAX_NOUNS = 5  # num_max_world, KD mapper 349
NOUN_DROP = 0.25  # KD mapper 342-347
NOUN_CONTEXT = 16


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


class WithCaptions:
  """A source whose records carry `captions` (list of str): entry i of `captions`."""

  def __init__(self, source, captions: list[list[str]]):
    if len(captions) != len(source):
      raise ValueError(f"{len(captions)} caption lists for the {len(source)} records of "
                       f"{source.meta.name}/{source.meta.split}")
    self.source, self.captions = source, captions

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    return None if record is None else dict(record, captions=self.captions[i])

  def __getattr__(self, name):
    return getattr(self.source, name)


def clean_noun(noun: str) -> str:
  """process_coco_cat (release modeling/utils/misc.py 101–109) on one noun."""
  return noun.replace("-merged", "").replace("-other", "").replace("-", " ")


def draw_nouns(nouns: list[str], rng, drop: float = NOUN_DROP, max_nouns: int = MAX_NOUNS):
  """KD mapper 342–351: keep each noun whose uniform draw exceeds `drop` (all of them when none
  does), then `max_nouns` of them sampled without replacement when more remain."""
  keep = rng.random(len(nouns)) > drop
  if not keep.any():
    keep[:] = True
  nouns = [n for n, k in zip(nouns, keep) if k]
  if len(nouns) > max_nouns:
    nouns = [nouns[i] for i in rng.choice(len(nouns), max_nouns, replace=False)]
  return nouns


class DrawCaptionNouns(grain.transforms.RandomMap):
  """captions (list of str) -> caption_nouns (MAX_NOUNS, NOUN_CONTEXT): one caption's nouns."""

  def __init__(self, drop: float = NOUN_DROP, max_nouns: int = MAX_NOUNS):
    self.drop, self.max_nouns = drop, max_nouns

  def random_map(self, el, rng):
    from input_pipeline.caption_tagging import caption_nouns
    from ovs_jax import tokenizer
    el = dict(el)
    captions = el.pop("captions")
    tokens = np.zeros((self.max_nouns, NOUN_CONTEXT), np.int32)
    if captions:
      nouns = caption_nouns(captions[rng.integers(len(captions))])
      nouns = [clean_noun(n) for n in draw_nouns(nouns, rng, self.drop, self.max_nouns)]
      if nouns:
        tokens[:len(nouns)] = tokenizer.tokenize(nouns, NOUN_CONTEXT)
    el["caption_nouns"] = tokens
    return el
