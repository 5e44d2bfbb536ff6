"""ClearCLIP (Lan et al., ECCV 2024): CLIP's last block without the residual and the FFN, with
query-query self-attention.

`open_clip/transformer.py:520-536` (forward, `ignore_residual=True`: the output is the modified
attention alone) and `:589-622` (`custom_attn`, model_type 'ClearCLIP': softmax(q qᵀ/√d)) of
github.com/mc-lan/ClearCLIP. The released `configs/base_config.py:6` sets model_type at 'vanilla'
(q kᵀ attention, still without residual and FFN); the paper and the README's method are 'ClearCLIP',
our default (also the default of `forward` at :500); `attention="qk"` gives the released config's. Test protocol
(`clearclip_segmentor.py:22-23`, `configs/`): logit scale 50, background threshold 0.5 VOC21,
0.4 COCO-Object, 0.15 PC60, sliding 448 px windows at stride 224 (224 px windows on Cityscapes, stride
still 224: its config sets only `slide_crop`), short side 448, the 80 OpenAI ImageNet
templates, no PAMR. Backbones: CLIP ViTs (the official code also runs BLIP and GEM variants).
"""
from __future__ import annotations

import jax

from ovs_jax.methods.training_free import Scoring, TrainingFreeMethod
from ovs_jax.models.clip_last_block import rebuilt_dense_features, scaled_similarity

ATTENTIONS = ("qq", "qk")


def self_self_attention(q, k):
  """ClearCLIP's query-query attention weights (B, heads, L, L): softmax(q qᵀ/√d)."""
  del k
  return jax.nn.softmax(scaled_similarity(q, q), axis=-1)


def clearclip_features(clip, pixels, attention: str = "qq"):
  """(B, H, W, 3) -> (B, h, w, P): the last block's attention output alone through the CLIP head."""
  if attention not in ATTENTIONS:
    raise ValueError(f"clearclip attention={attention!r}: expected one of {ATTENTIONS}")
  weights = self_self_attention if attention == "qq" else (
      lambda q, k: jax.nn.softmax(scaled_similarity(q, k), axis=-1))
  return rebuilt_dense_features(clip, pixels, weights, residual=False, ffn=False)


class ClearCLIP(TrainingFreeMethod):
  name = "clearclip"
  options = {"attention": "qq"}
  scoring = Scoring(logit_scale=50.0)

  def features(self, clip, pixels, attention="qq"):
    return clearclip_features(clip, pixels, attention)


METHOD = ClearCLIP()
