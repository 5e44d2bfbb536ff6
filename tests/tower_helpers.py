"""Shared by the image-tower tests (ConvNeXt, ModifiedResNet): load a PyTorch-named state dict into
an abstractly built tower, run it under jit, take its gradients, and read a full-size tower's
PyTorch names and shapes without allocating it."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.interchange.clip_keys import to_torch_layout
from ovs_jax.interchange.torch_state import import_state_dict


def load_tower(build, sd):
  """`build()`'s tower holding `sd` (built abstractly: random init would only be overwritten)."""
  model = nnx.eval_shape(build)
  import_state_dict(model, sd, source="random OpenCLIP state dict")
  return model


def run_jitted(model, fn, *arrays):
  """fn(model, *arrays) under jax.jit, as numpy arrays."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, *arrays):
    return fn(nnx.merge(graphdef, state), *arrays)
  return jax.tree.map(np.asarray, run(state, *map(jnp.asarray, arrays)))


def remat_grads(load, image_size):
  """Gradients {parameter path: array} of the summed squared embedding of one random image, from
  `load(remat=False)` and from `load(remat=True)`; asserts equal values."""
  rng = np.random.default_rng(2)
  pixels = jnp.asarray(rng.standard_normal((1, image_size, image_size, 3)), jnp.float32)

  def value_and_grads(model):
    value, grads = nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(pixels) ** 2)))(model)
    return value, {k: np.asarray(g[...]) for k, g in nnx.to_flat_state(grads)}
  (a, ga), (b, gb) = value_and_grads(load(remat=False)), value_and_grads(load(remat=True))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  return ga, gb


def torch_shapes(model, kinds=(nnx.Param, nnx.BatchStat)) -> dict[str, tuple]:
  """{PyTorch name: PyTorch-layout shape} of every `kinds` leaf of an abstract `model`; asserts
  that each leaf carries a logical axis name per dimension."""
  state = nnx.state(model, kinds)
  leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
  specs = jax.tree.leaves(nnx.get_partition_spec(state),
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
  shapes = {}
  for (path, leaf), spec in zip(leaves, specs, strict=True):
    key, value = to_torch_layout(tuple(str(p.key) for p in path),
                                 np.broadcast_to(np.float32(0), leaf.shape))  # no memory
    shapes[key] = value.shape
    assert len(spec.out_sharding) == len(leaf.shape), key
  return shapes
