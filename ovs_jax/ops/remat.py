"""Rematerialised layer stacks: keep only each layer's input for the backward pass."""
import jax
import jax.numpy as jnp
from flax import nnx


def remat_scan(layers, x, *args, per_layer=None, **kwargs):
  """x -> layers[-1](... layers[0](x, *args, **kwargs) ...), recomputing each layer in the backward pass.

  The layers must share one structure. Their parameters are stacked on the fly (the parameter tree
  and checkpoints keep one entry per layer) and run as a `lax.scan` of `jax.checkpoint`ed steps.
  A scan rather than `nnx.remat` in a Python loop: XLA:CPU expands remat's CSE barriers early, so
  unrolled recomputation is merged back into the forward pass and saves nothing. `per_layer`: a
  dict of arrays with a leading layer axis; layer i gets entry i of each as a keyword argument.
  """
  graphdef, _ = nnx.split(layers[0])
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(layer) for layer in layers])

  @jax.checkpoint
  def step(state, h, own):
    return nnx.merge(graphdef, state)(h, *args, **kwargs, **own)
  return jax.lax.scan(lambda h, xs: (step(*xs[:1], h, xs[1]), None), x, (stacked, per_layer or {}))[0]
