"""Any NNX model <-> a flat PyTorch-layout state dict, with strict key and shape checks.

Covers every nnx.Param, nnx.BatchStat (BatchNorm running statistics) and BatchNorm step counter
(`layers.BatchCount`, a PyTorch int64 `num_batches_tracked`). Names follow the module
attribute paths (which mirror PyTorch's) and layouts follow `clip_keys.to_torch_layout`. Scanned
stacks (a `layers` node whose children are not indices) are written as separate `layers.{i}`
entries, so scan-over-layers is invisible outside JAX.
"""
from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from ovs_jax.interchange.clip_keys import from_torch_layout, to_torch_layout, torch_name
from ovs_jax.interchange.errors import raise_listed
from ovs_jax.layers import BatchCount

_EXCHANGED = (nnx.Param, nnx.BatchStat, BatchCount)  # what a PyTorch state dict holds
# BatchNorm's step counter, which eval-mode BatchNorm never reads: ignored where the model has none,
# and 0 where the file has none (PyTorch's BatchNorm._load_from_state_dict does the same).
_COUNTER_KEYS = re.compile(r".*num_batches_tracked")


def _param_leaves(model) -> tuple[dict, list[tuple[tuple[str, ...], object]]]:
  pure = nnx.to_pure_dict(nnx.state(model, _EXCHANGED))
  leaves = [(tuple(str(k.key) for k in path), v)
            for path, v in jax.tree_util.tree_flatten_with_path(pure)[0]]
  return pure, leaves


def _stacked_at(path: tuple[str, ...]) -> int | None:
  """Position of a scanned 'layers' node in `path`, or None."""
  for i, p in enumerate(path[:-1]):
    if p == "layers" and not path[i + 1].isdigit():
      return i
  return None


def export_state_dict(model, dtype=np.float32) -> dict[str, np.ndarray]:
  """Every parameter and batch statistic of `model` as {pytorch_name: array in PyTorch layout}."""
  out = {}
  for path, value in _param_leaves(model)[1]:
    value = np.asarray(jax.device_get(value))
    value = value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else dtype)  # torch.long
    s = _stacked_at(path)
    parts = ([(path, value)] if s is None else
             [(path[:s + 1] + (str(i),) + path[s + 1:], v) for i, v in enumerate(value)])
    for p, v in parts:
      name, v = to_torch_layout(p, v)
      out[name] = np.array(v, order="C")  # (ascontiguousarray would make scalars 1-d)
  return out


def import_state_dict(model, sd: dict[str, np.ndarray], *, source: str = "checkpoint",
                      ignore: str | None = None) -> None:
  """Load a PyTorch-layout state dict into `model` in place.

  Raises CheckpointError listing missing keys, unexpected keys and shape mismatches (expected
  PyTorch shapes), naming `source`. Keys matching the regex `ignore` are skipped; BatchNorm
  `num_batches_tracked` counters may be absent (0) or extra.
  """
  pure, leaves = _param_leaves(model)
  problems, used, values = [], set(), []
  for path, like in leaves:
    s = _stacked_at(path)
    n = 1 if s is None else like.shape[0]
    one_shape = like.shape if s is None else like.shape[1:]
    parts = []
    for i in range(n):
      p = path if s is None else path[:s + 1] + (str(i),) + path[s + 1:]
      name, want = to_torch_layout(p, np.zeros(one_shape, np.float32))
      if name not in sd and _COUNTER_KEYS.fullmatch(name):
        parts.append(np.zeros(one_shape, like.dtype))
        continue
      if name not in sd:
        problems.append(f"missing key {name!r} (expected shape {tuple(want.shape)})")
        continue
      used.add(name)
      got = np.asarray(sd[name])
      if got.shape != want.shape:
        problems.append(f"key {name!r} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        continue
      parts.append(from_torch_layout(p, got).astype(like.dtype))
    if len(parts) == n:
      values.append(parts[0] if s is None else np.stack(parts))
  extra = sorted(k for k in sd if k not in used and not _COUNTER_KEYS.fullmatch(k)
                 and not (ignore and re.fullmatch(ignore, k)))
  problems += [f"unexpected key {k!r}" for k in extra]
  if problems:
    raise_listed(f"{source} does not match the model", problems)
  treedef = jax.tree_util.tree_structure(pure)
  new_pure = jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(v) for v in values])
  state = nnx.state(model, _EXCHANGED)
  nnx.replace_by_pure_dict(state, new_pure)
  nnx.update(model, state)


# Layout ops of `to_torch_layout`, by name (the key map's vocabulary).
LAYOUTS = {
    "transpose": "Linear kernel (in, out) -> weight (out, in)",
    "hwio_to_oihw": "Conv kernel (kh, kw, in, out) -> weight (out, in, kh, kw)",
    "rename": "LayerNorm/GroupNorm/BatchNorm scale, Embed embedding -> weight; BatchNorm mean, var "
              "-> running_mean, running_var (values unchanged)",
    "identity": "same name and values",
}


def key_map(model) -> dict[str, dict]:
  """{pytorch_name: {'path': 'a/b/leaf', 'layout': op, ['index': i for a scanned stack]}}."""
  out = {}
  for path, value in _param_leaves(model)[1]:
    s = _stacked_at(path)
    leaf = path[-1]
    layout = ("identity" if leaf not in ("kernel", "scale", "embedding", "mean", "var")
              else "rename" if leaf != "kernel"
              else "hwio_to_oihw" if len(value.shape) - (s is not None) == 4 else "transpose")
    for i in range(1 if s is None else value.shape[0]):
      p = path if s is None else path[:s + 1] + (str(i),) + path[s + 1:]
      entry = {"path": "/".join(path), "layout": layout}
      if s is not None:
        entry["index"] = i
      out[torch_name(p)] = entry
  return out
