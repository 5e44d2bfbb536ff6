"""Host side of inference: resize to the inference size and pad batches into bucketed canvases.

Canvas sides are rounded up to multiples of `bucket` (image) and `label_bucket` (original-size
labels), so a dataset compiles the eval step once per distinct bucket, never per image.
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
from PIL import Image

from input_pipeline.transforms import shortest_edge_size
from ovs_jax.cli import ConfigError


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """mode 'whole': the image at `short_side` (longer side ≤ max_size) in one pass; 'slide':
  window × window crops every `stride` pixels of that image, scores averaged where they overlap.
  Defaults: MAFT+'s test protocol (detectron2 INPUT.MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333)."""
  mode: str = "whole"
  short_side: int = 800
  max_size: int = 1333
  window: int = 448
  stride: int = 224
  bucket: int = 0            # image canvas sides: multiples of this; 0: the model's input
                             # multiple (detectron2's size_divisibility). Padding changes what
                             # the model sees, so larger buckets trade fidelity for compilations.
  label_bucket: int = 128    # original-size label canvas sides
  row_chunk: int = 32        # output rows resized per pass (bounds memory at 847 classes)

  def __post_init__(self):
    if self.mode not in ("whole", "slide"):
      raise ConfigError(f"inference mode {self.mode!r}; expected 'whole' or 'slide'")
    if self.mode == "slide" and not 0 < self.stride <= self.window:
      raise ConfigError(f"stride {self.stride} must be in (0, window={self.window}]")

  def for_model(self, multiple: int) -> "InferenceConfig":
    """Resolves bucket 0 and checks the sizes against the model's input multiple."""
    cfg = self if self.bucket else dataclasses.replace(self, bucket=multiple)
    cfg.check_model(multiple)
    return cfg

  def check_model(self, multiple: int) -> None:
    sizes = {"bucket": self.bucket} | ({"window": self.window} if self.mode == "slide" else {})
    for name, v in sizes.items():
      if v % multiple:
        raise ConfigError(f"{name}={v} is not a multiple of the model's input multiple {multiple}")


def inference_size(hw, short_side: int, max_size: int | None) -> tuple[int, int]:
  """detectron2's ResizeShortestEdge: short side -> short_side, longer side capped at max_size."""
  h, w = shortest_edge_size(hw, short_side, max_size)
  return max(1, h), max(1, w)


def resize_image(image: np.ndarray, hw) -> np.ndarray:
  if tuple(image.shape[:2]) == tuple(hw):
    return image
  return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


class ResizeForEval(grain.transforms.Map):
  """record -> image resized for inference, `label` untouched (original size), `orig_hw`."""

  def __init__(self, short_side: int, max_size: int | None):
    self.short_side, self.max_size = short_side, max_size

  def map(self, el):
    hw = el["image"].shape[:2]
    out = {"image": resize_image(el["image"], inference_size(hw, self.short_side, self.max_size)),
           "orig_hw": np.array(hw, np.int32)}
    for k in ("label", "file_name", "valid"):
      if k in el:
        out[k] = el[k]
    return out


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def canvas_shapes(images, labels, cfg: InferenceConfig) -> tuple[tuple[int, int], tuple[int, int]]:
  """Bucketed (image canvas, label canvas), the same on every host."""
  least = cfg.window if cfg.mode == "slide" else 1
  hc = round_up(max(max(im.shape[0] for im in images), least), cfg.bucket)
  wc = round_up(max(max(im.shape[1] for im in images), least), cfg.bucket)
  hl = round_up(max(lab.shape[0] for lab in labels), cfg.label_bucket) if labels else 0
  wl = round_up(max(lab.shape[1] for lab in labels), cfg.label_bucket) if labels else 0
  shapes = np.array([hc, wc, hl, wl], np.int32)
  if jax.process_count() > 1:  # every host must build the same global shapes
    from jax.experimental import multihost_utils
    shapes = np.asarray(multihost_utils.process_allgather(shapes)).reshape(-1, 4).max(0)
  return (int(shapes[0]), int(shapes[1])), (int(shapes[2]), int(shapes[3]))


def pad_batch(batch: dict, cfg: InferenceConfig, ignore_label: int) -> dict:
  """Host batch with ragged `image` (and `label`) -> dense numpy fields:

  image (B, Hc, Wc, 3) uint8 (the padding is set to 0 after normalisation on device, see
  engine.class_scores), image_hw (B, 2), and with labels: label (B, Hl, Wl) padded with
  ignore_label, orig_hw (B, 2), valid (B,).
  """
  images = list(batch["image"])  # stacked or object arrays alike
  labels = list(batch["label"]) if "label" in batch else []
  (hc, wc), (hl, wl) = canvas_shapes(images, labels, cfg)
  out = {"image": np.zeros((len(images), hc, wc, 3), np.uint8),
         "image_hw": np.array([im.shape[:2] for im in images], np.int32)}
  for i, im in enumerate(images):
    out["image"][i, :im.shape[0], :im.shape[1]] = im
  if labels:
    out["label"] = np.full((len(labels), hl, wl), ignore_label, labels[0].dtype)
    for i, lab in enumerate(labels):
      out["label"][i, :lab.shape[0], :lab.shape[1]] = lab
    out["orig_hw"] = np.array([lab.shape for lab in labels], np.int32)
    out["valid"] = np.asarray(batch.get("valid", np.ones(len(labels), bool)), bool)
  return out
