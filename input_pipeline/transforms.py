"""Per-record augmentation and formatting as grain transforms (numpy/PIL only: they run in workers).

Records are dicts (see source.py). Geometric transforms move `image` (H, W, 3) together with
every dense map present: `label` (filled with the ignore label) and `pan_seg` (filled with 0,
void). Resizing is bilinear for the image and nearest for the maps.
"""
import logging

import numpy as np
from PIL import Image
import grain

from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD  # numpy only: safe in grain workers

log = logging.getLogger(__name__)
DENSE = ("label", "pan_seg")


def _fill(key, ignore_label):
  return ignore_label if key == "label" else 0


def resize(el: dict, hw: tuple[int, int]) -> dict:
  """Resizes image (bilinear) and dense maps (nearest) to hw = (H', W')."""
  h, w = el["image"].shape[:2]
  if (h, w) == tuple(hw):
    return el
  out = dict(el)
  out["image"] = np.asarray(Image.fromarray(el["image"]).resize((hw[1], hw[0]), Image.BILINEAR))
  # Nearest by index arithmetic (pixel centres), exact for any integer dtype.
  rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
  for k in DENSE:
    if k in el:
      out[k] = el[k][rows[:, None], cols[None, :]]
  return out


def crop(el: dict, y: int, x: int, hw: tuple[int, int]) -> dict:
  out = dict(el)
  for k in ("image",) + DENSE:
    if k in el:
      out[k] = el[k][y:y + hw[0], x:x + hw[1]]
  return out


class RandomResize(grain.transforms.RandomMap):
  """Scales the image to fit `target_size` (H, W) times a factor drawn from `scale_range`.

  The large-scale-jitter recipe: scale_range (0.1, 2.0) with target 1024 (COCO), or (0.5, 2.0)
  with the crop size (ADE/MaskFormer style).
  """

  def __init__(self, target_size, scale_range=(0.5, 2.0)):
    self.target_size, self.scale_range = tuple(target_size), tuple(scale_range)

  def random_map(self, el, rng):
    h, w = el["image"].shape[:2]
    s = rng.uniform(*self.scale_range) * min(self.target_size[0] / h, self.target_size[1] / w)
    return resize(el, (max(1, round(h * s)), max(1, round(w * s))))


class RandomResizedCrop(grain.transforms.RandomMap):
  """torchvision's RandomResizedCrop (CLIP-style training, SimZSS): a box of `scale` × the image
  area and aspect ratio in `ratio` (log-uniform), 10 tries, else the whole image centre-cropped to
  the nearest allowed ratio; resized to `size` (H, W) with PIL's `interpolation` ("bilinear" or
  "bicubic", antialiased as torchvision on PIL images). Images only (no dense maps)."""

  def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "bilinear"):
    self.size, self.scale, self.ratio = tuple(size), tuple(scale), tuple(ratio)
    self.resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]

  def box(self, h, w, rng) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop, as torchvision's `get_params`."""
    area, log_ratio = h * w, np.log(self.ratio)
    for _ in range(10):
      target = area * rng.uniform(*self.scale)
      aspect = np.exp(rng.uniform(*log_ratio))
      cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
      if 0 < cw <= w and 0 < ch <= h:
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    aspect = w / h
    if aspect < self.ratio[0]:
      cw, ch = w, int(round(w / self.ratio[0]))
    elif aspect > self.ratio[1]:
      ch, cw = h, int(round(h * self.ratio[1]))
    else:
      cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw

  def random_map(self, el, rng):
    top, left, ch, cw = self.box(*el["image"].shape[:2], rng)
    image = Image.fromarray(el["image"]).resize((self.size[1], self.size[0]), self.resample,
                                                box=(left, top, left + cw, top + ch))
    return dict(el, image=np.asarray(image))


def shortest_edge_size(hw, short_edge: int, max_size: int | None = None) -> tuple[int, int]:
  """detectron2's ResizeShortestEdge.get_output_shape: the short side becomes `short_edge`; if the
  long side would pass `max_size`, both scale down so it equals `max_size`; int(x + 0.5) rounding."""
  h, w = hw
  scale = short_edge / min(h, w)
  newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
  if max_size and max(newh, neww) > max_size:
    scale = max_size / max(newh, neww)
    newh, neww = newh * scale, neww * scale
  return int(newh + 0.5), int(neww + 0.5)


