"""Load a trained model from a training workdir, on any device count (no data, no original mesh).

The workdir's `config.json` (written by the trainer: the resolved config and the method's
architecture record) rebuilds the model's shapes without reading any weights; orbax restores
parameters into the target shardings, so a checkpoint saved on one mesh loads on another.
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from ovs_jax import sharding
from ovs_jax.checkpointing import Checkpointer
from ovs_jax.interchange.errors import CheckpointError


def run_config(workdir) -> tuple[ml_collections.ConfigDict, dict | None]:
  """(config, architecture record) from `workdir/config.json`."""
  path = Path(workdir) / "config.json"
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


def write_run_config(workdir, config, architecture: dict) -> None:
  """`workdir/config.json`: the resolved config and the architecture record restore rebuilds from."""
  from etils import epath
  saved = dict(config.to_dict(), architecture=architecture)
  (epath.Path(workdir) / "config.json").write_text(json.dumps(saved, indent=2, default=str))


def restore_workdir(workdir, step: int | None = None, mesh=None):
  """-> (config, graphdef, state, step) with the newest (or given) checkpoint of `workdir`."""
  from ovs_jax.methods.registry import get_method
  from ovs_jax.train_step import init_train_state
  workdir = Path(workdir)
  config, architecture = run_config(workdir)
  try:
    method = get_method(config.get("method"))
  except ValueError as e:
    raise CheckpointError(f"{workdir / 'config.json'}: {e}") from None
  mesh = sharding.make_mesh({"data": -1}) if mesh is None else mesh
  ts = init_train_state(method, config, mesh, abstract=True, architecture=architecture)
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise CheckpointError(f"{workdir}: no checkpoints/ directory")
  ckpt = Checkpointer(ckpt_dir, use_async=False)
  try:
    found = ckpt.restore(ts.state, step=step)
  finally:
    ckpt.close()
  if found is None:
    raise CheckpointError(f"{ckpt_dir}: no readable checkpoint")
  step, state, _ = found
  return config, ts.graphdef, state, step
