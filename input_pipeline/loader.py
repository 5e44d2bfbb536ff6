"""Train and eval input pipelines on grain's dataset API.

Train: record indices -> global shuffle (reshuffled every epoch) -> repeat -> [grouping into
global batches of one orientation with a planned canvas, grouping.py, for mappers whose output
size varies] -> read -> the mapper's transforms -> this host's block of each global batch
(disjoint; same global batches for any host count) -> batch -> worker processes. Everything is a
function of (seed, index), so `it.get_state()` / `it.set_state()` (or grain.checkpoint with orbax)
resume on exactly the next batch, given the same host count (batches do not depend on
worker_count).

Eval: the split is padded to a multiple of process_count × local batch with records marked
`valid=False`, so every host runs the same number of steps (collectives need that); each host
gets a disjoint strided slice and together they cover the split once.
"""
from absl import flags
import grain
import numpy as np

from input_pipeline import grouping, mappers
from input_pipeline import transforms as T
from input_pipeline.files import DataError
from input_pipeline.mappers import Mapper
from input_pipeline.source import Source


def _host_shard(shard_index, shard_count):
  if shard_index is None or shard_count is None:
    opts = grain.sharding.ShardByJaxProcess()  # main process only: reads jax.process_index()
    shard_index, shard_count = opts.shard_index, opts.shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  return shard_index, shard_count


def _local_batch(global_batch_size, shard_count):
  if global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                     f"{shard_count} hosts")
  return global_batch_size // shard_count


def _apply(ds, ops, seed):
  for i, op in enumerate(ops):
    if isinstance(op, grain.transforms.RandomMap):
      ds = ds.random_map(op, seed=seed + 1000 * (i + 1))  # distinct stream per transform
    else:
      ds = ds.map(op)
  return ds


def _finish(ds, batch_size, worker_count, read_threads, batch_fn=None):
  # Batching the MapDataset (before workers) makes batch k the same records whatever the
  # worker count: workers take whole batches k::workers and grain interleaves them in order.
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=batch_fn)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=max(2, read_threads)))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; outside absl.app use their defaults
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2))
  return ds


class _NextGood:
  """Training view of a skip_bad source: a skipped record is replaced by the next good one in
  source order, so batches keep their size and stay deterministic."""

  def __init__(self, source: Source, max_tries: int = 100):
    self.source, self.max_tries = source, max_tries

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    for j in range(self.max_tries):
      rec = self.source[(index + j) % len(self.source)]
      if rec is not None:
        return rec
    raise RuntimeError(f"{self.source}: {self.max_tries} consecutive bad records from index "
                       f"{index}; see the warnings above")

  def image_hw(self, index):
    """Size of the record `index` stands for; a bad header moves on as __getitem__ does (a record
    whose header reads but whose decode fails can still differ: PadToSize crops it, warned)."""
    for j in range(self.max_tries):
      try:
        return self.source.image_hw((index + j) % len(self.source))
      except DataError:
        if not self.source.skip_bad:
          raise
    raise RuntimeError(f"{self.source}: {self.max_tries} consecutive unreadable image headers from "
                       f"index {index}")


class _Read(grain.transforms.Map):
  """{'index', 'canvas_hw'} (or a bare index) -> the record, with its planned canvas."""

  def __init__(self, source):
    self.source = source

  def map(self, el):
    if isinstance(el, dict):
      return dict(self.source[el["index"]], canvas_hw=el["canvas_hw"])
    return self.source[el]


def train_transforms(source: Source, crop_size=(512, 512), scale_range=(0.5, 2.0),
                     cat_max_ratio: float = 0.75, num_masks: int | None = None,
                     with_masks: bool = True, normalize: bool = True) -> list:
  """The lsj mapper's transforms (fixed crop_size shapes; see mappers.py)."""
  return mappers.lsj(source, crop_size, scale_range, cat_max_ratio, num_masks, with_masks, normalize).ops


