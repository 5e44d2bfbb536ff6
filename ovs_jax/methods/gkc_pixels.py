"""GKC's input statistics: ImageNet mean/std on 0–255 pixels.

The release normalises with `MODEL.PIXEL_MEAN` [123.675, 116.28, 103.53] / `PIXEL_STD`
[58.395, 57.12, 57.375] (configs/coco/panoptic-segmentation/Base-COCO-PanopticSegmentation.yaml
6–7, applied in maskformer_model_voca_dense_kd_syn.py 420–421) although its student is CLIP's RN50;
only the teacher's crops get CLIP's statistics (KD mapper 381). The shared loader and evaluator
hand every method CLIP-normalised pixels, so GKC turns them into its own statistics here (one
affine map per channel), and sets the padding as the release has it: 128 grey before
normalisation in training (detectron2 FixedSizeCrop, pad_value=128), 0 after normalisation at test
time (ImageList.from_tensors).
"""
import jax.numpy as jnp
import numpy as np

from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD

STATS = {"imagenet": (np.array([123.675, 116.28, 103.53], np.float32),
                      np.array([58.395, 57.12, 57.375], np.float32)),
         "clip": (CLIP_MEAN * 255, CLIP_STD * 255)}
TRAIN_PAD = 128.0  # detectron2 FixedSizeCrop's pad_value (augmentation_impl.py:319)


def check(stats: str) -> str:
  if stats not in STATS:
    raise ValueError(f"config.model.pixel_stats={stats!r}: expected one of {sorted(STATS)}")
  return stats


def renormalize(pixels, valid, stats: str, pad: float | None = None):
  """pixels (B, H, W, 3) CLIP-normalised -> normalised with `stats`; outside `valid` (B, H, W):
  0 (pad None, test time) or the grey `pad` normalised (training)."""
  mean, std = STATS[check(stats)]
  raw = pixels.astype(jnp.float32) * (CLIP_STD * 255) + CLIP_MEAN * 255
  out = (raw - mean) / std
  fill = 0.0 if pad is None else (pad - mean) / std
  return jnp.where(valid[..., None], out, fill).astype(pixels.dtype)


def valid_from_hw(image_hw, shape):
  """(B, 2) unpadded extents -> (B, H, W) bool."""
  rows = jnp.arange(shape[1])[None, :, None] < image_hw[:, 0, None, None]
  cols = jnp.arange(shape[2])[None, None, :] < image_hw[:, 1, None, None]
  return rows & cols
