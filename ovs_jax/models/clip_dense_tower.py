"""A CLIP image tower as a frozen (class embedding, dense map) feature extractor, for methods that
pair a frozen image tower with their own text side (SimZSS's CPU demo: the demo CLIP stands in
for DINOv2, of which no weights exist offline).

The class token is the CLIP image embedding; the patch tokens are MaskCLIP's dense features (the
last block's value path through the CLIP head), the CLIP features that are aligned position by
position. The CLIP's own text tower is dropped: nothing here would train or read it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from ovs_jax.models.clip import CLIPBase


class TowerOutput(NamedTuple):
  pooler_output: jax.Array  # (B, D): the image-level embedding
  patch_tokens: jax.Array   # (B, h, w, D)


class ClipDenseTower(nnx.Module):
  """`clip` (any CLIPBase) without its text side; `__call__(pixels) -> TowerOutput` in the CLIP
  embedding space (D = projection_dim)."""

  def __init__(self, clip: CLIPBase):
    clip.text_model = clip.text_projection = clip.logit_scale = None
    self.clip = clip

  @property
  def dense_stride(self) -> int:
    return self.clip.dense_stride

  @property
  def width(self) -> int:
    return self.clip.config.projection_dim

  def __call__(self, pixels) -> TowerOutput:
    return TowerOutput(self.clip.get_image_features(pixels),
                       self.clip.dense_features(pixels, maskclip=True))
