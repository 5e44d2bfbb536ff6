"""OpenCLIP's ConvNeXt CLIP models (`convnext_base_w_320`, `convnext_large_d_320`, ...): the
ConvNeXt image tower of `models/convnext.py` with OpenCLIP's names (`visual.trunk...`,
`visual.head...`) and the causal text tower of `models/clip.py` (HF names, as our ViT CLIP).

Each preset is the model's OpenCLIP config (`src/open_clip/model_configs/<name>.json`): the timm
trunk, `timm_proj`, image size, embed_dim and text width/heads/layers; OpenCLIP's text tower uses
nn.GELU (exact) unless the name ends in `-quickgelu`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from ovs_jax.models import convnext
from ovs_jax.models.clip import OpenCLIPConvCLIP
from ovs_jax.models.clip_config import TowerConfig, openclip_text_tower, two_tower_from_dict
from ovs_jax.models.convnext import ConvNeXtConfig, ConvNeXtImageTower

MODEL_TYPE = "openclip_convnext"


@dataclasses.dataclass(frozen=True)
class ConvNeXtCLIPConfig:
  vision: ConvNeXtConfig
  text: TowerConfig
  projection_dim: int
  logit_scale_init_value: float = 2.6592


PRESETS: dict[str, ConvNeXtCLIPConfig] = {
    # OpenCLIP model_configs/convnext_base_w_320.json (MAFT+ Base).
    "convnext_base_w_320": ConvNeXtCLIPConfig(convnext.PRESETS["convnext_base_w_320"],
                                              openclip_text_tower(640, 10, 12), 640),
    # OpenCLIP model_configs/convnext_large_d_320.json (MAFT+ Large).
    "convnext_large_d_320": ConvNeXtCLIPConfig(convnext.PRESETS["convnext_large_d_320"],
                                               openclip_text_tower(768, 12, 16), 768),
    # For tests and the CPU demo.
    "convnext_tiny": ConvNeXtCLIPConfig(dataclasses.replace(convnext.PRESETS["tiny"], embed_dim=128),
                                        openclip_text_tower(128, 2, 4), 128),
}


class ConvNeXtCLIP(OpenCLIPConvCLIP):
  """OpenCLIP `CLIP` with a timm ConvNeXt image tower (`model.visual`)."""
  tower = ConvNeXtImageTower

  def image_head(self, features):
    """Trunk head LayerNorm then the OpenCLIP projection, on any (..., C) vectors (MAFT+'s
    `visual_prediction_forward_convnext`)."""
    return self.visual.image_head(features)

  def backbone_channels(self):
    return {f"res{i + 2}": d for i, d in enumerate(self.config.vision.dims)}

  def image_and_dense_features(self, pixels):
    """Global average pool (OpenCLIP `encode_image`) and every position through the head."""
    dense = self.visual.trunk_features(pixels)
    pooled = jnp.mean(dense.astype(jnp.float32), axis=(1, 2))
    return self.image_head(pooled), self.image_head(dense)


def from_dict(d: dict[str, Any]) -> ConvNeXtCLIPConfig:
  return two_tower_from_dict(ConvNeXtCLIPConfig, ConvNeXtConfig, d, tuples=("depths", "dims"))
