"""Reading images and label maps with errors that name the file and the problem."""
import io
import logging
import os

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # ADE-847 and COCO images are trusted local files

log = logging.getLogger(__name__)


class DataError(ValueError):
  """A bad dataset record or folder; the message names the file and the problem."""


def _open(path: str, data: bytes | None) -> Image.Image:
  try:
    img = Image.open(io.BytesIO(data) if data is not None else path)
    img.load()
    return img
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except Exception as e:  # PIL raises many types for truncated/corrupt files
    raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def read_image(path: str, data: bytes | None = None) -> np.ndarray:
  """Decodes an RGB image file (or its bytes) to (H, W, 3) uint8."""
  img = _open(path, data)
  if img.mode != "RGB":
    img = img.convert("RGB")
  return np.asarray(img, dtype=np.uint8)


def image_size(path: str, data: bytes | None = None) -> tuple[int, int]:
  """(H, W) of an image file (or its bytes) from its header, without decoding the pixels."""
  try:
    with Image.open(io.BytesIO(data) if data is not None else path) as img:
      return img.height, img.width
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except Exception as e:
    raise DataError(f"{path}: cannot decode image header ({type(e).__name__}: {e})") from None


def read_label(path: str, data: bytes | None = None) -> np.ndarray:
  """Decodes a single-channel label map (PNG 8-bit/palette, 16-bit TIFF/PNG) to (H, W) uint8/uint16.

  Palette PNGs give their indices (not colours). RGB label files are rejected: they usually mean
  a colour visualisation was given instead of the prepared id map.
  """
  img = _open(path, data)
  if img.mode in ("RGB", "RGBA"):
    raise DataError(f"{path}: label map is {img.mode} colour; expected a single-channel id map "
                    "(run the dataset's preparation script)")
  arr = np.asarray(img)
  if arr.ndim != 2:
    raise DataError(f"{path}: label map has shape {arr.shape}; expected (H, W)")
  if arr.dtype == np.uint8 or arr.dtype == np.uint16:
    return arr
  if arr.dtype.kind in "iu" and arr.size and (arr.min() < 0 or arr.max() > 65535):
    raise DataError(f"{path}: label values span [{arr.min()}, {arr.max()}]; expected 16-bit ids")
  return arr.astype(np.uint16)


def check_label(label: np.ndarray, image_hw: tuple[int, int], num_classes: int,
                ignore_label: int, path: str) -> None:
  """Raises DataError unless `label` is (H, W) of the image with values in [0, C) or ignore."""
  if label.shape != tuple(image_hw):
    raise DataError(f"{path}: label map is {label.shape[0]}x{label.shape[1]} (HxW) but its image is "
                    f"{image_hw[0]}x{image_hw[1]}")
  bad = (label >= num_classes) & (label != ignore_label)
  if bad.any():
    values = np.unique(label[bad])
    raise DataError(f"{path}: label values {values[:10].tolist()} are outside the class range "
                    f"[0, {num_classes}) and not the ignore label {ignore_label}")


def read_bytes(path: str) -> bytes:
  """Reads a file's raw bytes, as DataError if it is missing or unreadable."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def list_files(directory: str, suffix: str, recursive: bool = False) -> list[str]:
  """Sorted paths (relative to `directory`) of files ending with `suffix`."""
  if not os.path.isdir(directory):
    raise DataError(f"{directory}: dataset folder not found")
  if not recursive:
    return sorted(f for f in os.listdir(directory) if f.endswith(suffix))
  out = []
  for root, _, files in os.walk(directory):
    rel = os.path.relpath(root, directory)
    out += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(suffix)]
  return sorted(out)


class SkipCounter:
  """Counts and logs records skipped as bad (per process: each grain worker keeps its own)."""

  def __init__(self, what: str):
    self.what = what
    self.count = 0
    self.messages = []  # the first 1000, for reports such as the prepare manifest

  def skip(self, err: Exception) -> None:
    self.count += 1
    if len(self.messages) < 1000:
      self.messages.append(str(err))
    log.warning("%s: skipping bad record (%d skipped so far in this process): %s",
                self.what, self.count, err)
