"""The train state and the pure, jitted training step shared by every method.

state = {'step', 'params' (trainable parameters), 'frozen' (everything else), 'opt_state', 'rng'},
pure dicts placed by `sharding.train_state_shardings`. `init_train_state` builds it (or its
abstract, sharded shapes for restore and ahead-of-time compilation) and `jit_train_step` the
sharded step, for the trainer, restore, export, the benchmarks and the tests alike. A step with a
non-finite loss or gradient leaves the state unchanged and reports it, so training can stop with a
diagnostic and no checkpoint ever holds NaNs.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ovs_jax import layers, optim, sharding


@dataclasses.dataclass
class TrainState:
  """graphdef + state (arrays, or ShapeDtypeStructs with shardings when abstract), its shardings
  and the optimizer that made its opt_state."""
  graphdef: Any
  state: dict
  shardings: dict
  optimizer: optax.GradientTransformation


def init_train_state(method, config, mesh, *, abstract: bool = False, architecture=None,
                     model=None) -> TrainState:
  """The train state of `method` under `config` on `mesh`.

  abstract: shapes and shardings only (nothing allocated, no weights read). architecture: build
  from a saved architecture record instead of the config's weights. model: an already built model.
  """
  if model is None:
    build = lambda: method.build_model(config, architecture)
    model = nnx.eval_shape(build) if abstract else build()
  # The attention kernel is a static attribute of the graphdef (ops/attention.py).
  layers.set_attention(model, config.model.get("attention", "auto"))
  graphdef, params, frozen = nnx.split(model, optim.trainable_filter(config.frozen), ...)
  pure_params, pure_frozen = nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)
  optimizer = optim.make_optimizer(config.optim, config.train.steps, pure_params)
  opt_state = (jax.eval_shape if abstract else lambda f, x: f(x))(optimizer.init, pure_params)
  state = {"step": jnp.zeros((), jnp.int32), "params": pure_params, "frozen": pure_frozen,
           "opt_state": opt_state, "rng": jax.random.PRNGKey(config.seed)}
  shardings = sharding.train_state_shardings(params, frozen, optimizer, opt_state, mesh,
                                               sharding.rules_from_config(config))
  if abstract:
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  else:
    state = jax.device_put(state, shardings)
  return TrainState(graphdef, state, shardings, optimizer)


def jit_train_step(method, config, train_state: TrainState, mesh):
  """The sharded, state-donating step(state, batch, context) -> (state, metrics) of `method`."""
  def loss_fn(model, batch, rng, context):
    return method.loss(model, batch, rng, context, config)
  step = make_train_step(train_state.graphdef, loss_fn, train_state.optimizer, config.train.grad_accum)
  rep = sharding.replicated(mesh)
  return sharding.MeshJit(mesh, jax.jit(
      step, in_shardings=(train_state.shardings, sharding.batch_sharding(mesh), rep),
      out_shardings=(train_state.shardings, rep), donate_argnums=(0,)))


def make_train_step(graphdef, loss_fn, optimizer, grad_accum: int = 1):
  """loss_fn(model, batch, rng, context) -> (loss, {term: scalar}).

  Returns step(state, batch, context) -> (state, metrics). With `grad_accum` = k the batch is cut
  into k micro-batches whose gradients are averaged (same update as one k× larger batch).
  """

  def loss_of(params, frozen, batch, rng, context):
    return loss_fn(nnx.merge(graphdef, params, frozen), batch, rng, context)

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def step(state, batch, context):
    rng, step_rng = jax.random.split(state["rng"])
    params, frozen = state["params"], state["frozen"]
    if grad_accum == 1:
      (loss, terms), grads = grad_fn(params, frozen, batch, step_rng, context)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)
      rngs = jax.random.split(step_rng, grad_accum)
      first = grad_fn(params, frozen, jax.tree.map(lambda x: x[0], micro), rngs[0], context)

      def body(acc, xs):
        return jax.tree.map(jnp.add, acc, grad_fn(params, frozen, xs[0], xs[1], context)), None
      rest = jax.tree.map(lambda x: x[1:], micro)
      ((loss, terms), grads), _ = jax.lax.scan(body, first, (rest, rngs[1:]))
      loss, terms, grads = jax.tree.map(lambda x: x / grad_accum, (loss, terms, grads))
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
           "frozen": frozen, "opt_state": opt_state, "rng": rng}
    keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(finite, a, b), n, o)
    new["params"] = keep(new["params"], params)
    new["opt_state"] = keep(opt_state, state["opt_state"])
    metrics = dict(terms, loss=loss, grad_norm=grad_norm, finite=finite)
    return new, metrics

  return step


def compile_train_step(method, config, mesh, *, batch_size: int, height: int, width: int,
                       num_classes: int = 8, synonyms: int = 2):
  """The real sharded train step compiled ahead of time on `mesh` from abstract inputs (nothing is
  allocated or run) -> (compiled, abstract TrainState). For memory/sharding checks of a recipe."""
  lowered, ts = lower_train_step(method, config, mesh, batch_size=batch_size, height=height,
                                 width=width, num_classes=num_classes, synonyms=synonyms)
  return lowered.compile(), ts


def lower_train_step(method, config, mesh, *, batch_size: int, height: int, width: int,
                     num_classes: int = 8, synonyms: int = 2):
  """`compile_train_step` before XLA's optimisations -> (lowered, abstract TrainState): its
  `cost_analysis()` counts the step's FLOPs in seconds, without compiling (benchmarks/cost_model.py)."""
  model = nnx.eval_shape(lambda: method.build_model(config))
  ts = init_train_state(method, config, mesh, abstract=True, model=model)
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  spec = lambda s, sh: jax.ShapeDtypeStruct(s[0], jnp.dtype(s[1]), sharding=sh)
  is_spec = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)
  batch = {k: spec(v, batch_sh) for k, v in method.batch_spec(config, batch_size, height, width).items()}
  context = jax.tree.map(lambda s: spec(s, rep), method.context_spec(model, num_classes, synonyms),
                         is_leaf=is_spec)
  return jit_train_step(method, config, ts, mesh).lower(ts.state, batch, context), ts
