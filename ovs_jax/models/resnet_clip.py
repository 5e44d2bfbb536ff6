"""OpenAI CLIP's ResNet models (RN50, RN101): the ModifiedResNet image tower of
`models/modified_resnet.py` with OpenCLIP's names (`visual.layer1.0.conv1`, `visual.attnpool.c_proj`)
and the causal text tower of `models/clip.py` (HF names, as our ViT CLIP).

Each preset is the model's OpenCLIP config (`src/open_clip/model_configs/RN50.json`, ...): text
width 512, 8 heads, 12 layers; embed 1024 (RN50) or 512 (RN101). OpenCLIP's `RN50` text tower uses
nn.GELU; OpenAI's weights (and OpenCLIP's yfcc15m/cc12m RN weights) were trained with QuickGELU:
`RN50-quickgelu`.

The CLIP head of a ResNet is the attention pool, which pools all pixels at once. `image_head` is
its per-vector part, MaskCLIP's: v_proj then c_proj on each vector (one token attending only to
itself, without the positional embedding). `dense_features` is that head on every res5 pixel, with or
without `maskclip` (a ResNet has no other per-pixel CLIP map); the image embedding is the attention
pool (`get_image_features`). MAFT+'s masked attention pool is `visual.masked_attention_pool`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ovs_jax.models import modified_resnet
from ovs_jax.models.clip import OpenCLIPConvCLIP
from ovs_jax.models.clip_config import TowerConfig, openclip_text_tower, two_tower_from_dict
from ovs_jax.models.modified_resnet import ModifiedResNetConfig, ModifiedResNetImageTower

MODEL_TYPE = "openclip_resnet"


@dataclasses.dataclass(frozen=True)
class ResNetCLIPConfig:
  vision: ModifiedResNetConfig
  text: TowerConfig
  projection_dim: int
  logit_scale_init_value: float = 2.6592

  def __post_init__(self):
    if self.vision.embed_dim != self.projection_dim:
      raise ValueError(f"ResNetCLIPConfig: the attention pool's embed_dim {self.vision.embed_dim} "
                       f"differs from projection_dim {self.projection_dim} (CLIP's embed_dim is both)")


def _openclip(vision: ModifiedResNetConfig, act: str = "gelu") -> ResNetCLIPConfig:
  return ResNetCLIPConfig(vision, openclip_text_tower(512, 8, 12, act), vision.embed_dim)


PRESETS: dict[str, ResNetCLIPConfig] = {
    "RN50": _openclip(modified_resnet.PRESETS["RN50"]),
    "RN101": _openclip(modified_resnet.PRESETS["RN101"]),
    "RN50-quickgelu": _openclip(modified_resnet.PRESETS["RN50"], "quick_gelu"),
    "RN101-quickgelu": _openclip(modified_resnet.PRESETS["RN101"], "quick_gelu"),
    # For tests and the CPU demo.
    "resnet_tiny": ResNetCLIPConfig(modified_resnet.PRESETS["tiny"], openclip_text_tower(128, 2, 4),
                                    32),
}


class ResNetCLIP(OpenCLIPConvCLIP):
  """OpenCLIP `CLIP` with a ModifiedResNet image tower (`model.visual`)."""
  tower = ModifiedResNetImageTower

  def image_head(self, features):
    """MaskCLIP's per-vector attention-pool head, c_proj(v_proj(x)), on any (..., 32 * width)
    vectors -> (..., P) (see the module docstring)."""
    return self.visual.attnpool.value_path(features)

  def backbone_channels(self):
    return {f"res{i + 2}": c for i, c in enumerate(self.config.vision.channels[1:])}

  def image_and_dense_features(self, pixels):
    """The attention pool (CLIP `encode_image`) and every res5 pixel through `image_head`."""
    res5 = self.trunk_features(pixels)
    return self.visual.attnpool(res5), self.image_head(res5)


def from_dict(d: dict[str, Any]) -> ResNetCLIPConfig:
  return two_tower_from_dict(ResNetCLIPConfig, ModifiedResNetConfig, d, tuples=("layers",))
