"""Global batches of one orientation on a shared canvas: detectron2's aspect-ratio grouping with
the static shapes jit needs.

detectron2 batches landscape (w > h) and portrait images separately and pads each batch to its
largest image rounded up to 32 (ImageList). Here the stream of record indices is cut into windows
of `window` records; each window is stably split into landscape then portrait records and cut
into global batches (at most one batch per window mixes the two), whose order is then shuffled.
A batch's canvas is the largest size its records can reach (the mapper's `size_bound` of each
source size, read from file headers), rounded up to `bucket`. Everything is a function of (seed,
index) and of the source sizes, so every host and worker plans the same batches and canvases
without exchanging anything, and resume stays exact.
"""
from __future__ import annotations

import collections

import grain
import numpy as np


def round_up(x, m: int):
  return -(-x // m) * m


def plan_window(hws, batch_size: int, size_bound, bucket: int, rng: np.random.Generator):
  """Source sizes (n, 2) of a window's records in stream order (n a multiple of batch_size) ->
  (order (n,): window positions in batch order, canvases (n // batch_size, 2))."""
  hws = np.asarray(hws).reshape(-1, 2)
  portrait = hws[:, 1] <= hws[:, 0]  # detectron2: bucket 0 if w > h else 1
  order = np.argsort(portrait, kind="stable").reshape(-1, batch_size)
  order = order[rng.permutation(len(order))]
  bounds = np.array([size_bound(tuple(hw)) for hw in hws]).reshape(-1, 2)
  canvases = round_up(bounds[order].max(1), bucket)
  return order.reshape(-1), canvases


class OrientationBatches(grain.MapDataset):
  """Record k of `parent` (a dataset of source indices) in grouped order -> {'index': source
  index, 'canvas_hw': (2,) int32 of its global batch}. Trailing records short of a batch drop."""

  def __init__(self, parent, batch_size: int, image_hw, size_bound, bucket: int = 32,
               window: int | None = None, seed: int = 0):
    super().__init__(parent)
    self._batch, self._hw, self._bound, self._bucket = batch_size, image_hw, size_bound, bucket
    self._window = round_up(window or 16 * batch_size, batch_size)
    self._seed, self._plans = seed, collections.OrderedDict()

  def __len__(self):
    return len(self._parent) // self._batch * self._batch

  def _plan(self, w):
    plan = self._plans.get(w)
    if plan is None:  # each worker plans the windows it reads, once (a few header reads each)
      start = w * self._window
      ids = [self._parent[i] for i in range(start, min(start + self._window, len(self)))]
      order, canvases = plan_window([self._hw(i) for i in ids], self._batch, self._bound,
                                    self._bucket, np.random.default_rng([self._seed, w]))
      plan = self._plans[w] = (np.asarray(ids)[order], canvases.astype(np.int32))
      if len(self._plans) > 4:
        try:
          self._plans.popitem(last=False)
        except KeyError:  # another read thread emptied it first
          pass
    return plan

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    w, p = divmod(k, self._window)
    ids, canvases = self._plan(w)
    return {"index": int(ids[p]), "canvas_hw": canvases[p // self._batch]}