def make_train_loader(source: Source, global_batch_size: int, transforms: list | Mapper | None = None,
                      *, seed: int = 0, num_epochs: int | None = None, shuffle: bool = True,
                      worker_count: int = 0, shard_index: int | None = None,
                      shard_count: int | None = None, read_threads: int = 2,
                      mapper: str = "mask_former_semantic", bucket: int = 32,
                      group_window: int = 16, **mapper_kwargs) -> grain.IterDataset:
  """This host's training batches: `it = iter(loader)`; `next(it)` -> dict of (B_local, ...).

  transforms: a Mapper, a list of fixed-shape transforms, or None for
  `mappers.build(mapper, source, **mapper_kwargs)`. A mapper with a size bound gets orientation
  batches on canvases rounded up to `bucket`, planned over windows of `group_window` global
  batches (grouping.py). num_epochs None repeats forever. shard_index/shard_count default to
  jax.process_index()/process_count(). Records a skip_bad source rejects are replaced by the next
  good record (and logged).
  """
  shard_index, shard_count = _host_shard(shard_index, shard_count)
  batch_size = _local_batch(global_batch_size, shard_count)
  if transforms is None:
    transforms = mappers.build(mapper, source, **mapper_kwargs)
  elif not isinstance(transforms, Mapper):
    transforms = Mapper(list(transforms))
  good = _NextGood(source)
  ds = grain.MapDataset.range(len(source))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if transforms.size_bound is not None:
    ds = grouping.OrientationBatches(ds, global_batch_size, good.image_hw, transforms.size_bound,
                                     bucket, group_window * global_batch_size, seed)
  # Transforms before the host slice: augmentation RNG follows the global index, not the host.
  ds = _apply(ds.map(_Read(good)), transforms.ops, seed)
  ds = _HostBlocks(ds, batch_size, shard_index, shard_count)
  return _finish(ds, batch_size, worker_count, read_threads)


class _HostBlocks(grain.MapDataset):
  """Host i of n reads records [i·b, (i+1)·b) of every global batch of n·b records, so the global
  array built from the hosts' local batches is the same batch, in the same order, whatever n is."""

  def __init__(self, parent, block, index, count):
    super().__init__(parent)
    self._block, self._index, self._count = block, index, count

  def __len__(self):
    return len(self._parent) // (self._block * self._count) * self._block

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    return self._parent[(k // self._block) * self._block * self._count + self._index * self._block
                        + k % self._block]


class _PaddedEval:
  """source + padding up to `total` records; adds `valid` (False for padding and skipped records).

  Padding repeats record i mod N (so shapes match the split's), marked invalid."""

  def __init__(self, source: Source, total: int):
    self.source, self.total = source, total

  def __len__(self):
    return self.total

  def __getitem__(self, index):
    rec = self.source[index % len(self.source)]
    if rec is None:  # padding, or a bad record the source skipped: a tiny all-ignore stand-in
      return {"image": np.zeros((8, 8, 3), np.uint8), "file_name": "",
              "label": np.full((8, 8), self.source.ignore_label, self.source.meta.label_dtype),
              "valid": False}
    return dict(rec, valid=index < len(self.source))


class _MarkValid(grain.transforms.MapWithIndex):
  def __init__(self, num_records):
    self.num_records = num_records

  def map_with_index(self, index, el):
    return dict(el, valid=bool(index < self.num_records and el.get("valid", True)))


def ragged_batch(elements):
  """Stacks fields of equal shape; fields whose shapes differ (e.g. label_orig) become an
  object array of per-record arrays."""
  out = {}
  for k in elements[0]:
    vals = [e[k] for e in elements]
    arrays = [np.asarray(v) for v in vals]
    if all(a.shape == arrays[0].shape and a.dtype != object for a in arrays):
      out[k] = np.stack(arrays)
    else:
      out[k] = np.empty(len(vals), object)
      out[k][:] = vals
  return out


def make_eval_loader(source: Source, global_batch_size: int, transforms: list, *,
                     worker_count: int = 0, shard_index: int | None = None,
                     shard_count: int | None = None, read_threads: int = 2) -> grain.IterDataset:
  """One pass over the split: this host's batches, padded (see module docstring).

  Each batch has `valid` (B,) bool, `label_orig` (object array of (H_i, W_i) maps, unless the
  transforms make them equal), `orig_hw` (B, 2) and the transformed fields.
  """
  shard_index, shard_count = _host_shard(shard_index, shard_count)
  batch_size = _local_batch(global_batch_size, shard_count)
  step = shard_count * batch_size
  total = -(-len(source) // step) * step
  ds = _apply(grain.MapDataset.source(_PaddedEval(source, total)), transforms, seed=0)
  # Re-derive `valid` after the transforms, so custom transforms cannot drop or fake it.
  ds = ds.map_with_index(_MarkValid(len(source)))
  ds = ds[shard_index::shard_count]
  return _finish(ds, batch_size, worker_count, read_threads, batch_fn=ragged_batch)
