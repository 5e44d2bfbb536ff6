"""Evaluators as plug-ins, chosen by the config (big_vision's `evals`):

  config.evals.<name> = dict(type="miou" | "zero_shot" | "predictions", dataset=..., split=..., every=N, ...)

`every`: run at multiples of N steps and after the last step; 0: after the last step only;
-1: never. Each evaluator is built once per run and `run(segmenter_for, step, out_dir)` returns
{metric: value}; `segmenter_for(vocabulary)` gives the run's current model as a
`SegmentationModel` over that vocabulary (the method decides how).
"""
from __future__ import annotations

from ovs_jax.evaluators.miou import MIoU
from ovs_jax.evaluators.predictions import Predictions
from ovs_jax.evaluators.zero_shot import ZeroShotMIoU

TYPES = {"miou": MIoU, "predictions": Predictions, "zero_shot": ZeroShotMIoU}


def from_config(config) -> dict:
  """{name: evaluator} for `config.evals`; unknown types and keys are errors naming them."""
  out = {}
  for name, cfg in (config.get("evals") or {}).items():
    kind = cfg.get("type")
    if kind not in TYPES:
      raise ValueError(f"config.evals.{name}.type={kind!r}: expected one of {sorted(TYPES)}")
    out[name] = TYPES[kind](name, cfg, config)
  return out


def due(every: int, step: int, total: int) -> bool:
  if every < 0:
    return False
  return step == total or (every > 0 and step % every == 0)
