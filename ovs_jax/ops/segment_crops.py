"""Segment crops on device: grey outside the mask, bounding-box crop, bicubic resize (as PIL).

GKC's distillation teacher embeds each ground-truth segment as CLIP sees a crop of it. Doing that
inside the jitted step needs a crop whose box is a traced value: the box crop and the resize are
one separable resampling matrix per axis, built from the box, so shapes stay fixed.
"""
import jax
import jax.numpy as jnp

GREY = 128.0


def pil_cubic(x):
  """PIL's bicubic kernel (a = −0.5, support 2)."""
  a = -0.5
  x = jnp.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def box_resize_weights(start, stop, in_size: int, out_size: int):
  """(out_size, in_size) weights of PIL's `crop((.., start, .., stop)).resize(..., BICUBIC)` along
  one axis: input pixels [start, stop) (traced ints) resampled to `out_size`. As PIL, the kernel
  widens by the scale when shrinking (antialiasing) and each row is renormalised over the pixels
  inside the box."""
  start = jnp.asarray(start, jnp.float32)
  length = jnp.asarray(stop, jnp.float32) - start
  scale = length / out_size
  support_scale = jnp.maximum(scale, 1.0)
  centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # in crop coordinates
  j = jnp.arange(in_size, dtype=jnp.float32) - start
  w = pil_cubic((j[None] + 0.5 - centre[:, None]) / support_scale)
  w = jnp.where((j >= 0) & (j < length), w, 0.0)
  return w / jnp.maximum(w.sum(-1, keepdims=True), 1e-12)


def mask_box(mask):
  """(H, W) bool -> (y0, x0, y1, x1) int32, the bounding box [y0, y1) × [x0, x1); the whole image
  for an empty mask (its crop is marked invalid by the caller)."""
  h, w = mask.shape
  rows, cols = mask.any(1), mask.any(0)
  empty = ~rows.any()
  y0, x0 = jnp.argmax(rows), jnp.argmax(cols)
  y1, x1 = h - jnp.argmax(rows[::-1]), w - jnp.argmax(cols[::-1])
  return tuple(jnp.where(empty, d, v).astype(jnp.int32)
               for v, d in ((y0, 0), (x0, 0), (y1, h), (x1, w)))


def segment_crop(image, mask, size: int, fill: float = GREY, exclusive_end: bool = False):
  """image (H, W, C) float (0–255 range), mask (H, W) bool -> (size, size, C) float32: pixels
  outside the mask set to `fill`, the mask's bounding box cut out and resized bicubically to
  size × size (aspect not kept), as PIL on a float image.

  exclusive_end: the box ends at the mask's last row and column, excluded, as GKC's
  `img.crop([w_min, h_min, w_max, h_max])` (its KD mapper, line 323) with PIL's exclusive right
  and lower edge; at least one pixel is kept (a one-pixel-wide segment crashes the release)."""
  h, w = mask.shape
  y0, x0, y1, x1 = mask_box(mask)
  if exclusive_end:
    y1, x1 = jnp.maximum(y1 - 1, y0 + 1), jnp.maximum(x1 - 1, x0 + 1)
  filled = jnp.where(mask[..., None], image.astype(jnp.float32), fill)
  wy = box_resize_weights(y0, y1, h, size)
  wx = box_resize_weights(x0, x1, w, size)
  hp = jax.lax.Precision.HIGHEST  # float32 matmuls: the 1e-3 agreement with PIL needs them
  return jnp.einsum('oh,hwc,pw->opc', wy, filled, wx, precision=hp)

