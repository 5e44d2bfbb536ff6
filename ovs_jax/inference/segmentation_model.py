"""Segmentation models as evaluate/predict see them, and reading checkpoints of any method.

A checkpoint is a directory (or a file inside one, e.g. a step folder) whose `config.json` — here
or up to two levels above — names a method registered in `ovs_jax/methods/registry.py` as
`method` or `model.method`; that method's `open_checkpoint` loads it once and builds a
`SegmentationModel` per vocabulary.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from ovs_jax.interchange.errors import CheckpointError


@dataclasses.dataclass
class SegmentationModel:
  """apply(params, pixels (B, H, W, 3) CLIP-normalised float32, valid (B, H, W) bool)
  -> per-class scores (B, H, W, C), higher = more likely; argmax gives the label.

  params are passed to `apply` as a jit argument (never baked into the compiled program), so
  they can be sharded or swapped. H and W are multiples of `input_multiple`.
  """
  name: str
  apply: Callable[..., Any]
  params: Any
  class_names: list[str]
  input_multiple: int = 1

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


CONFIG_FILE = "config.json"


def method_names() -> list[str]:
  from ovs_jax.methods.registry import method_names as names
  return names()


def read_checkpoint_config(path: str | Path) -> tuple[Path, dict]:
  """-> (directory holding config.json, its contents); clear errors for anything else."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: checkpoint not found")
  for d in [path if path.is_dir() else path.parent, *path.parents][:3]:
    if (d / CONFIG_FILE).is_file():
      try:
        return d, json.loads((d / CONFIG_FILE).read_text())
      except json.JSONDecodeError as e:
        raise CheckpointError(f"{d / CONFIG_FILE}: not valid JSON ({e})") from e
  hint = " (a weights file? plain CLIP weights go to --clip)" if path.is_file() else ""
  raise CheckpointError(f"{path}: no {CONFIG_FILE} here or above{hint}; expected an ovs_jax "
                        f"checkpoint directory whose config names one of: {', '.join(method_names())}")


def checkpoint_method(directory: Path, config: dict) -> str:
  """The method a checkpoint config names; HF/other architectures are refused by name."""
  model_type = config.get("model_type") or (config.get("architectures") or [None])[0]
  if model_type and "method" not in config:
    if str(model_type).lower().startswith("clip"):
      raise CheckpointError(f"{directory}: plain CLIP weights ({model_type}), not a segmentation "
                            f"checkpoint; evaluate them with --clip={directory} (training-free MaskCLIP)")
    raise CheckpointError(f"{directory}: checkpoint of another architecture ({model_type}); expected "
                          f"an ovs_jax segmentation checkpoint of: {', '.join(method_names())}")
  model = config.get("model")
  method = config.get("method") or (model.get("method") if isinstance(model, dict) else None)
  if not method:
    raise CheckpointError(f"{directory / CONFIG_FILE}: names no method (expected key 'method' or "
                          f"'model.method', one of: {', '.join(method_names())})")
  if method not in method_names():
    raise CheckpointError(f"{directory}: checkpoint of another architecture (method {method!r}); "
                          f"supported: {', '.join(method_names())}")
  return method


def read_vocabulary(spec: str) -> list[list[str]]:
  """A shipped vocabulary name, else a text file, else inline classes ('sofa, couch; lamp'); files
  and inline text follow `input_pipeline.vocab.parse_vocabulary`'s grammar."""
  from input_pipeline.vocab import get_vocabulary, read_vocabulary_file, vocabulary_names
  if spec in vocabulary_names() or not Path(spec).is_file():
    return get_vocabulary(spec)
  return read_vocabulary_file(spec)


PRECISIONS = ("auto", "float32", "bfloat16")
IMPORTED_FILE = "imported.json"  # written by `convert from-official`: {"source", "precision"}


def inference_dtype(directory: Path, config: dict, precision: str = "auto") -> str | None:
  """The compute dtype to run a checkpoint in. auto: an imported official checkpoint's own
  evaluation precision (float32 for MAFT+: bfloat16 moves its scores by up to 5% of their range),
  else the run's `model.dtype`; float32 / bfloat16: that. None: the method has no such setting."""
  if precision not in PRECISIONS:
    from ovs_jax.cli import ConfigError
    raise ConfigError(f"--precision={precision!r}; expected one of {', '.join(PRECISIONS)}")
  if "dtype" not in (config.get("model") or {}):
    return None
  if precision == "auto":
    imported = directory / IMPORTED_FILE
    return json.loads(imported.read_text()).get("precision") if imported.is_file() else config["model"]["dtype"]
  return precision


def open_checkpoint(path: str | Path, precision: str = "auto", **options
                    ) -> Callable[[list[list[str]]], SegmentationModel]:
  """The checkpoint at `path`, loaded once, as `vocabulary -> SegmentationModel` of its method,
  computing in `precision` (`inference_dtype`)."""
  from ovs_jax.methods.registry import get_method
  directory, config = read_checkpoint_config(path)
  dtype = inference_dtype(directory, config, precision)
  if dtype and dtype != config["model"]["dtype"]:
    config = {**config, "model": {**config["model"], "dtype": dtype}}
  return get_method(checkpoint_method(directory, config)).open_checkpoint(directory, config, **options)


def build_from_checkpoint(path: str | Path, vocabulary: list[list[str]], **options) -> SegmentationModel:
  """The registered method's model for the checkpoint at `path` and this vocabulary."""
  return open_checkpoint(path, **options)(vocabulary)
