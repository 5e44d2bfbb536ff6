"""Every CLIP variant behind one name space: architecture names, JSON records, model building.

  ViT (HF `CLIPModel` layout, `models/clip.py`): vit_b16, vit_l14, tiny, ...; record = HF config.json
  OpenCLIP ConvNeXt (`models/convnext_clip.py`): convnext_base_w_320, convnext_large_d_320,
  convnext_tiny; record = {"model_type": "openclip_convnext", ...}
  CLIP ModifiedResNet (`models/resnet_clip.py`): RN50, RN101 (and -quickgelu), resnet_tiny;
  record = {"model_type": "openclip_resnet", ...}
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from ovs_jax.models import clip_config, convnext_clip, resnet_clip
from ovs_jax.models.clip import CLIP, CLIPBase

# Architectures whose weights travel in the OpenCLIP layout: config class, model, record module.
_OPENCLIP_FAMILIES = ((convnext_clip.ConvNeXtCLIPConfig, convnext_clip.ConvNeXtCLIP, convnext_clip),
                      (resnet_clip.ResNetCLIPConfig, resnet_clip.ResNetCLIP, resnet_clip))
OPENCLIP_PRESETS = {**convnext_clip.PRESETS, **resnet_clip.PRESETS}


def arch_names() -> list[str]:
  return sorted(clip_config.PRESETS) + sorted(convnext_clip.PRESETS) + sorted(resnet_clip.PRESETS)


def get_arch(name: str, **overrides):
  """The config of a named architecture (`config.clip.arch`)."""
  if name in OPENCLIP_PRESETS:
    if overrides:
      raise ValueError(f"CLIP architecture {name!r} takes no overrides (got {sorted(overrides)})")
    return OPENCLIP_PRESETS[name]
  if name not in clip_config.PRESETS:
    raise ValueError(f"unknown CLIP architecture {name!r}: expected one of {arch_names()}")
  return clip_config.get_preset(name, **overrides)


def _family(cfg):
  return next((f for f in _OPENCLIP_FAMILIES if isinstance(cfg, f[0])), None)


def build_clip(cfg, *, rngs: nnx.Rngs, **model_kw) -> CLIPBase:
  """The model of a config (`model_kw`: dtype, scan, remat)."""
  family = _family(cfg)
  return (family[1] if family else CLIP)(cfg, rngs=rngs, **model_kw)


def abstract_clip(cfg, **model_kw) -> CLIPBase:
  """A model whose parameters are shapes only (no memory, no compute)."""
  return nnx.eval_shape(lambda: build_clip(cfg, rngs=nnx.Rngs(0), **model_kw))


def to_record(cfg) -> dict[str, Any]:
  """JSON-able record of a config (an HF config.json for ViTs)."""
  family = _family(cfg)
  if family is None:
    return clip_config.to_hf_dict(cfg)
  return dict(dataclasses.asdict(cfg), model_type=family[2].MODEL_TYPE)


def from_record(d: dict[str, Any]):
  family = next((f for f in _OPENCLIP_FAMILIES if d.get("model_type") == f[2].MODEL_TYPE), None)
  return family[2].from_dict(d) if family else clip_config.from_hf_dict(d)


def describe(cfg) -> str:
  """One line for logs: tower sizes."""
  t, v = cfg.text, cfg.vision
  text = f"text {t.num_hidden_layers}x{t.hidden_size}, embed {cfg.projection_dim}"
  if isinstance(cfg, convnext_clip.ConvNeXtCLIPConfig):
    return f"ConvNeXt depths {v.depths} dims {v.dims}, {text}"
  if isinstance(cfg, resnet_clip.ResNetCLIPConfig):
    return f"ModifiedResNet layers {v.layers} width {v.width}, {text}"
  return f"vision {v.num_hidden_layers}x{v.hidden_size}, {text}"
