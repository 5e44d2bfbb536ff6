"""Device mesh and logical-axis rules: where parameters, optimizer state and batches live.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, ...); `RULES` maps each onto mesh
axes. A logical axis whose dimension the mesh axes do not divide stays replicated on that axis.
"""
from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes. FSDP shards the model width; tensor parallelism shards heads and
# MLP width. Axes not listed (norm, layers, None) are replicated.
RULES = (
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("proj", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", "tensor"),
)


def make_mesh(mesh_config=None, devices=None) -> jax.sharding.Mesh:
  """Mesh ('data', 'fsdp', 'tensor') from {'data': n, 'fsdp': n, 'tensor': n}; one -1 = the rest.

  Sizes without -1 must use every device, except on a single host, where a smaller mesh takes
  the first devices (e.g. {'data': 1} for a one-device reference run).
  """
  devices = jax.devices() if devices is None else devices
  sizes = {a: int((mesh_config or {}).get(a, 1)) for a in MESH_AXES}
  if not (mesh_config or {}):
    sizes["data"] = -1
  unknown = [a for a in sizes.values() if a == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh {sizes}: at most one axis may be -1")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if unknown:
    if len(devices) % fixed:
      raise ValueError(f"mesh {sizes}: {len(devices)} devices are not divisible by {fixed}")
    sizes = {a: (len(devices) // fixed if s == -1 else s) for a, s in sizes.items()}
  need = int(np.prod(list(sizes.values())))
  if need < len(devices) and jax.process_count() == 1 and -1 not in (mesh_config or {}).values():
    devices = devices[:need]  # an explicit smaller mesh on one host: its first devices
  if need != len(devices):
    raise ValueError(f"mesh {sizes} needs {int(np.prod(list(sizes.values())))} devices, "
                     f"have {len(devices)}")
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_mesh(spec, shape, mesh, rules=RULES) -> P:
  """One parameter's logical PartitionSpec -> a mesh PartitionSpec that divides its shape."""
  table = dict(rules)
  out, used = [], set()
  for name, dim in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    axis = table.get(name)
    if axis is None or axis in used or dim % mesh.shape[axis] or mesh.shape[axis] == 1:
      out.append(None)
    else:
      out.append(axis)
      used.add(axis)
  return P(*out)


def param_shardings(state, mesh, rules=RULES) -> dict:
  """Pure-dict NamedShardings for an nnx.State (or module) following its logical axis names."""
  specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
  shapes = nnx.to_pure_dict(state)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, logical_to_mesh(spec, x.shape, mesh, rules)),
                      specs, shapes, is_leaf=lambda s: isinstance(s, P))


def optimizer_shardings(optimizer, opt_state, params_shardings, mesh):
  """Optimizer-state leaves shaped like parameters follow them; scalars and counts replicate."""
  # multi_transform (per-group learning rates) leaves MaskedNode where a group has no state.
  masked = lambda x: isinstance(x, optax.MaskedNode)
  return optax.tree_map_params(optimizer, lambda x, s: x if masked(x) else s, opt_state, params_shardings,
                               transform_non_params=lambda _: replicated(mesh), is_leaf=masked)


def rules_from_config(config) -> tuple:
  """`config.sharding.rules` ([(logical axis, mesh axes)], replacing `RULES`) or the defaults."""
  rules = (config.get("sharding") or {}).get("rules") or ()
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"config.sharding.rules: {rule!r} is not a (logical axis, mesh axes) pair")
    for axis in (rule[1] if isinstance(rule[1], (list, tuple)) else [rule[1]]):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"config.sharding.rules: {rule!r} names mesh axis {axis!r}; expected {MESH_AXES}")
  return tuple(tuple(r) for r in rules) or RULES


def train_state_shardings(params, frozen, optimizer, opt_state, mesh, rules=RULES) -> dict:
  """Shardings of the trainer's state dict {step, params, frozen, opt_state, rng}.

  params/frozen: nnx.States (their logical names decide); opt_state: concrete or abstract.
  """
  rep = replicated(mesh)
  p_sh = param_shardings(params, mesh, rules)
  return {"step": rep, "params": p_sh, "frozen": param_shardings(frozen, mesh, rules),
          "opt_state": optimizer_shardings(optimizer, opt_state, p_sh, mesh), "rng": rep}


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated_parameters(state, shardings, threshold_bytes: int = 1 << 20) -> list[tuple[str, tuple, int]]:
  """Parameters of at least `threshold_bytes` left fully replicated on a mesh with fsdp/tensor > 1.

  state: pytree of arrays / ShapeDtypeStructs; shardings: the matching NamedShardings.
  Returns [(path, shape, bytes)], largest first: each is a parameter no rule shards (a missing
  logical name, or a dimension the mesh axis does not divide), so every device holds all of it.
  """
  found = []

  def visit(path, x, s):
    nbytes = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    model_parallel = s.mesh.shape.get("fsdp", 1) * s.mesh.shape.get("tensor", 1) > 1
    if nbytes >= threshold_bytes and model_parallel and s.is_fully_replicated:
      found.append(("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path),
                    tuple(x.shape), nbytes))
  jax.tree_util.tree_map_with_path(visit, state, shardings)
  return sorted(found, key=lambda t: -t[2])


def constrain_batch(x):
  """Activation constraint at a block boundary: leading (batch) dim over data×fsdp.

  A no-op outside a mesh context (single device, eager tests), so model code stays mesh-agnostic.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if n == 1 or x.shape[0] % n:
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))


class MeshJit:
  """A jitted function that traces, lowers and runs with `mesh` set (so `constrain_batch` and
  other activation constraints see it); `.lower(...)` works as on the jitted function."""

  def __init__(self, mesh, jitted):
    self.mesh, self.jitted = mesh, jitted

  def __call__(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(*args, **kwargs)
