"""Every config value checked before a run builds or writes anything.

`validate(config, workdir)` raises one `ConfigError` with a line per bad key, each naming the key,
the value and what is allowed (the table is `RULES`; keys a method's config does not have are
not checked). The workdir must be a directory this process can write, or creatable.
"""
from __future__ import annotations

import fnmatch
import math
import numbers
import os
from pathlib import Path

from ovs_jax.cli import ConfigError


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo=None, hi=None, note=""):
  """An integer in [lo, hi]."""
  bounds = (f" ≥ {lo}" if hi is None else f" in [{lo}, {hi}]") if lo is not None else ""
  return (lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
          f"an integer{bounds}" + (f" ({note})" if note else ""))


def number(lo=None, hi=None, lo_open=False, hi_open=False, note=""):
  """A finite number in the interval; open ends excluded."""
  def ok(v):
    return (_is_number(v) and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))
  if lo is not None and hi is not None:
    what = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  elif lo is not None:
    what = f"a number {'>' if lo_open else '≥'} {lo}"
  else:
    what = "a finite number"
  return ok, what + (f" ({note})" if note else "")


def one_of(*choices):
  return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def boolean():
  return (lambda v: isinstance(v, bool)), "True or False"


def sizes():
  return (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v),
          "a non-empty list of integers ≥ 1")


def scale_range():
  return (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v)
          and 0 < v[0] <= v[1]), "(lo, hi) with 0 < lo ≤ hi"


def steps_list():
  return (lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and x >= 0 for x in v)
          and list(v) == sorted(v)), "increasing step numbers ≥ 0"


def mesh_axis():
  return (lambda v: _is_int(v) and (v == -1 or v >= 1)), "an integer ≥ 1, or -1 (the remaining devices)"


def directory_or_empty():
  return (lambda v: isinstance(v, str) and (not v or "://" in v or Path(v).is_dir()),
          "an existing directory, or '' (the default data root)")


def _templates():
  from ovs_jax.templates import TEMPLATE_SETS
  return one_of(*TEMPLATE_SETS)


def _dtypes():
  from ovs_jax.methods.common import DTYPES
  return one_of(*DTYPES)


def _mappers():
  from input_pipeline.mappers import MAPPERS
  return one_of(*MAPPERS)


def _schedules():
  from ovs_jax.optim import SCHEDULES
  return one_of(*SCHEDULES)


def _datasets():
  from input_pipeline.datasets import dataset_names
  return one_of(*dataset_names())


def _methods():
  from ovs_jax.methods.registry import method_names
  return one_of(*method_names())


def _clip_weights():
  def ok(v):
    return isinstance(v, str) and v != "" and (v in ("demo", "random") or Path(v).exists())
  return ok, ("existing CLIP weights given with --config.clip.weights=PATH (an HF CLIP directory, an "
              "OpenCLIP file or an `ovs_jax.convert clip` directory; docs/interchange.md, CLIP "
              "weights), 'demo' or 'random'")


def _clip_arch():
  from ovs_jax.interchange.openclip import known_configs
  from ovs_jax.models.clip_family import arch_names
  names = sorted(set(arch_names()) | set(known_configs()))
  return (lambda v: isinstance(v, str) and (v in names or v.endswith(".json"))), (
      f"one of {names} or an OpenCLIP config .json")


