"""Mesh from config, logical rules, the replicated-parameter check, FSDP memory, and the same
training trajectory on data-parallel, FSDP and fsdp×tensor meshes as on one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ovs_jax import sharding
from tests.scale_helpers import assert_updates_close, tiny_config, train_steps

MESHES = {"data8": dict(data=8), "fsdp8": dict(fsdp=8), "fsdp2_tensor4": dict(fsdp=2, tensor=4)}


def test_make_mesh_from_config():
  assert dict(sharding.make_mesh({"data": -1, "fsdp": 2}).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert dict(sharding.make_mesh({"fsdp": 2, "tensor": 4}).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  assert sharding.make_mesh({"data": 1}).size == 1  # a smaller explicit mesh: the first devices
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh({"data": -1, "fsdp": -1})
  with pytest.raises(ValueError, match="not divisible"):
    sharding.make_mesh({"data": -1, "fsdp": 3})


def test_logical_rules_shard_only_dividing_axes():
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  assert sharding.logical_to_mesh(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_mesh(("embed", "mlp"), (63, 6), mesh) == P(None, None)
  assert sharding.logical_to_mesh(("norm",), (64,), mesh) == P(None)


def _abstract_state(mesh, config=None):
  """(graphdef, abstract state, optimizer), as `init_train_state(abstract=True)` builds them."""
  from ovs_jax.methods.registry import get_method
  from ovs_jax.train_step import init_train_state
  config = config or tiny_config({})
  ts = init_train_state(get_method(config.method), config, mesh, abstract=True)
  return ts.graphdef, ts.state, ts.optimizer


def test_replicated_parameter_check():
  mesh = sharding.make_mesh({"fsdp": 8})
  _, abstract, _ = _abstract_state(mesh)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  # Every parameter of >= 64 KiB is sharded by the rules under FSDP...
  assert sharding.replicated_parameters(abstract, shardings, threshold_bytes=1 << 16) == []
  # ...and the check names the ones a mesh leaves replicated (no rules at all here).
  rep = jax.tree.map(lambda x: sharding.replicated(mesh), abstract)
  found = sharding.replicated_parameters(abstract, rep, threshold_bytes=1 << 16)
  assert found and all(nbytes >= 1 << 16 for _, _, nbytes in found)
  assert any(path.startswith("params/clip/vision_model/encoder") for path, _, _ in found)
  # A data-parallel mesh replicates by design: nothing to report.
  data = sharding.make_mesh({"data": 8})
  assert sharding.replicated_parameters(abstract, jax.tree.map(lambda x: sharding.replicated(data), abstract),
                                        threshold_bytes=1 << 16) == []


def _state_bytes_per_device(mesh, config):
  """Per-device argument bytes of params + optimizer state (compiled memory analysis)."""
  _, abstract, optimizer = _abstract_state(mesh, config)
  sub = {k: abstract[k] for k in ("params", "opt_state")}
  sh = jax.tree.map(lambda x: x.sharding, sub)

  def update(s):  # an optimizer step with zero gradients: reads and writes exactly this state
    grads = jax.tree.map(jnp.zeros_like, s["params"])
    upd, opt = optimizer.update(grads, s["opt_state"], s["params"])
    return {"params": jax.tree.map(jnp.add, s["params"], upd), "opt_state": opt}
  compiled = jax.jit(update, in_shardings=(sh,), out_shardings=sh).lower(sub).compile()
  return compiled.memory_analysis().argument_size_in_bytes


def test_fsdp_divides_parameter_and_optimizer_memory():
  config = tiny_config({})
  one = _state_bytes_per_device(sharding.make_mesh({"data": 1}), config)
  fsdp = _state_bytes_per_device(sharding.make_mesh({"fsdp": 8}), config)
  assert fsdp <= one / 6, (one, fsdp)


@pytest.mark.slow
def test_meshes_match_single_device(tmp_path):
  """3 steps on each mesh = 3 steps on one device: losses ≤1e-5 relative, parameters within 1e-3
  of the update they made (`assert_updates_close`; Adam eps 1e-3, see `tiny_config`)."""
  import jax
  from ovs_jax.trainer import Run
  results, initial = {}, None
  for name, mesh in {"one": {}, **MESHES}.items():
    config = tiny_config(mesh)
    run = Run(config, tmp_path / name)
    assert run.mesh.size == (1 if name == "one" else 8)
    if initial is None:
      initial = jax.device_get(run.state["params"])
    results[name] = train_steps(run, 3)
  ref_losses, ref_params, _ = results.pop("one")
  for name, (losses, params, _) in results.items():
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=name)
    assert_updates_close(params, ref_params, initial, config.optim.lr, what=f"{name} params")
