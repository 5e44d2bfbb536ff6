"""Segmenting images as a library: a jitted image -> class-id function for a fixed model and
vocabulary, and the prediction pictures (used by `predict`, the trainer's evaluators and tests)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
from absl import logging

from ovs_jax import visualize
from ovs_jax.cli import ConfigError
from ovs_jax.inference import batching
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.engine import make_label_fn
from ovs_jax.inference.segmentation_model import SegmentationModel
from ovs_jax.methods.maskclip import maskclip_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_CACHE = Path(os.environ.get("OVS_JAX_CACHE", Path.home() / ".cache" / "ovs_jax"))


def list_images(specs: str | list[str]) -> list[Path]:
  """Files and/or folders -> image files, sorted (a file named twice counts once); clear errors
  when none. Each spec is one path, or several joined by commas; a name that itself holds a comma
  ('b,c.jpg') is found as long as the file exists. Folders are not searched recursively: their
  sub-folders are named in a warning."""
  files = []
  for spec in [specs] if isinstance(specs, str) else specs:
    for p in _split_paths(spec):
      if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        subdirs = sorted(f.name for f in p.iterdir() if f.is_dir())
        if subdirs:
          logging.warning("%s: %d sub-folder(s) not searched (%s); name them in --images to include them",
                          p, len(subdirs), ", ".join(subdirs[:5]) + (", ..." if len(subdirs) > 5 else ""))
        if not found:
          raise ConfigError(f"{p}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
      else:
        files.append(p)
  if not files:
    raise ConfigError("no images given")
  seen = set()
  return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


def _split_paths(spec: str) -> list[Path]:
  """'a.png,b,c.jpg' -> [a.png, 'b,c.jpg'] when the file 'b,c.jpg' exists: at each position the
  shortest run of comma-separated parts that names an existing path."""
  parts, out, i = spec.split(","), [], 0
  while i < len(parts):
    if not parts[i].strip():
      i += 1
      continue
    j = next((j for j in range(i, len(parts)) if Path(",".join(parts[i:j + 1]).strip()).exists()), None)
    if j is None:
      where = f" (in --images={spec!r}: commas separate paths)" if len(parts) > 1 else ""
      raise FileNotFoundError(f"{parts[i].strip()}: no such image file or folder{where}")
    out.append(Path(",".join(parts[i:j + 1]).strip()))
    i = j + 1
  return out


def output_names(paths: list[Path]) -> list[str]:
  """One distinct output name per input file: its stem; where stems collide (a.jpg, a.png) the
  file name; where those collide too (d1/a.jpg, d2/a.jpg) the path below the inputs' common
  folder with '/' as '__'. Names are compared case-insensitively, as macOS and Windows file
  systems do; inputs that still collide are refused, naming them."""
  root = Path(os.path.commonpath([p.resolve().parent for p in paths])) if paths else Path()
  ways = (lambda p: p.stem, lambda p: p.name,
          lambda p: str(p.resolve().relative_to(root)).replace(os.sep, "__"))
  names = [ways[0](p) for p in paths]
  for way in ways[1:]:
    counts = Counter(n.casefold() for n in names)
    names = [way(p) if counts[n.casefold()] > 1 else n for p, n in zip(paths, names)]
  groups = {}
  for p, n in zip(paths, names):
    groups.setdefault(n.casefold(), []).append(str(p))
  clashes = [g for g in groups.values() if len(g) > 1]
  if clashes:
    raise ConfigError(f"inputs would write the same output files: {clashes}; rename them or "
                     "predict them into separate --out folders")
  return names


class Segmenter:
  """A jitted (image -> class ids) function for a fixed model and vocabulary; images share one
  compiled function per canvas bucket. `model`: a CLIP (MaskCLIP over `vocabulary`) or any
  SegmentationModel."""

  def __init__(self, model, vocabulary=None, templates=("{}",), short_side=448,
               cache_dir=DEFAULT_CACHE / "text", *, mode="whole", window=448, stride=224,
               max_size=2560):
    if not isinstance(model, SegmentationModel):
      model = maskclip_model(model, vocabulary, templates=templates, cache_dir=cache_dir)
    self.names, self.params = model.class_names, model.params
    self.cfg = InferenceConfig(mode, short_side, max_size, window, stride).for_model(model.input_multiple)
    self._labels = make_label_fn(model, self.cfg)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) class ids at the original size."""
    (h, w), cfg = image.shape[:2], self.cfg
    resized = batching.resize_image(image, batching.inference_size((h, w), cfg.short_side, cfg.max_size))
    b = batching.pad_batch({"image": [resized]}, cfg, 0)
    out_shape = (batching.round_up(h, cfg.label_bucket), batching.round_up(w, cfg.label_bucket))
    label = self._labels(self.params, b["image"], b["image_hw"], np.array([[h, w]], np.int32), out_shape)
    return np.asarray(label[0, :h, :w])


def output_paths(out_dir: Path, stem: str, with_gt: bool) -> list[Path]:
  """The files `write_prediction` writes for one image."""
  return [out_dir / f"{stem}_{kind}.png" for kind in ("overlay", "label") + (("compare",) if with_gt else ())]


def check_outputs(out_dir: Path, stems: list[str], inputs: list, with_gt: bool) -> None:
  """ConfigError, before anything is written, when an output would replace an input (or a ground-
  truth file) or any existing file that an earlier `predict` into `out_dir` did not write (its
  summary.json lists what it wrote)."""
  planned = {p.resolve(): p for stem in stems for p in output_paths(out_dir, stem, with_gt)}
  for item in inputs:
    if isinstance(item, Path) and item.resolve() in planned:
      raise ConfigError(f"output {planned[item.resolve()]} would overwrite the input {item}; choose "
                        "another --out")
  ours = set()
  try:
    summary = json.loads((out_dir / "summary.json").read_text())
    ours = {Path(o).resolve() for r in summary.get("predicted", []) for o in r.get("outputs", [])}
  except (OSError, ValueError, AttributeError, TypeError):
    pass  # no (readable) summary: no file there is ours
  foreign = sorted(str(p) for p in planned.values()
                   if p.exists() and Path(readable_path(str(p))).resolve() not in ours)
  if foreign:
    raise ConfigError(f"--out {out_dir}: {len(foreign)} file(s) not written by an earlier predict would "
                      f"be overwritten ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                      "choose another --out or move them")


def readable_path(path: str) -> str:
  """A path as valid UTF-8 text (for summary.json): bytes that are not UTF-8, which Python holds as
  lone surrogates and strict JSON readers reject, become \\xNN escapes."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_prediction(out_dir: Path, stem: str, image, label, names, gt=None) -> list[Path]:
  out_dir.mkdir(parents=True, exist_ok=True)
  overlay = visualize.overlay_with_legend(image, label, names)
  paths = output_paths(out_dir, stem, gt is not None)
  overlay.save(paths[0])
  visualize.save_label_png(label, paths[1])
  if gt is not None:
    visualize.side_by_side([overlay, visualize.overlay_with_legend(image, gt, names)],
                           ["prediction", "ground truth"]).save(paths[-1])
  return paths


def demo_inputs(num: int):
  """The embedded demo dataset's first validation images, their labels and vocabulary."""
  from input_pipeline.demo import demo_dataset
  from input_pipeline.vocab import load_vocabulary
  ds = demo_dataset("val")
  records = [ds[i] for i in range(min(num, len(ds)))]
  return records, load_vocabulary("demo")
