"""Load a trained model from a training workdir, on any device count (no data, no original mesh).

The workdir's `config.json` (written by the trainer: the resolved config and the method's
architecture record) rebuilds the model's shapes without reading any weights; orbax restores
parameters into the target shardings, so a checkpoint saved on one mesh loads on another.
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_collections
from absl import logging

from ovs_jax import sharding
from ovs_jax.checkpointing import Checkpointer
from ovs_jax.interchange.errors import CheckpointError


def run_config(workdir) -> tuple[ml_collections.ConfigDict, dict | None]:
  """(config, architecture record) from `workdir/config.json` (local or gs://)."""
  from etils import epath
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{workdir}: no config.json; expected a training workdir written by ovs_jax.train")
  try:
    d = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  architecture = d.pop("architecture", None)
  if "clip_architecture" in d:  # workdirs written before the per-method record
    architecture = {"clip": d.pop("clip_architecture")}
  return ml_collections.ConfigDict(d), architecture


def write_run_config(workdir, config, architecture: dict, keep_previous_as: str | None = None) -> None:
  """`workdir/config.json`: the resolved config and the architecture record restore rebuilds from,
  replaced atomically; the previous one is first copied to `keep_previous_as` when given."""
  from etils import epath
  path = epath.Path(workdir) / "config.json"
  if keep_previous_as and path.exists():
    (path.parent / keep_previous_as).write_text(path.read_text())
  tmp = path.parent / "config.json.tmp"
  tmp.write_text(json.dumps(dict(_as_json(config), architecture=architecture), indent=2, default=str))
  tmp.replace(path)


def _as_json(config) -> dict:
  """The config as config.json stores it (tuples as lists, other objects as strings)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


# Keys that may differ when a run resumes: how it is logged, checkpointed, evaluated and laid out
# on devices (checkpoints are topology-independent), never what it computes.
RESUME_SAFE = ("train.log_every", "train.ckpt_every", "train.keep_checkpoints", "evals.*",
               "data.worker_count", "mesh.*", "sharding.*", "model.scan", "model.remat")
ABSENT = "(absent)"


def config_changes(saved: dict, config) -> list[tuple[str, object, object]]:
  """(dotted key, saved value, new value) for every value that differs (ABSENT where missing)."""
  from ovs_jax.config_check import flatten
  old, new = flatten(saved), flatten(_as_json(config))
  return [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
          if old.get(k, ABSENT) != new.get(k, ABSENT)]


def check_resume(workdir, config, allow=()) -> list[tuple[str, object, object]]:
  """Before a run touches `workdir`: if it holds checkpoints, compare `config` with its
  config.json. Differences outside RESUME_SAFE and the `allow` patterns (fnmatch, e.g.
  'train.steps', 'optim.*') raise ConfigError listing them; returns the allowed ones."""
  import fnmatch
  from etils import epath
  from ovs_jax.cli import ConfigError
  workdir = epath.Path(workdir)
  ckpt_dir = workdir / "checkpoints"
  if not (ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
    return []  # nothing to resume: the run starts afresh
  if not (workdir / "config.json").exists():
    logging.warning("%s has checkpoints but no config.json: cannot check the config against them",
                    workdir)
    return []
  saved, _ = run_config(workdir)
  changes = [c for c in config_changes(saved.to_dict(), config)
             if not any(fnmatch.fnmatchcase(c[0], p) for p in RESUME_SAFE)]
  refused = [c for c in changes if not any(fnmatch.fnmatchcase(c[0], p) for p in allow)]
  if refused:
    lines = "\n".join(f"  {k}: {old!r} (saved) -> {new!r} (now)" for k, old, new in refused)
    raise ConfigError(
        f"{workdir} holds checkpoints of a run with another config (its config.json); resuming would "
        f"silently continue that run with these changes:\n{lines}\nRe-run with the saved values, "
        "train the new config in another --workdir, or allow deliberate changes (e.g. more steps "
        "or a lower learning rate for fine-tuning) with --allow_config_change="
        + ",".join(k for k, _, _ in refused))
  return changes


def restore_workdir(workdir, step: int | None = None, mesh=None, *, params_only: bool = False,
                    dtype: str | None = None):
  """-> (config, graphdef, state, step) with the newest (or given) checkpoint of `workdir`.

  params_only: read the parameters (trained and frozen) but not the optimizer state, which is
  about twice the trained parameters and inference never uses (the state then has no
  "opt_state"). dtype: build the model computing in this dtype instead of `model.dtype`."""
  from ovs_jax.methods.registry import get_method
  from ovs_jax.train_step import init_train_state
  workdir = Path(workdir)
  config, architecture = run_config(workdir)
  if dtype and config.get("model", {}).get("dtype", dtype) != dtype:
    config.model.dtype = dtype
  try:
    method = get_method(config.get("method"))
  except ValueError as e:
    raise CheckpointError(f"{workdir / 'config.json'}: {e}") from None
  mesh = sharding.make_mesh({"data": -1}) if mesh is None else mesh
  ts = init_train_state(method, config, mesh, abstract=True, architecture=architecture)
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise CheckpointError(f"{workdir}: no checkpoints/ directory")
  target = {k: v for k, v in ts.state.items() if not (params_only and k == "opt_state")}
  ckpt = Checkpointer(ckpt_dir, use_async=False)
  try:
    found = ckpt.restore(target, step=step, partial=params_only)
  finally:
    ckpt.close()
  if found is None:
    raise CheckpointError(f"{ckpt_dir}: no readable checkpoint")
  step, state, _ = found
  return config, ts.graphdef, state, step
