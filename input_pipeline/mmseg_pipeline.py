"""mmsegmentation's training pipeline as MaskCLIP+'s configs write it
(`configs/maskclip_plus/zero_shot/*.py:24-35`): Resize(img_scale, ratio_range) keeping the aspect
ratio, RandomCrop(crop_size, cat_max_ratio=0.75), RandomFlip(0.5), PhotoMetricDistortion,
Normalize, Pad(crop_size, seg_pad_val=255). Normalisation is CLIP's here (the recipes' models
renormalise their ImageNet students, `methods/maskclip_plus.py`).
"""
from __future__ import annotations

import numpy as np
import grain

from input_pipeline import transforms as T


class MMSegResize(grain.transforms.RandomMap):
  """mmseg `Resize(img_scale=(a, b), ratio_range=(lo, hi), keep_ratio=True)`: r ~ U(lo, hi), then
  mmcv.imrescale to scale (a·r, b·r): factor min(max(scale) / long side, min(scale) / short side),
  sides int(x·factor + 0.5). (2048, 512): short side 512·r, long side at most 2048·r;
  (520, 520): long side 520·r."""

  def __init__(self, img_scale, ratio_range=(0.5, 2.0)):
    self.img_scale, self.ratio_range = tuple(img_scale), tuple(ratio_range)

  def random_map(self, el, rng):
    h, w = el["image"].shape[:2]
    r = rng.uniform(*self.ratio_range)
    long_edge, short_edge = max(self.img_scale) * r, min(self.img_scale) * r
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return T.resize(el, (int(h * f + 0.5), int(w * f + 0.5)))


def _rgb_to_hsv(img):
  """uint8 RGB -> float HSV in OpenCV's uint8 convention (H in [0, 180), S and V in [0, 255])."""
  x = img.astype(np.float32)
  v = x.max(-1)
  c = v - x.min(-1)
  s = np.where(v > 0, 255.0 * c / np.maximum(v, 1e-6), 0.0)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  safe = np.maximum(c, 1e-6)
  h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = np.where(c > 0, (h * 30.0) % 180.0, 0.0)
  return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv):
  h, s, v = hsv[..., 0] / 30.0, hsv[..., 1] / 255.0, hsv[..., 2]
  c = v * s
  x = c * (1 - np.abs(h % 2 - 1))
  z = np.zeros_like(c)
  k = np.floor(h).astype(int) % 6
  rgb = np.select([k[..., None] == i for i in range(6)],
                  [np.stack(t, -1) for t in ((c, x, z), (x, c, z), (z, c, x), (z, x, c), (x, z, c), (c, z, x))])
  return np.clip(rgb + (v - c)[..., None], 0, 255).round().astype(np.uint8)


class PhotoMetricDistortion(grain.transforms.RandomMap):
  """mmseg `PhotoMetricDistortion` (datasets/pipelines/transforms.py:838-943): each with probability
  0.5, brightness ± 32, contrast × U(0.5, 1.5) (before or after the HSV steps, at random),
  saturation × U(0.5, 1.5), hue ± 18 (of 180); every step clipped to uint8."""

  def __init__(self, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18):
    self.brightness_delta, self.contrast_range = brightness_delta, contrast_range
    self.saturation_range, self.hue_delta = saturation_range, hue_delta

  @staticmethod
  def _convert(x, alpha=1.0, beta=0.0):
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

  def random_map(self, el, rng):
    img = el["image"]
    if rng.integers(2):
      img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
      img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
    if rng.integers(2):
      hsv = _rgb_to_hsv(img)
      hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
      img = _hsv_to_rgb(hsv)
    if rng.integers(2):
      hsv = _rgb_to_hsv(img)
      hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-self.hue_delta, self.hue_delta)) % 180
      img = _hsv_to_rgb(hsv)
    if mode == 0 and rng.integers(2):
      img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
    return dict(el, image=img)


def mmseg_train(source, img_scale=(2048, 512), ratio_range=(0.5, 2.0), crop_size=(512, 512),
                cat_max_ratio=0.75, photometric=True, num_masks=None, with_masks=False):
  """The pipeline above as a `mappers.Mapper` (fixed output shape: padded to `crop_size`)."""
  from input_pipeline import mappers
  ops = [MMSegResize(img_scale, ratio_range), T.RandomCrop(crop_size, cat_max_ratio, source.ignore_label),
         T.RandomHorizontalFlip(0.5)]
  if photometric:
    ops.append(PhotoMetricDistortion())
  return mappers.Mapper(mappers._finish(ops, source, num_masks, with_masks, True, tuple(crop_size)))
