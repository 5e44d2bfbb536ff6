"""GKC's per-segment synonym filter at training time: which synonyms each segment may draw.

`python -m input_pipeline.synonyms filter` lists, for every COCO panoptic segment, the synonyms of
its class that CLIP finds plausible on the segment's box crop (`synonym_filter.py`). With
`config.loss.synonym_filter` naming that file, `WithSegmentSynonyms` gives each record

  segment_synonyms  (N,) int32  bit k set: synonym k of the segment's class may be drawn

in segments-info order; `targets.PanopticToMasks` carries it to `mask_synonyms` (T,) in target
slot order, and `methods/gkc.draw_synonyms` draws uniformly among the set bits. A segment the
file does not list keeps every synonym (as without a filter).
"""
from __future__ import annotations

import os

import numpy as np

ALL = -1  # every bit: every synonym of the class
MAX_SYNONYMS = 31  # synonym indices a bitmask in an int32 holds


def bitmask(indices) -> int:
  bits = 0
  for i in indices:
    bits |= 1 << int(i)
  return bits


class WithSegmentSynonyms:
  """A COCO panoptic source whose records carry `segment_synonyms` from the filter file at `path`
  (checked against the synonym sets it indexes, `synonyms.load_segment_filter`)."""

  def __init__(self, source, path: str, synonyms):
    from input_pipeline.synonyms import load_segment_filter
    records = getattr(source, "records", None)
    if source.meta.kind != "panoptic" or records is None:
      raise ValueError(f"{path}: a per-segment synonym filter needs a COCO panoptic training set "
                       f"(segments with ids); {source.meta.name} has none "
                       "(unset config.loss.synonym_filter)")
    if synonyms.index.shape[1] > MAX_SYNONYMS:
      raise ValueError(f"{path}: classes of {synonyms.vocabulary} have up to "
                       f"{synonyms.index.shape[1]} synonyms; a filter holds at most {MAX_SYNONYMS}")
    kept = load_segment_filter(path, synonyms)
    self.source, self.bits, self.covered = source, [], 0
    for r in records[:len(source)]:
      segments = kept.get(os.path.basename(r["label_file"]))
      self.covered += segments is not None
      segments = segments or {}
      self.bits.append(np.array([bitmask(segments[s]) if s in segments else ALL
                                 for s in r["segment_ids"]], np.int32))

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    return None if record is None else dict(record, segment_synonyms=self.bits[i])

  def __getattr__(self, name):
    return getattr(self.source, name)