# Key pattern (fnmatch over dotted keys) -> rule (predicate, what is allowed). Callables are
# resolved when validating (they read registries).
RULES = {
    "method": _methods,
    "seed": integer(0),
    "clip.weights": _clip_weights,
    "clip.templates": _templates,
    "clip.arch": _clip_arch,
    "model.dtype": _dtypes,
    "model.scan": boolean(), "model.remat": boolean(),
    "model.num_queries": integer(1), "model.hidden_dim": integer(1), "model.enc_layers": integer(1),
    "model.enc_ffn_dim": integer(1), "model.dec_layers": integer(1), "model.dec_ffn_dim": integer(1),
    "model.num_heads": integer(1), "model.deform_points": integer(1), "model.cdt_heads": integer(1),
    "model.cdt_mode": one_of("semantic", "panoptic"),
    "model.cdt_dense": one_of("official", "per_pixel"),
    "model.ensemble": one_of("none", "geometric"),
    "model.ensemble_alpha": number(0, 1), "model.ensemble_beta": number(0, 1),
    # SimZSS
    "vision.tower": one_of("dinov2", "clip"),
    "vision.denoiser_type": one_of("transformer", "none"),
    "model.text_init": one_of("random", "clip"),
    "model.class_embedding": one_of("eot", "concept"),
    "model.background_threshold": number(-1, 1, note="a cosine"),
    "model.init_temperature": number(0, lo_open=True),
    "loss.local_target": one_of("self", "label"),
    "loss.prototype_group": integer(0, note="samples per prototype group (the release: its per-GPU "
                                            "batch, 512); 0: the whole batch"),
    "loss.*_temperature": number(0, lo_open=True),
    "data.captions": one_of("coco", "demo", "webdataset"),
    "data.interpolation": one_of("bilinear", "bicubic"),
    "data.concept_extractor": one_of("match", "bank-match"),
    "loss.*_weight": number(0),
    "loss.num_points": integer(1),
    "loss.ignore_unlabelled_pixels": boolean(),
    "loss.oversample_ratio": number(1),
    "loss.importance_sample_ratio": number(0, 1),
    "data.train": _datasets,
    "data.train_max_images": integer(0, note="0: every image"),
    "data.unseen": one_of("", "zero_shot"),
    "data.root": directory_or_empty(),
    "data.train_mapper": _mappers,
    "data.min_size_train": sizes(),
    "data.min_size_train_sampling": one_of("choice", "range"),
    "data.max_size_train": integer(1),
    "data.crop_enabled": boolean(),
    "data.crop_size": integer(1),
    "data.cat_max_ratio": number(0, 1, lo_open=True),
    "data.train_bucket": integer(1),
    "data.scale_range": scale_range(),
    "data.num_masks": integer(1),
    "data.worker_count": integer(0, note="0: decode in the main process"),
    "data.skip_bad": boolean(),
    "evals.*.dataset": _datasets,
    "evals.*.split": one_of("train", "val"),
    "evals.*.every": integer(-1, note="N: every N steps and after the last; 0: after the last only; "
                                      "-1: never"),
    "evals.*.max_images": integer(0, note="0: the whole split"),
    "evals.*.short_side": integer(1), "evals.*.max_size": integer(1),
    "evals.*.batch_size": integer(0, note="0: one image per device"),
    "evals.*.num": integer(0),
    "evals.*.mode": one_of("whole", "slide"),
    "evals.*.window": integer(1), "evals.*.stride": integer(1),
    "optim.lr": number(0, lo_open=True),
    "optim.weight_decay": number(0),
    "optim.schedule": _schedules,
    "optim.poly_power": number(0, lo_open=True),
    "optim.warmup_steps": integer(0),
    "optim.decay_steps": steps_list(),
    "optim.decay_factor": number(0, lo_open=True),
    "optim.clip_norm": number(0, note="0: no clipping"),
    "optim.b1": number(0, 1, hi_open=True), "optim.b2": number(0, 1, hi_open=True),
    "optim.eps": number(0, lo_open=True),
    "optim.no_decay_1d": boolean(),
    "train.batch_size": integer(1),
    "train.steps": integer(1),
    "train.grad_accum": integer(1),
    "train.log_every": integer(0, note="0: the last step only"),
    "train.ckpt_every": integer(0, note="0: after the last step (and on SIGTERM) only"),
    "train.keep_checkpoints": integer(1),
    "mesh.data": mesh_axis(), "mesh.fsdp": mesh_axis(), "mesh.tensor": mesh_axis(),
}


def flatten(d: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1} (lists and tuples are values)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def bad_values(named: dict) -> list[str]:
  """{name: (value, rule)} -> a line 'name=value: expected ...' per value that breaks its rule."""
  out = []
  for name, (value, rule) in named.items():
    ok, allowed = rule() if callable(rule) else rule
    if not ok(value):
      out.append(f"{name}={value!r}: expected {allowed}")
  return out


def inference_flags(flags) -> dict:
  """The rules of the inference flags `evaluate` and `predict` share."""
  return {f"--{k}": (getattr(flags, k), integer(1)) for k in ("short_side", "max_size", "window", "stride")}


def validate_flags(named: dict) -> None:
  """ConfigError listing every command-line flag that breaks its rule ({'--flag': (value, rule)})."""
  if found := bad_values(named):
    raise ConfigError("invalid flags:\n  " + "\n  ".join(found))


def problems(config) -> list[str]:
  """One line per config value that breaks `RULES` or a rule between keys."""
  flat = flatten(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  out = bad_values({f"config.{key}": (flat[key], rule) for pattern, rule in RULES.items()
                    for key in sorted(k for k in flat if fnmatch.fnmatchcase(k, pattern))})
  mesh = [flat.get(f"mesh.{a}") for a in ("data", "fsdp", "tensor")]
  if mesh.count(-1) > 1:
    out.append(f"config.mesh={dict(zip(('data', 'fsdp', 'tensor'), mesh))}: at most one axis may be -1")
  weights = flat.get("vision.weights")
  if flat.get("vision.tower") == "dinov2" and not (weights == "random" or (weights and Path(weights).exists())):
    out.append(f"config.vision.weights={weights!r}: expected existing DINOv2-with-registers weights given "
               "with --config.vision.weights=PATH (an HF Dinov2WithRegisters directory or a timm file; "
               "docs/backbones.md) or 'random'")
  if flat.get("data.min_size_train_sampling") == "range" and len(flat.get("data.min_size_train", ())) != 2:
    out.append(f"config.data.min_size_train={flat['data.min_size_train']!r}: expected (lo, hi) with "
               "min_size_train_sampling='range'")
  return out


def workdir_problem(workdir) -> str | None:
  """Why `workdir` cannot hold a run (a file, not writable), or None. Remote paths are not checked."""
  if "://" in str(workdir):
    return None
  path = Path(workdir).absolute()
  existing = next(p for p in (path, *path.parents) if p.exists())
  if not existing.is_dir():
    return (f"workdir {workdir}: {existing} is a file, not a directory" if existing == path else
            f"workdir {workdir}: cannot be created, {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    return (f"workdir {workdir}: not writable (permission denied)" if existing == path else
            f"workdir {workdir}: cannot be created, {existing} is not writable")
  return None


def validate(config, workdir=None) -> None:
  """ConfigError listing every bad config value (and an unusable workdir) at once."""
  found = problems(config)
  if workdir is not None and (bad := workdir_problem(workdir)):
    found.append(bad)
  if found:
    raise ConfigError("invalid config:\n  " + "\n  ".join(found))