class ResizeShortestEdge(grain.transforms.RandomMap):
  """Short side to a size drawn from `short_edge` (an int, or a tuple sampled as detectron2's
  MIN_SIZE_TRAIN_SAMPLING: 'choice' of one value, or 'range' [lo, hi]); long side <= max_size."""

  def __init__(self, short_edge, max_size: int | None = None, sample_style: str = "choice"):
    self.short_edge = (short_edge,) if isinstance(short_edge, int) else tuple(short_edge)
    if sample_style not in ("choice", "range") or (sample_style == "range" and len(self.short_edge) != 2):
      raise ValueError(f"sample_style {sample_style!r} with sizes {self.short_edge}: expected "
                       "'choice' (any number of sizes) or 'range' (two sizes, lo and hi)")
    self.max_size, self.sample_style = max_size, sample_style

  @property
  def largest(self) -> int:
    return max(self.short_edge)

  def random_map(self, el, rng):
    if self.sample_style == "range":
      size = int(rng.integers(self.short_edge[0], self.short_edge[1] + 1))
    else:
      size = self.short_edge[0] if len(self.short_edge) == 1 else int(rng.choice(self.short_edge))
    return resize(el, shortest_edge_size(el["image"].shape[:2], size, self.max_size))


class RandomCrop(grain.transforms.RandomMap):
  """Crops `crop_size` (H, W) (or the whole side where the image is smaller).

  Category-area cap (detectron2's RandomCrop_CategoryAreaConstraint): up to 10 tries for a crop
  where no single class covers more than `cat_max_ratio` of the labelled pixels.
  """

  def __init__(self, crop_size, cat_max_ratio: float = 1.0, ignore_label: int = 255, tries: int = 10):
    self.crop_size, self.cat_max_ratio = tuple(crop_size), cat_max_ratio
    self.ignore_label, self.tries = ignore_label, tries

  def random_map(self, el, rng):
    h, w = el["image"].shape[:2]
    ch, cw = min(h, self.crop_size[0]), min(w, self.crop_size[1])
    for _ in range(self.tries if self.cat_max_ratio < 1 and "label" in el else 1):
      y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
      if self.cat_max_ratio >= 1 or "label" not in el:
        break
      lab = el["label"][y:y + ch, x:x + cw]
      counts = np.bincount(lab[lab != self.ignore_label].ravel())
      counts = counts[counts > 0]
      if len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum():
        break
    return crop(el, y, x, (ch, cw))


class RandomHorizontalFlip(grain.transforms.RandomMap):
  def __init__(self, prob: float = 0.5):
    self.prob = prob

  def random_map(self, el, rng):
    if rng.random() >= self.prob:
      return el
    out = dict(el)
    for k in ("image",) + DENSE:
      if k in el:
        out[k] = np.ascontiguousarray(el[k][:, ::-1])
    return out


class PadToSize(grain.transforms.Map):
  """Pads bottom/right to `size` (H, W), or to the record's `canvas_hw` (its batch's canvas, see
  grouping.py) when size is None: image with 0, label with ignore, pan_seg with void.

  Run it after Normalize, as detectron2's ImageList pads the normalised image: 0 is then the mean
  colour, not black. Labels padded with ignore make the mask targets 0 there (MAFT+'s
  `prepare_targets`). Adds `image_hw` (2,) int32, the unpadded extent.
  """

  def __init__(self, size=None, ignore_label: int = 255):
    self.size, self.ignore_label = (None if size is None else tuple(size)), ignore_label

  def map(self, el):
    size = self.size or tuple(int(v) for v in el["canvas_hw"])
    h, w = el["image"].shape[:2]
    if h > size[0] or w > size[1]:
      if self.size:
        raise ValueError(f"{el.get('file_name', 'record')}: {h}x{w} image exceeds the pad size "
                         f"{size[0]}x{size[1]}; resize or crop it first")
      # Only a skip_bad substitute (the next good record, of another size) can outgrow its plan.
      log.warning("%s: %dx%d exceeds its planned canvas %dx%d; cropped", el.get("file_name", "record"),
                  h, w, *size)
      el = crop(el, 0, 0, (min(h, size[0]), min(w, size[1])))
      h, w = el["image"].shape[:2]
    out = dict(el, image_hw=np.array([h, w], np.int32))
    pad = ((0, size[0] - h), (0, size[1] - w))
    out["image"] = np.pad(el["image"], pad + ((0, 0),))
    for k in DENSE:
      if k in el:
        out[k] = np.pad(el[k], pad, constant_values=_fill(k, self.ignore_label))
    return out


class Normalize(grain.transforms.Map):
  """image uint8 -> float32 (x - mean) / std with CLIP's statistics (on the 0..1 scale)."""

  def __init__(self, mean=CLIP_MEAN, std=CLIP_STD, dtype=np.float32):
    self.mean = np.asarray(mean, np.float32) * 255
    self.inv_std = 1 / (np.asarray(std, np.float32) * 255)
    self.dtype = dtype

  def map(self, el):
    image = el["image"].astype(np.float32)
    image -= self.mean  # in place: this runs on every pixel of every training image
    image *= self.inv_std
    return dict(el, image=image.astype(self.dtype, copy=False))


class SelectKeys(grain.transforms.Map):
  """Keeps only `keys` (drops variable-length fields such as file names before batching)."""

  def __init__(self, keys):
    self.keys = tuple(keys)

  def map(self, el):
    return {k: el[k] for k in self.keys if k in el}
