"""Checkpoints are independent of the topology: saved on an 8-device FSDP mesh, restored on a
4-device data mesh and on one device into their own shardings, and training goes on."""
import jax
import numpy as np
import pytest

from ovs_jax import sharding
from ovs_jax.restore import restore_workdir
from tests.scale_helpers import assert_trees_close, tiny_config, train_steps


@pytest.mark.slow
def test_save_fsdp8_restore_data4_and_one_device(tmp_path):
  from ovs_jax.trainer import Run
  run = Run(tiny_config({"fsdp": 8}, steps=2), tmp_path)
  _, saved, _ = train_steps(run, 2)
  run.save(2, force=True)
  run.ckpt.close()
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(run.state["params"]))

  for mesh_config in ({"data": 4}, {"data": 1}):
    mesh = sharding.make_mesh(mesh_config)
    config, _, state, step = restore_workdir(tmp_path, mesh=mesh)
    assert step == 2 and int(state["step"]) == 2
    leaves = jax.tree.leaves(state["params"])
    assert all(x.sharding.mesh.devices.size == mesh.size for x in leaves)
    assert_trees_close(jax.device_get(state["params"]), saved, rtol=0, what=f"{mesh_config} restore")

  # Training continues on the 4-device data mesh from step 2 (same data position, same state).
  resumed = Run(tiny_config({"data": 4}, steps=3), tmp_path, allow_config_change=["train.steps"])
  assert resumed.mesh.size == 4
  assert resumed.restore() == 2
  assert_trees_close(jax.device_get(resumed.state["params"]), saved, rtol=0, what="resumed params")
  losses, params, _ = train_steps(resumed, 1)
  assert np.isfinite(losses[0]) and int(resumed.state["step"]) == 3
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved)))
  assert moved > 0
