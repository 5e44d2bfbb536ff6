"""Reading images and label maps with errors that name the file and the problem.

Every image the project reads (datasets, evaluate, predict) goes through `read_image`: the file
as a person sees it in a viewer, i.e. the EXIF orientation applied (as detectron2's `read_image`)
and every PIL mode mapped to (H, W, 3) uint8 by `MODES` (table in docs/data.md, Image decoding).
"""
import hashlib
import io
import logging
import os
import struct

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # ADE-847 and COCO images are trusted local files

log = logging.getLogger(__name__)

ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels show as on a white page
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the PIL transpose that shows the image upright (the EXIF 2.32 table, as
# detectron2's _apply_exif_orientation and PIL.ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
# How each PIL mode becomes RGB uint8 (docs/data.md keeps the same table for users).
MODES = {
    "RGB": "as is",
    "RGBX": "padding byte dropped",
    "L": "grey copied to R, G, B",
    "1": "bilevel: 0 -> 0, 1 -> 255",
    "P": "palette colours (with transparency: composited on the background)",
    "I;16": "16-bit grey scaled by 255/65535 and rounded",
    "I;16L": "16-bit grey scaled by 255/65535 and rounded",
    "I;16B": "16-bit grey scaled by 255/65535 and rounded",
    "I;16N": "16-bit grey scaled by 255/65535 and rounded",
    "I": "32-bit integer grey scaled by 255/(2^31 - 1) (PGM/PPM: Pillow's 16-bit range, 255/65535); "
         "negative values are an error",
    "F": "float grey in [0, 1] scaled by 255; values outside [0, 1] or not finite are an error",
    "LA": "grey + alpha composited on the background",
    "La": "grey premultiplied by alpha, composited on the background",
    "PA": "palette + alpha composited on the background",
    "RGBA": "alpha composited on the background",
    "RGBa": "premultiplied alpha composited on the background",
    "CMYK": "PIL's CMYK -> RGB conversion (no ICC colour management)",
    "YCbCr": "PIL's YCbCr -> RGB conversion",
    "LAB": "PIL's CIELAB -> RGB conversion",
    "HSV": "PIL's HSV -> RGB conversion",
}


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


def _orientation(img: Image.Image) -> int:
  """The EXIF orientation tag (1-8; 1 = upright or no tag)."""
  try:
    value = img.getexif().get(EXIF_ORIENTATION, 1)
  except Exception:  # an unreadable EXIF block is ignored, as detectron2 does
    return 1
  return value if value in _TRANSPOSE else 1


def _upright(img: Image.Image) -> tuple[Image.Image, int]:
  orientation = _orientation(img)
  return (img.transpose(_TRANSPOSE[orientation]) if orientation != 1 else img), orientation


def _scaled(grey: np.ndarray, full_scale: float, path: str, what: str) -> np.ndarray:
  """Grey values in [0, full_scale] -> (H, W, 3) uint8, rounded; out-of-range values are an error."""
  lo, hi = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > full_scale:
    raise DataError(f"{path}: {what} image values span [{lo:g}, {hi:g}]; expected [0, {full_scale:g}]")
  out = np.round(grey.astype(np.float64) * (255.0 / full_scale)).astype(np.uint8)
  return np.repeat(out[..., None], 3, -1)


def _composite(color: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
  """(H, W, C) colour over ALPHA_BACKGROUND with (H, W) uint8 alpha -> (H, W, 3) uint8."""
  a = alpha.astype(np.float32)[..., None] / 255.0
  color = np.broadcast_to(color.astype(np.float32), alpha.shape + (3,))
  bg = np.asarray(ALPHA_BACKGROUND, np.float32)
  out = (color if premultiplied else color * a) + bg * (1.0 - a)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, path: str) -> np.ndarray:
  """Any PIL mode -> (H, W, 3) uint8 as `MODES` says."""
  mode = img.mode
  if mode not in MODES:
    raise DataError(f"{path}: unsupported image mode {mode!r}; supported: {', '.join(MODES)}")
  if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
    return _scaled(np.asarray(img), 65535, path, "16-bit")
  if mode == "I":
    return _scaled(np.asarray(img), 65535 if img.format == "PPM" else 2**31 - 1, path, "32-bit integer")
  if mode == "F":
    return _scaled(np.asarray(img), 1.0, path, "float")
  if mode in ("La", "RGBa"):
    arr = np.asarray(img)
    return _composite(arr[..., :-1], arr[..., -1], premultiplied=True)
  if mode in ("LA", "PA", "RGBA") or img.info.get("transparency") is not None:
    arr = np.asarray(img.convert("RGBA"))
    return _composite(arr[..., :3], arr[..., 3])
  return np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def decode_image(path: str, data: bytes | None = None) -> tuple[np.ndarray, int]:
  """(pixels (H, W, 3) uint8 upright, the EXIF orientation that was applied) of a file or its bytes."""
  img, orientation = _upright(_open(path, data))
  return to_rgb(img, path), orientation


def read_image(path: str, data: bytes | None = None) -> np.ndarray:
  """Decodes an image file (or its bytes) to (H, W, 3) uint8 RGB as a viewer shows it: EXIF
  orientation applied, every PIL mode mapped by `MODES` (alpha over ALPHA_BACKGROUND)."""
  return decode_image(path, data)[0]


def _png_exif_after_pixels(f) -> bool:
  """Whether a PNG's eXIf chunk comes after its first IDAT (PIL finds it only when decoding)."""
  f.seek(8)
  while True:
    head = f.read(8)
    if len(head) < 8:
      return False
    length, kind = struct.unpack(">I4s", head)
    if kind == b"eXIf":
      return True
    if kind == b"IEND":
      return False
    f.seek(length + 4, 1)


def image_size(path: str, data: bytes | None = None) -> tuple[int, int]:
  """(H, W) of an image file (or its bytes) as `read_image` returns it (EXIF orientation applied),
  from its header, without decoding the pixels."""
  try:
    with Image.open(io.BytesIO(data) if data is not None else path) as img:
      if img.format == "PNG" and "exif" not in img.info and _png_exif_after_pixels(img.fp):
        img.load()
      h, w = img.height, img.width
      return (w, h) if _orientation(img) in (5, 6, 7, 8) else (h, w)
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except Exception as e:
    raise DataError(f"{path}: cannot decode image header ({type(e).__name__}: {e})") from None


def read_label(path: str, data: bytes | None = None) -> np.ndarray:
  """Decodes a single-channel label map (PNG 8-bit/palette, 16-bit TIFF/PNG) to (H, W) uint8/uint16.

  The EXIF orientation is applied, as detectron2 reads label maps with `read_image` too. Palette
  PNGs give their indices (not colours). RGB label files are rejected: they usually mean a colour
  visualisation was given instead of the prepared id map.
  """
  img, _ = _upright(_open(path, data))
  if img.mode in ("RGB", "RGBA"):
    raise DataError(f"{path}: label map is {img.mode} colour; expected a single-channel id map "
                    "(run the dataset's preparation script)")
  arr = np.asarray(img)
  if arr.ndim != 2:
    raise DataError(f"{path}: label map has shape {arr.shape}; expected (H, W)")
  if arr.dtype == np.uint8 or arr.dtype == np.uint16:
    return arr
  if arr.dtype.kind == "f" and arr.size and not np.array_equal(arr, np.round(arr)):
    raise DataError(f"{path}: float label map with non-integer values; expected class ids")
  if arr.dtype.kind in "iuf" and arr.size and (arr.min() < 0 or arr.max() > 65535):
    raise DataError(f"{path}: label values span [{arr.min():g}, {arr.max():g}]; expected 16-bit ids")
  return arr.astype(np.uint16)


def read_panoptic_png(path: str, data: bytes | None = None) -> np.ndarray:
  """A COCO panoptic PNG (segment id = R + 256 G + 256² B) -> (H, W, 3) uint8, colours untouched."""
  img, _ = _upright(_open(path, data))
  if img.mode != "RGB":
    raise DataError(f"{path}: panoptic map is {img.mode}; expected an RGB PNG of segment ids")
  return np.asarray(img)


def check_size(what: str, hw, image_hw, path: str, orientation: int = 1) -> None:
  """DataError unless a map of size `hw` matches its image's (upright) size; `orientation`: the
  EXIF orientation applied to the image, named when the sizes differ."""
  if tuple(hw) != tuple(image_hw):
    turned = f" after its EXIF orientation {orientation}" if orientation != 1 else ""
    raise DataError(f"{path}: {what} is {hw[0]}x{hw[1]} (HxW) but its image is "
                    f"{image_hw[0]}x{image_hw[1]}{turned}")


def check_label(label: np.ndarray, image_hw: tuple[int, int], num_classes: int,
                ignore_label: int, path: str, orientation: int = 1) -> None:
  """Raises DataError unless `label` is (H, W) of the image with values in [0, C) or ignore."""
  check_size("label map", label.shape, image_hw, path, orientation)
  bad = (label >= num_classes) & (label != ignore_label)
  if bad.any():
    values = np.unique(label[bad])
    raise DataError(f"{path}: label values {values[:10].tolist()} are outside the class range "
                    f"[0, {num_classes}) and not the ignore label {ignore_label}")


def sha256(path: str) -> str:
  """Hex sha256 of a file, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


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
