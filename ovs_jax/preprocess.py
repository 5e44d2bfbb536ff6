"""Image preparation for CLIP towers on the host (numpy). Files are decoded by
`input_pipeline.files.read_image`."""
from __future__ import annotations

import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 with CLIP's mean/std."""
  return (image.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
