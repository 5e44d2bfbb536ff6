"""Evaluation as a library: benchmark loops, summaries and tables (the `evaluate` CLI and the
trainer's evaluators call these).

`evaluate(models, datasets, ...)` runs every model on every dataset and writes
<workdir>/results.json (every metric, per-class IoU/accuracy, the inference settings),
<workdir>/results.md (the tables) and <workdir>/per_class/<model>__<dataset>.md.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from input_pipeline.datasets import dataset_meta, get_dataset
from input_pipeline.files import DataError
from input_pipeline.vocab import load_vocabulary
from input_pipeline.zero_shot import unseen_for
from ovs_jax import metrics
from ovs_jax.cli import ConfigError
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.engine import evaluate_source
from ovs_jax.inference.segmentation_model import (checkpoint_method, open_checkpoint,
                                                  read_checkpoint_config, read_vocabulary)
from ovs_jax.methods.maskclip import clip_from_spec
from ovs_jax.methods.training_free import clip_method

DEFAULT_CACHE = Path(os.environ.get("OVS_JAX_CACHE", Path.home() / ".cache" / "ovs_jax"))
SUMMARY = ("mIoU", "fwIoU", "mACC", "pACC")
ZERO_SHOT = ("mIoU_seen", "mIoU_unseen", "hIoU")


def _finite(x):
  return None if isinstance(x, float) and math.isnan(x) else x


def summarize(counts: np.ndarray, class_names: list[str], num_images: int,
              miou_convention: str = metrics.DEFAULT_MIOU_CONVENTION, num_skipped: int = 0,
              unseen=None) -> dict:
  """Counts -> JSON-ready metrics: summary numbers, images scored (`num_images`) and skipped as
  unreadable (`num_skipped`), per-class IoU/ACC (None: no ground truth). With `unseen` (label ids
  of a zero-shot protocol): also mIoU_seen, mIoU_unseen, hIoU and the unseen class names."""
  m = metrics.segmentation_metrics(counts, miou_convention)
  out = {k: _finite(float(m[k])) for k in SUMMARY}
  if unseen is not None:
    out.update({k: _finite(v) for k, v in metrics.zero_shot_metrics(counts, unseen, miou_convention).items()})
    out["unseen_classes"] = [class_names[i] for i in sorted(unseen)]
  out["miou_convention"] = miou_convention
  out["num_images"] = num_images
  out["num_skipped"] = num_skipped
  out["per_class"] = {n: {"IoU": _finite(float(i)), "ACC": _finite(float(a)), "pixels": int(p)}
                      for n, i, a, p in zip(class_names, m["IoU"], m["ACC"], counts.sum(1))}
  return out


def results_table(results: dict, datasets: list[str], key: str = "mIoU") -> str:
  """Markdown table: one row per model, one column per benchmark; the mIoU header names its convention."""
  conventions = sorted({c["miou_convention"] for row in results.values() for c in row.values()
                        if "miou_convention" in c})
  label = f"mIoU, {'/'.join(conventions)} convention" if key == "mIoU" and conventions else key
  lines = [f"| model ({label}) | " + " | ".join(datasets) + " |", "| --- |" + " ---: |" * len(datasets)]
  for name, row in results.items():
    cells = [f"{row[d][key]:.1f}" if row.get(d, {}).get(key) is not None else "–" for d in datasets]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def per_class_table(result: dict) -> str:
  lines = ["| class | IoU | ACC | GT pixels |", "| --- | ---: | ---: | ---: |"]
  fmt = lambda v: "–" if v is None else f"{v:.2f}"
  for name, r in result["per_class"].items():
    lines.append(f"| {name} | {fmt(r['IoU'])} | {fmt(r['ACC'])} | {r['pixels']} |")
  return "\n".join(lines)


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def evaluate(models: dict, datasets: list[str], cfg: InferenceConfig, workdir: str | Path, *,
             split: str = "val", root: str | None = None, vocabulary: str | None = None,
             batch_size: int | None = None, max_images: int | None = None, workers: int = 0,
             skip_bad: bool = False, sources: dict | None = None,
             miou_convention: str = metrics.DEFAULT_MIOU_CONVENTION, protocol: str = "") -> dict:
  """Every model on every dataset; writes results.json/.md and per-class tables into workdir.

  models: {row name: factory(vocabulary) -> SegmentationModel}. vocabulary overrides each
  dataset's own (a shipped name, a file, or inline classes). sources: {name: source} to use
  instead of get_dataset (tests). miou_convention: see ovs_jax/metrics.py. protocol "zero_shot":
  also mIoU over each dataset's seen and unseen classes and hIoU (`input_pipeline/zero_shot.py`).
  Returns {model: {dataset: metrics}}.
  """
  metrics.check_miou_convention(miou_convention)
  check_request([d for d in datasets if d not in (sources or {})], split, vocabulary)
  unseen = {d: unseen_for(d, protocol) if protocol else None for d in datasets}  # fails before any work
  workdir = Path(workdir)
  (workdir / "per_class").mkdir(parents=True, exist_ok=True)
  batch_size = batch_size or jax.device_count()
  results, sources = {}, dict(sources or {})
  for d in datasets:
    if d not in sources:
      sources[d] = get_dataset(d, split, root, skip_bad=skip_bad)
    if len(sources[d]) == 0:
      raise ValueError(f"{d}/{split}: the dataset has no images")
  for model_name, factory in models.items():
    results[model_name] = row = {}
    for d in datasets:
      src = sources[d]
      vocab = read_vocabulary(vocabulary) if vocabulary else load_vocabulary(src.meta.vocabulary)
      model = factory(vocab)
      t = time.perf_counter()
      counts, n, skipped = evaluate_source(model, src, cfg, batch_size=batch_size,
                                           max_images=max_images, workers=workers,
                                           desc=f"{model_name} on {d}")
      if n == 0:
        raise DataError(f"{d}/{split}: no image could be read ({skipped} skipped as bad records; "
                        "see the warnings above)")
      row[d] = summarize(counts, src.class_names if not vocabulary else model.class_names, n,
                         miou_convention, skipped, unseen[d])
      row[d]["seconds"] = round(time.perf_counter() - t, 2)
      row[d]["model"] = model.name  # e.g. GKC's test-vocabulary rule
      logging.info("%s on %s: mIoU (%s) %.2f (%d images scored, %d skipped, %.1f s)", model_name, d,
                   miou_convention, row[d]["mIoU"] or float("nan"), n, skipped, row[d]["seconds"])
      (workdir / "per_class" / f"{_slug(model_name)}__{d}.md").write_text(per_class_table(row[d]) + "\n")
  payload = {"inference": dataclasses.asdict(cfg), "split": split, "miou_convention": miou_convention,
             "protocol": protocol or "all classes", "results": results}
  if jax.process_index() == 0:
    (workdir / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    (workdir / "results.md").write_text(
        "\n\n".join(results_table(results, datasets, k)
                      for k in SUMMARY + (ZERO_SHOT if protocol else ())) + "\n")
  return results


def check_request(datasets: list[str], split: str, vocabulary: str | None = None) -> None:
  """Raises ConfigError, before any model or data loads, for an unknown dataset or split, or a
  `vocabulary` whose class count differs from a dataset's (its label ids index the classes)."""
  metas = []
  for d in datasets:
    try:
      metas.append(dataset_meta(d, split))
    except KeyError as e:
      raise ConfigError(f"--datasets: {e.args[0]}") from None
  if vocabulary:
    n = len(read_vocabulary(vocabulary))
    wrong = [f"{m.name} has {m.num_classes}" for m in metas if m.num_classes != n]
    if wrong:
      raise ConfigError(f"--vocab {vocabulary!r} has {n} classes but {', '.join(wrong)}: a vocabulary "
                        "replacing a dataset's must give one class per label id, in label order")


