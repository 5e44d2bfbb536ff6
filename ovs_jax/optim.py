"""Optimizer from config: AdamW with per-group learning-rate multipliers, weight-decay masks,
a poly schedule with optional warmup, and global-norm clipping.

Groups are chosen by regexes over parameter paths ('clip/vision_model/encoder/layers/0/...'):
`config.optim.lr_multipliers` is a list of (regex, multiplier), first match wins, default 1.
With `config.optim.no_decay` (a regex), normalisation layers (modules with a `scale`) and the
parameters it matches get no weight decay and all others do (detectron2's WEIGHT_DECAY_NORM /
WEIGHT_DECAY_EMBED = 0); unset, no 0/1-d parameter decays, nor any whose path matches NO_DECAY.
Frozen parameters never reach the optimizer (see `trainable_filter`).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# No weight decay on norms, biases, embeddings, scales and other 0/1-d parameters.
NO_DECAY = re.compile(r".*(norm|/bias$|embedding|embed$|logit_scale|/scale$|query_feat|query_pos|level_embed)")


def path_str(path) -> str:
  """'a/b/0/kernel' from an nnx path or a jax key path (a Variable's `.value` step is dropped)."""
  keys = [getattr(k, "key", getattr(k, "idx", k)) for k in path
          if not isinstance(k, jax.tree_util.GetAttrKey)]
  return "/".join(map(str, keys))


def trainable_filter(frozen_patterns):
  """nnx filter: Params whose path matches none of the `frozen_patterns` regexes."""
  frozen = re.compile("|".join(f"(?:{p})" for p in frozen_patterns)) if frozen_patterns else None

  def keep(path, value):
    return isinstance(value, nnx.Param) and not (frozen and frozen.match(path_str(path)))
  return keep


def poly_schedule(lr, steps, power=0.9, warmup_steps=0):
  poly = optax.polynomial_schedule(lr, 0.0, power, max(1, steps - warmup_steps))
  if not warmup_steps:
    return poly
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), poly], [warmup_steps])


def make_optimizer(optim_config, total_steps, params) -> optax.GradientTransformation:
  """AdamW over `params` (an nnx.State of trainable parameters)."""
  c = optim_config
  multipliers = [(re.compile(p), float(m)) for p, m in c.get("lr_multipliers", [])]

  def group(path, _):
    name = path_str(path)
    return next((f"x{m:g}" for p, m in multipliers if p.match(name)), "x1")
  labels = jax.tree_util.tree_map_with_path(group, params)
  if c.get("no_decay"):  # detectron2-style: norm layers and the named tables; the rest decays
    exempt, names = re.compile(c.no_decay), {path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}

    def decays(p, x):
      module, _, leaf = path_str(p).rpartition("/")
      norm = leaf in ("scale", "bias") and f"{module}/scale" in names  # LayerNorm/GroupNorm
      return not (norm or exempt.match(path_str(p)))
    decay_mask = jax.tree_util.tree_map_with_path(decays, params)
  else:
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim > 1 and not NO_DECAY.match(path_str(p)), params)

  def adamw(mult):
    sched = poly_schedule(c.lr * mult, total_steps, c.get("poly_power", 0.9), c.get("warmup_steps", 0))
    return optax.adamw(sched, b1=c.get("b1", 0.9), b2=c.get("b2", 0.999), eps=c.get("eps", 1e-8),
                       weight_decay=c.weight_decay, mask=decay_mask)
  groups = {label: adamw(float(label[1:])) for label in set(jax.tree.leaves(labels))}
  chain = [optax.clip_by_global_norm(c.clip_norm)] if c.get("clip_norm") else []
  return optax.chain(*chain, optax.multi_transform(groups, labels))


def learning_rate(optim_config, total_steps, step):
  """The base learning rate at `step` (for logging)."""
  c = optim_config
  return poly_schedule(c.lr, total_steps, c.get("poly_power", 0.9), c.get("warmup_steps", 0))(step)


def global_norm(tree) -> jnp.ndarray:
  return optax.global_norm(tree)
