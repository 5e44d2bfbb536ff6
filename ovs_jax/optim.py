"""Optimizer from config: AdamW with per-group learning-rate multipliers, weight-decay
exemptions, a learning-rate schedule and global-norm clipping — every value from `config.optim`.

Groups are chosen by regexes over parameter paths ('clip/vision_model/encoder/layers/0/...'):
`lr_multipliers` is a list of (regex, multiplier), first match wins, default 1. Weight decay
applies to every trainable parameter except normalisation layers (modules with a `scale`), those
whose path matches `no_decay` (a regex) and, with `no_decay_1d`, every 0/1-d parameter (biases,
scales, gains). `optimizer`: 'adamw' (default) or 'sgd' (momentum `momentum`, L2 weight decay added
to the gradient as torch.optim.SGD, mmseg's). Schedules (`schedule`): 'poly' (to `min_lr`, default
0, with `poly_power`: mmseg's (lr - min_lr)(1 - t/T)^p + min_lr), 'cosine' (to 0),
'step' (× `decay_factor` at each of `decay_steps`); each after `warmup_steps` of linear warmup.
Frozen parameters never reach the optimizer (see `trainable_filter`).
"""
from __future__ import annotations

import re

import jax
import optax
from flax import nnx

SCHEDULES = ("poly", "cosine", "step")


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


def lr_schedule(c, base_lr, total_steps) -> optax.Schedule:
  """The learning rate per step for `config.optim` c, scaled to `base_lr`."""
  kind, warmup = c.get("schedule", "poly"), int(c.get("warmup_steps", 0))
  if kind not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={kind!r}: expected one of {SCHEDULES}")
  rest = max(1, total_steps - warmup)
  if kind == "poly":
    main = optax.polynomial_schedule(base_lr, c.get("min_lr", 0.0), c.get("poly_power", 0.9), rest)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(base_lr, rest)
  else:  # boundaries count from step 0, as detectron2's / GKC's SOLVER.STEPS
    main = optax.piecewise_constant_schedule(
        base_lr, {max(0, int(b) - warmup): float(c.get("decay_factor", 0.1)) for b in c.get("decay_steps", ())})
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def make_optimizer(optim_config, total_steps, params) -> optax.GradientTransformation:
  """AdamW over `params` (an nnx.State of trainable parameters)."""
  c = optim_config
  if c.get("optimizer", "adamw") not in ("adamw", "sgd"):
    raise ValueError(f"config.optim.optimizer={c.optimizer!r}: expected 'adamw' or 'sgd'")
  multipliers = [(re.compile(p), float(m)) for p, m in c.get("lr_multipliers", [])]

  def group(path, _):
    name = path_str(path)
    return next((f"x{m:g}" for p, m in multipliers if p.match(name)), "x1")
  labels = jax.tree_util.tree_map_with_path(group, params)
  exempt = re.compile(c.no_decay) if c.get("no_decay") else None
  names = {path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}

  def decays(p, x):
    module, _, leaf = path_str(p).rpartition("/")
    norm = leaf in ("scale", "bias") and f"{module}/scale" in names  # LayerNorm/GroupNorm
    vector = c.get("no_decay_1d", False) and x.ndim <= 1
    return not (norm or vector or (exempt and exempt.match(path_str(p))))
  decay_mask = jax.tree_util.tree_map_with_path(decays, params)

  def adamw(mult):
    if c.get("optimizer", "adamw") == "sgd":
      return optax.chain(optax.add_decayed_weights(c.weight_decay, decay_mask),
                         optax.sgd(lr_schedule(c, c.lr * mult, total_steps), momentum=c.momentum))
    return optax.adamw(lr_schedule(c, c.lr * mult, total_steps), b1=c.b1, b2=c.b2, eps=c.eps,
                       weight_decay=c.weight_decay, mask=decay_mask)
  groups = {label: adamw(float(label[1:])) for label in set(jax.tree.leaves(labels))}
  chain = [optax.clip_by_global_norm(c.clip_norm)] if c.get("clip_norm") else []
  return optax.chain(*chain, optax.multi_transform(groups, labels))


def learning_rate(optim_config, total_steps, step):
  """The base learning rate at `step` (for logging)."""
  return lr_schedule(optim_config, optim_config.lr, total_steps)(step)
