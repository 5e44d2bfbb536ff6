"""NACLIP (Hajimiri et al., WACV 2025): neighbourhood-aware attention in a reduced last block.

`clip/model.py:94-132` (arch 'reduced': no residual, no FFN) and `:153-232` (attn_strategy
'naclip': softmax(k kᵀ/√d + ω), ω a Gaussian of the patch-grid distance,
ω[(i,j),(k,l)] = exp(-((i-k)² + (j-l)²) / (2σ²)), 0 in the class token's row and column) of
github.com/sinahmr/NACLIP (MIT). Test protocol (`naclip.py:20-22`, `configs/`, README): σ = 5, PAMR
10 steps at dilations (8, 16), logit scale 40, background threshold 0.1 on VOC21, COCO-Object and
PC60, sliding 224 px windows at stride 112 (whole image on VOC21 and VOC20), short side 336 (560
Cityscapes), the 80 OpenAI ImageNet templates. Backbones: CLIP ViTs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ovs_jax.methods.training_free import Scoring, TrainingFreeMethod
from ovs_jax.models.clip_last_block import rebuilt_dense_features, scaled_similarity


def gaussian_neighbourhood(h: int, w: int, std: float) -> np.ndarray:
  """ω (1 + h·w, 1 + h·w): exp(-|p - p'|² / (2 std²)) between patch positions, zero for the class token."""
  if std <= 0:
    raise ValueError(f"naclip gaussian_std must be > 0, got {std}")
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  pos = np.stack([yy.ravel(), xx.ravel()], -1).astype(np.float64)
  d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
  out = np.zeros((h * w + 1, h * w + 1), np.float32)
  out[1:, 1:] = np.exp(-d2 / (2.0 * std ** 2))
  return out


def naclip_features(clip, pixels, gaussian_std: float = 5.0, arch: str = "reduced"):
  """(B, H, W, 3) -> (B, h, w, P): NACLIP's dense features; `arch="vanilla"` keeps residual and FFN
  (the paper's ablation)."""
  if arch not in ("reduced", "vanilla"):
    raise ValueError(f"naclip arch={arch!r}: expected 'reduced' or 'vanilla'")
  p = clip.dense_stride
  omega = jnp.asarray(gaussian_neighbourhood(pixels.shape[1] // p, pixels.shape[2] // p, gaussian_std))
  weights = lambda q, k: jax.nn.softmax(scaled_similarity(k, k) + omega, axis=-1)
  full = arch == "vanilla"
  return rebuilt_dense_features(clip, pixels, weights, residual=full, ffn=full)


class NACLIP(TrainingFreeMethod):
  name = "naclip"
  options = {"gaussian_std": 5.0, "arch": "reduced"}
  scoring = Scoring(logit_scale=40.0, pamr_steps=10, pamr_dilations=(8, 16))

  def features(self, clip, pixels, gaussian_std=5.0, arch="reduced"):
    return naclip_features(clip, pixels, gaussian_std, arch)


METHOD = NACLIP()
