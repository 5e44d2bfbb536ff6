"""Position-embedding resampling for ViTs at input sizes other than the pretraining size.

Bicubic with PyTorch's conventions (Keys kernel a=-0.75, align_corners=False, border clamping), so
resampled CLIP embeddings equal `transformers`' `interpolate_pos_encoding=True`. `jax.image.resize`
uses a=-0.5 and antialiasing, which gives different numbers.

`antialias=True` is PyTorch's `interpolate(mode="bicubic", antialias=True)` (Pillow's filter, which
DINOv2, timm and DVT resample with): Keys a=-0.5, the kernel widened by the scale when shrinking,
taps cut at the border and renormalised; it differs from the plain kernel when enlarging too.
"""
import functools

import jax.numpy as jnp
import numpy as np

_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t. (N,) -> (N, 4)."""
  def near(x):  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix M with resized = M @ x along one axis."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src).astype(np.int64)
  w = _cubic_weights(src - base)
  m = np.zeros((n_out, n_in), np.float64)
  for k in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(base - 1 + k, 0, n_in - 1)), w[:, k])
  return m.astype(np.float32)


@functools.lru_cache(maxsize=64)
def antialiased_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of PyTorch's antialiased bicubic resize along one axis."""
  a, scale = -0.5, n_in / n_out
  stretch = max(scale, 1.0)  # shrinking widens the kernel by the scale (the antialiasing)
  def kernel(x):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - 2 * stretch + 0.5), 0)
    hi = min(int(center + 2 * stretch + 0.5), n_in)
    w = kernel((np.arange(lo, hi) - center + 0.5) / stretch)
    m[i, lo:hi] = w / w.sum()
  return m.astype(np.float32)


def resize_bicubic(x: jnp.ndarray, out_hw: tuple[int, int], antialias: bool = False) -> jnp.ndarray:
  """Resize a grid (h, w, D) -> (H, W, D) in float32; identity when the size already matches."""
  h, w, _ = x.shape
  if (h, w) == tuple(out_hw):
    return x
  matrix = antialiased_bicubic_matrix if antialias else bicubic_matrix
  mh = jnp.asarray(matrix(h, out_hw[0]))
  mw = jnp.asarray(matrix(w, out_hw[1]))
  return jnp.einsum("Hh,hwd,Ww->HWd", mh, x.astype(jnp.float32), mw,
                    precision="highest").astype(x.dtype)


def resample_position_embedding(pos: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
  """CLIP position table (1 + g*g, D) with a class slot -> (1 + H*W, D) for a grid (H, W)."""
  cls, patches = pos[:1], pos[1:]
  g = int(round(patches.shape[0] ** 0.5))
  if g * g != patches.shape[0]:
    raise ValueError(f"position embedding has {patches.shape[0]} patch slots, not a square grid")
  grid = resize_bicubic(patches.reshape(g, g, -1), grid_hw)
  return jnp.concatenate([cls, grid.reshape(-1, pos.shape[-1])], axis=0)
