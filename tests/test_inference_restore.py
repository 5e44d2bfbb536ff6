"""Inference opens a checkpoint once, reads its parameters only (not the optimizer state) and
computes in the precision asked for (an imported official checkpoint: float32)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax import restore
from ovs_jax.evaluation import model_factories
from ovs_jax.inference import segmentation_model
from ovs_jax.trainer import Run
from trainer_helpers import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2-step bfloat16 run (the step is a stand-in: no compilation) with one checkpoint."""
  w = tmp_path_factory.mktemp("run") / "w"
  run = Run(tiny_config(train__steps=2, train__ckpt_every=2, model__dtype="bfloat16"), w)

  def step(state, batch, context):  # moves the parameters and the optimizer state
    bump = lambda t: jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
    one = jnp.float32(1.0)
    return (dict(state, params=bump(state["params"]), opt_state=bump(state["opt_state"])),
            {"loss": one, "grad_norm": one, "finite": jnp.bool_(True)})
  run.train_step = step
  run.train()
  return w


def _nbytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def test_params_only_reads_the_same_parameters_and_no_optimizer_state(workdir):
  _, _, full, _ = restore.restore_workdir(workdir)
  _, _, light, _ = restore.restore_workdir(workdir, params_only=True)
  for k in ("params", "frozen"):
    for a, b in zip(jax.tree.leaves(full[k]), jax.tree.leaves(light[k])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert "opt_state" not in light
  assert _nbytes(full["opt_state"]) >= _nbytes(full["params"])  # what inference no longer reads


def _compute_dtypes(graphdef, state):
  model = nnx.merge(graphdef, state["params"], state["frozen"])
  return {jnp.dtype(m.dtype).name for _, m in nnx.iter_graph(model)
          if isinstance(m, nnx.Linear) and getattr(m, "dtype", None) is not None}


def test_restore_builds_the_model_in_the_asked_dtype(workdir):
  _, graphdef, state, _ = restore.restore_workdir(workdir, params_only=True)
  assert "bfloat16" in _compute_dtypes(graphdef, state)
  _, graphdef, state, _ = restore.restore_workdir(workdir, params_only=True, dtype="float32")
  assert _compute_dtypes(graphdef, state) == {"float32"}


def test_evaluate_opens_a_checkpoint_once_and_imported_ones_in_float32(workdir, monkeypatch):
  calls = []
  real = restore.restore_workdir
  monkeypatch.setattr(restore, "restore_workdir", lambda *a, **k: calls.append(k) or real(*a, **k))
  (factory,) = model_factories([], [str(workdir)], [], templates=("{}",), cache_dir=None).values()
  factory([["sky"], ["sea"]])
  factory([["sky"], ["sea"], ["sand"]])  # another dataset's vocabulary: same restored weights
  assert len(calls) == 1 and calls[0]["params_only"] and calls[0]["dtype"] == "bfloat16"
  (workdir / segmentation_model.IMPORTED_FILE).write_text(json.dumps({"precision": "float32"}))
  try:
    segmentation_model.open_checkpoint(workdir, templates=("{}",))
  finally:
    (workdir / segmentation_model.IMPORTED_FILE).unlink()
  assert calls[1]["dtype"] == "float32"