def model_factories(clips: list[str], checkpoints: list[str], names: list[str], *, templates,
                    hidden_act=None, cache_dir=DEFAULT_CACHE / "text", precision="auto",
                    method: str = "maskclip", method_options: dict | None = None) -> dict:
  """Row name -> factory(vocabulary). CLIP weights load once; text classifiers per vocabulary.
  `method`, `method_options`: the training-free method each --clip row runs (default MaskCLIP)."""
  make = clip_method(method, method_options)  # a bad method or option fails before any loading
  specs = [("clip", s) for s in clips] + [("checkpoint", s) for s in checkpoints]
  if names and len(names) != len(specs):
    raise ValueError(f"--names gives {len(names)} names for {len(specs)} models")
  out = {}
  for i, (kind, spec) in enumerate(specs):
    if kind == "clip":
      clip = clip_from_spec(spec, hidden_act)
      label = "MaskCLIP" if method == "maskclip" else method
      default = f"{label} ({Path(spec).name or spec})"
      factory = lambda v, clip=clip: make(clip, v, templates=templates, cache_dir=cache_dir)
    else:
      checkpoint_method(*read_checkpoint_config(spec))  # fail before any data is read
      default = Path(spec).name
      opened = functools.cache(lambda spec=spec: open_checkpoint(  # restored once, on first use
          spec, templates=templates, cache_dir=cache_dir, precision=precision))
      factory = lambda v, opened=opened: opened()(v)
    out[names[i] if names else default] = factory
  return out
