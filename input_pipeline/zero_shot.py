"""The zero-shot protocol's training side: unseen classes leave the training data and vocabulary.

`config.data.unseen = "zero_shot"` trains on the seen classes of `config.data.train`'s split
(`input_pipeline.vocab.unseen_classes`): unseen-class pixels become the ignore label (no loss,
no mask target), seen classes are renumbered 0..S-1 in label order, and the training vocabulary
is the seen classes' names. Evaluation still uses the whole vocabulary
(`ovs_jax/evaluators/zero_shot.py`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline import vocab as vocab_lib

PROTOCOLS = ("", "zero_shot")


def unseen_for(dataset: str, protocol: str) -> list[int]:
  """Label ids `protocol` holds out of `dataset` ([] for protocol "")."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"unseen protocol {protocol!r}: expected '' (every class seen) or 'zero_shot'")
  if not protocol:
    return []
  if dataset not in vocab_lib.zero_shot_datasets():
    raise ValueError(f"{dataset} has no seen/unseen split; zero-shot splits exist for "
                     f"{', '.join(vocab_lib.zero_shot_datasets())}")
  return vocab_lib.unseen_classes(dataset)


def training_vocabulary(data_config) -> list[list[str]]:
  """The vocabulary a run trains on: its dataset's, without the unseen classes."""
  from input_pipeline.datasets import dataset_meta
  name = dataset_meta(data_config.train, "train").vocabulary
  unseen = set(unseen_for(data_config.train, data_config.get("unseen", "")))
  return [names for i, names in enumerate(vocab_lib.load_vocabulary(name)) if i not in unseen]


class SeenOnly:
  """A source whose records keep only seen-class labels, renumbered 0..S-1 (unseen -> ignore)."""

  def __init__(self, source, unseen: list[int]):
    meta = source.meta
    unseen = set(unseen)
    seen = [c for c in range(meta.num_classes) if c not in unseen]
    # One lookup for every stored value: seen c -> its new id, anything else -> ignore.
    self.lut = np.full(max(meta.ignore_label, meta.num_classes) + 1, meta.ignore_label, meta.label_dtype)
    self.lut[seen] = np.arange(len(seen))
    self.source, self.meta = source, dataclasses.replace(meta, num_classes=len(seen))

  num_classes = property(lambda self: self.meta.num_classes)
  ignore_label = property(lambda self: self.meta.ignore_label)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[i]
    if record is None:  # skipped as a bad record
      return None
    record = dict(record, label=self.lut[record["label"]])
    if "pan_seg" in record:  # panoptic: unseen segments become void, seen ones renumbered
      classes = self.lut[record["segment_classes"]].astype(np.int32)
      dropped = np.concatenate([[False], classes == self.meta.ignore_label])
      record["pan_seg"] = np.where(dropped[record["pan_seg"]], 0, record["pan_seg"])
      record["segment_classes"] = np.where(classes == self.meta.ignore_label, 0, classes)
    return record

  def __getattr__(self, name):
    return getattr(self.source, name)
