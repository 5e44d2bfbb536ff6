"""Image preparation for CLIP towers on the host (numpy/PIL)."""
from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def load_rgb(path) -> np.ndarray:
  """(H, W, 3) uint8 from an image file; one clear error if it cannot be decoded."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: image file not found") from None
  except Exception as e:
    raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 with CLIP's mean/std."""
  return (image.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
