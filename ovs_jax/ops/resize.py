"""The one resize of the library: bilinear, half-pixel centres, no antialiasing.

This is PyTorch's `F.interpolate(x, size, mode='bilinear', align_corners=False)`, which the official
Mask2Former / FC-CLIP / MAFT+ code uses for masks and feature maps (also when downsampling).
"""
import jax


def resize(x, height, width):
  """(B, H, W, C) -> (B, height, width, C)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, height, width, c), 'linear', antialias=False)


def resize_nchw(x, height, width):
  """(B, C, H, W) -> (B, C, height, width), e.g. mask logits (B, Q, H, W)."""
  return jax.image.resize(x, (*x.shape[:2], height, width), 'linear', antialias=False)
