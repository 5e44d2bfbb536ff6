"""SCLIP (Wang et al., ECCV 2024): correlative self-attention in CLIP's last block.

The last block keeps its residual and FFN; its attention weights become
softmax(q qᵀ/√d) + softmax(k kᵀ/√d) (`clip/model.py:283-313`, `custom_attn(csa=True)`, called at
`clip/model.py:247-251` of github.com/wangf3014/SCLIP). Test protocol (`clip_segmentor.py:19-21`,
`configs/`): logit scale 40 (65 VOC21, 50 COCO-Object and PC60), background threshold 0.1 on the
datasets with a background class, sliding 224 px windows at stride 112, short side 336 (448
COCO-Stuff, 560 Cityscapes), the 80 OpenAI ImageNet templates; PAMR off (the segmentor's
`pamr_steps=0`; the paper's "+PAMR" rows use it). SCLIP's `area_thd` rule (VOC21 only) is not built.
Backbones: CLIP ViTs.
"""
from __future__ import annotations

import jax

from ovs_jax.methods.training_free import Scoring, TrainingFreeMethod
from ovs_jax.models.clip_last_block import rebuilt_dense_features, scaled_similarity


def correlative_attention(q, k):
  """SCLIP's correlative self-attention weights (B, heads, L, L): softmax(q qᵀ/√d) + softmax(k kᵀ/√d)."""
  return (jax.nn.softmax(scaled_similarity(q, q), axis=-1)
          + jax.nn.softmax(scaled_similarity(k, k), axis=-1))


def sclip_features(clip, pixels):
  """(B, H, W, 3) -> (B, h, w, P): SCLIP's dense features (residual and FFN kept)."""
  return rebuilt_dense_features(clip, pixels, correlative_attention, residual=True, ffn=True)


class SCLIP(TrainingFreeMethod):
  name = "sclip"
  scoring = Scoring(logit_scale=40.0, pamr_steps=0)

  def features(self, clip, pixels):
    return sclip_features(clip, pixels)


METHOD = SCLIP()
