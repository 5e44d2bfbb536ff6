"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), the post-processing SCLIP and
NACLIP apply to their upsampled logits (`pamr.py` in github.com/wangf3014/SCLIP and sinahmr/NACLIP,
from github.com/visinf/1-stage-wseg, Apache-2.0).

Each pixel's scores become a weighted sum of its 8 neighbours' at every dilation, the weights an
affinity of the image: a = softmax_p(mean_K(-|I(x) - I(x+p)| / (1e-8 + 0.1 σ_K(x)))), σ the unbiased
standard deviation of the 9·|dilations| values I(x + p) (the centre once per dilation) per channel;
borders replicate. The update m ← Σ_p a_p m(x + p) runs `num_iter` times.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# The 3x3 neighbours in the order of the official kernels (row-major, the centre left out).
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifts(x, dilations, with_centre: bool):
  """x (B, H, W, K) -> [x(y + d·dy, x + d·dx)] per dilation and neighbour, edges replicated (the
  official 'replicate' padding and dilated 3x3 conv)."""
  h, w = x.shape[1:3]
  out = []
  offsets = [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)] if with_centre else _NEIGHBOURS
  for d in dilations:
    xp = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)), mode="edge")
    for dy, dx in offsets:
      out.append(xp[:, d + d * dy: d + d * dy + h, d + d * dx: d + d * dx + w])
  return out


def pamr(image, scores, num_iter: int = 10, dilations=(8, 16)):
  """image (B, H, W, K) (the normalised input), scores (B, H, W, C) at the same size -> refined
  scores (B, H, W, C). num_iter, dilations: 10 and (8, 16) as SCLIP's and NACLIP's defaults."""
  if image.shape[1:3] != scores.shape[1:3]:
    raise ValueError(f"PAMR needs the image and the scores at one size; got {image.shape[1:3]} and "
                     f"{scores.shape[1:3]}")
  image = image.astype(jnp.float32)
  std = jnp.std(jnp.stack(_shifts(image, dilations, True), -1), axis=-1, ddof=1, keepdims=True)
  diff = jnp.abs(image[..., None] - jnp.stack(_shifts(image, dilations, False), -1))
  affinity = jax.nn.softmax(jnp.mean(-diff / (1e-8 + 0.1 * std), axis=3), axis=-1)  # (B, H, W, P)

  def step(m, _):  # a sum over the shifts, never a (B, H, W, C, P) tensor (C can be hundreds)
    return sum(s * affinity[..., p, None] for p, s in enumerate(_shifts(m, dilations, False))), None

  return jax.lax.scan(step, scores.astype(jnp.float32), None, length=num_iter)[0]
