"""Segmenting images as a library: a jitted image -> class-id function for a fixed model and
vocabulary, and the prediction pictures (used by `predict`, the trainer's evaluators and tests)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ovs_jax import visualize
from ovs_jax.cli import ConfigError
from ovs_jax.inference import batching
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.engine import make_label_fn
from ovs_jax.inference.segmentation_model import SegmentationModel
from ovs_jax.methods.maskclip import maskclip_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_CACHE = Path(os.environ.get("OVS_JAX_CACHE", Path.home() / ".cache" / "ovs_jax"))


def list_images(spec: str) -> list[Path]:
  """Comma-separated files and/or folders -> image files, sorted (a file named twice counts once);
  clear errors when none."""
  files = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    p = Path(part)
    if p.is_dir():
      found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
      if not found:
        raise ConfigError(f"{p}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
      files += found
    elif p.exists():
      files.append(p)
    else:
      raise FileNotFoundError(f"{p}: no such image file or folder")
  if not files:
    raise ConfigError("no images given")
  seen = set()
  return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


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


def write_prediction(out_dir: Path, stem: str, image, label, names, gt=None) -> list[Path]:
  out_dir.mkdir(parents=True, exist_ok=True)
  overlay = visualize.overlay_with_legend(image, label, names)
  paths = [out_dir / f"{stem}_overlay.png", out_dir / f"{stem}_label.png"]
  overlay.save(paths[0])
  visualize.save_label_png(label, paths[1])
  if gt is not None:
    paths.append(out_dir / f"{stem}_compare.png")
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
