"""Train-state checkpoints: orbax CheckpointManager (async, keep-N, atomic) holding the state,
the data-iterator state and the resolved config together, with a checksum of the state.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or
SIGKILL never leaves a half-written step that looks finished. Orbax checks only its own index
(a crc32c on zarr3 shard indexes), not the array bytes, so every save also records a
`fingerprint` of each array in the step's `meta` (two sums of its bytes and its count of
non-finite values, independent of the mesh), and every restore recomputes and compares it: a
step whose bytes changed on disk is refused, not trained on. If the newest step cannot be read
or fails its checksum, restore moves it aside to `corrupt-<step>-<time>` and uses the newest
one that restores, saying so; when none does, the error lists each step's problem and says what
to move aside.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import grain
import jax
import numpy as np
from etils import epath
import orbax.checkpoint as ocp
from absl import logging

from ovs_jax.interchange.errors import CheckpointError


class CorruptCheckpointError(CheckpointError):
  """A checkpoint whose arrays differ from the checksums saved with it."""


def _storage_path(path) -> str:
  s = str(path)
  return s if "://" in s else str(Path(s).absolute())


_MIX = 2654435761  # Knuth's multiplicative hash constant: position weight of the second sum
_MOD = 2**32


def _shard_sums(data: np.ndarray, index: tuple, shape: tuple) -> np.ndarray:
  """[Σ w, Σ w·position, non-finite count] over one shard's 32-bit (or narrower) words w, with
  positions in the whole array (`index`: the shard's slices of `shape`), mod 2^32."""
  data = np.asarray(data, order="C")  # (ascontiguousarray would make scalars 1-d)
  if data.dtype == np.bool_:
    words = data.astype(np.uint64)
  else:
    words = data.view(f"uint{min(8 * data.dtype.itemsize, 32)}")
    if data.dtype.itemsize == 8:  # two words per value: one more axis
      words = words.reshape(data.shape + (2,))
      index, shape = tuple(index) + (slice(0, 2),), tuple(shape) + (2,)
  weighted, stride = 0, 1
  for axis in reversed(range(words.ndim)):  # Σ w·position, position = Σ_axis index·stride
    per_index = words.sum(axis=tuple(a for a in range(words.ndim) if a != axis), dtype=np.uint64)
    start = index[axis].start or 0
    positions = np.arange(start, start + words.shape[axis], dtype=np.uint64)
    weighted += int((per_index * positions).sum(dtype=np.uint64)) * stride
    stride *= shape[axis]
  inexact = data.dtype.kind in "fc" or data.dtype.name == "bfloat16"
  nonfinite = int(np.count_nonzero(~np.isfinite(data))) if inexact else 0
  return np.array([int(words.sum(dtype=np.uint64)) % _MOD, weighted % _MOD, nonfinite], np.int64)


def _leaf_sums(x) -> np.ndarray:
  """_shard_sums summed over this process's shards of `x` (each replicated shard counted once)."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    parts = [(np.asarray(s.data), s.index) for s in x.addressable_shards if s.replica_id == 0]
  else:
    x = np.asarray(x)
    parts = [(x, tuple(slice(0, n) for n in x.shape))]
  return sum((_shard_sums(d, i, x.shape) for d, i in parts), np.zeros(3, np.int64))


def fingerprint(state) -> dict[str, list[int]]:
  """{leaf path: [sum, position-weighted sum, non-finite count]} of every array in `state`. Sums
  of words mod 2^32 do not depend on the order of addition, so the fingerprint is the same for
  any mesh or process count (hosts add their shards with one all-gather)."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  sums = np.stack([_leaf_sums(x) for _, x in flat]) if flat else np.zeros((0, 3), np.int64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    sums = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, *sums.shape).sum(0)
  return {jax.tree_util.keystr(p): [int(a) % _MOD, (int(b) * _MIX + int(a)) % _MOD, int(c)]
          for (p, _), (a, b, c) in zip(flat, sums)}


def verify(state, saved: dict | None, where: str) -> None:
  """CorruptCheckpointError unless `state` matches the `saved` fingerprint (without one: unless
  every value is finite)."""
  got = fingerprint(state)
  if saved is None:
    logging.warning("%s has no checksums (written by an older version): only checked for "
                    "non-finite values", where)
    bad = [f"{k}: {v[2]} values not finite" for k, v in got.items() if v[2]]
  else:
    bad = [f"{k}: " + (f"{got[k][2]} values not finite where {v[2]} were saved" if got[k][2] > v[2]
                       else f"checksum {got[k][:2]} != saved {v[:2]}")
           for k, v in saved.items() if k in got and got[k] != v]
    bad += [f"{k}: missing" for k in saved.keys() - got.keys()]
  if bad:
    raise CorruptCheckpointError(f"{where}: {len(bad)} array(s) differ from what was saved (the "
                                 f"files were damaged): " + "; ".join(bad[:5])
                                 + (" ..." if len(bad) > 5 else ""))


class Checkpointer:

  def __init__(self, directory, *, keep: int = 3, use_async: bool = True):
    self.directory = _storage_path(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=use_async))

  def save(self, step: int, state, data_iterator=None, meta: dict | None = None, force=False) -> bool:
    if not force and not self.manager.should_save(step):
      return False
    meta = dict(meta or {}, checksums=fingerprint(state))
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(json.loads(json.dumps(meta, default=str)))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._writing():
      return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  @contextlib.contextmanager
  def _writing(self):
    """A save that cannot write (a full disk, a quota, a read-only mount) -> CheckpointError in
    one line; orbax writes into a temp dir, so the newest complete checkpoint stays as it was."""
    try:
      yield
    except OSError as e:
      self.manager.reload()
      done = self.steps()
      raise CheckpointError(
          f"cannot write a checkpoint in {self.directory} ({e.strerror or e}); the newest complete "
          f"one is {f'step {done[-1]}' if done else 'none'}: free space (or fix the path) and re-run "
          "the same command to resume from it") from e

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, abstract_state, data_iterator=None, step: int | None = None, partial=False):
    """(step, state, meta) from `step` or the newest checkpoint that restores and passes its
    checksums; None when there is none.

    abstract_state: pytree of jax.ShapeDtypeStruct with target shardings (topology may differ).
    partial: read only the top-level entries `abstract_state` has (inference: no optimizer state).
    Newer steps that fail while an older one restores are damaged and are moved aside; if every
    step fails (e.g. the checkpoints belong to another model or config), nothing is moved and
    the error lists each step's problem and what to move aside.
    """
    if step is not None:
      try:
        return self._restore(step, abstract_state, data_iterator, partial)
      except Exception as e:
        raise CheckpointError(_cannot(self.directory, step, e)) from e
    failed = []
    for s in self.steps()[::-1]:
      try:
        found = self._restore(s, abstract_state, data_iterator, partial)
      except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        failed.append((s, e))
        continue
      for bad, error in failed:
        self._quarantine(bad, error)
      return found
    if not failed:
      return None
    damaged = all(isinstance(e, CorruptCheckpointError) for _, e in failed)
    moved = f"{self.directory}.bad-{int(time.time())}"
    raise CheckpointError(
        "\n".join(_cannot(self.directory, s, e) for s, e in failed) + "\n"
        + ("Every checkpoint is damaged; " if damaged else
           "Do these checkpoints belong to another model or config? Train that config in another "
           "--workdir, or, ")
        + f"to start this run afresh, move them aside (nothing is deleted automatically): "
        f"mv {self.directory} {moved}")

  def _restore(self, step, abstract_state, data_iterator, partial=False):
    if partial:  # only the top-level entries of `abstract_state` (e.g. no optimizer state)
      restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(
          sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), abstract_state)
      state = ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args, partial_restore=True)
    else:
      state = ocp.args.StandardRestore(abstract_state)
    items = {"state": state, "meta": ocp.args.JsonRestore()}
    has_data = (epath.Path(self.directory) / str(step) / "data").exists()
    if data_iterator is not None and has_data:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    elif data_iterator is not None:  # e.g. a workdir imported from PyTorch
      logging.warning("checkpoint %s/%d has no data-iterator state; the data stream starts afresh",
                      self.directory, step)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    meta = dict(out["meta"] or {})
    saved = meta.pop("checksums", None)
    if saved is not None and partial:  # the parts not read have nothing to verify
      read = tuple(f"[{k!r}]" for k in abstract_state)
      saved = {k: v for k, v in saved.items() if k.startswith(read)}
    verify(out["state"], saved, f"{self.directory}/{step}")
    return step, out["state"], meta

  def _quarantine(self, step: int, error: Exception):
    path = epath.Path(self.directory) / str(step)
    aside = path.with_name(f"corrupt-{step}-{int(time.time())}")
    logging.error("checkpoint %s is unreadable or damaged (%s: %s); moved to %s, resuming from an "
                  "older one", path, type(error).__name__, str(error)[:300], aside)
    if path.exists():
      path.rename(aside)
    self.manager.reload()

  def wait(self):
    with self._writing():  # an async save fails here
      self.manager.wait_until_finished()

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()


def _cannot(directory, step, error) -> str:
  return f"{directory}/{step}: cannot restore ({type(error).__name__}: {' '.join(str(error).split())[:400]})"
