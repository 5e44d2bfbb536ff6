"""Every CLIP variant behind one name space: architecture names, JSON records, model building.

  ViT (HF `CLIPModel` layout, `models/clip.py`): vit_b16, vit_l14, tiny, ...; record = HF config.json
  OpenCLIP ConvNeXt (`models/convnext_clip.py`): convnext_base_w_320, convnext_large_d_320,
  convnext_tiny; record = {"model_type": "openclip_convnext", ...}
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from ovs_jax.models import clip_config, convnext_clip
from ovs_jax.models.clip import CLIP, CLIPBase


CONVNEXT_PRESETS = convnext_clip.PRESETS


def arch_names() -> list[str]:
  return sorted(clip_config.PRESETS) + sorted(convnext_clip.PRESETS)


def get_arch(name: str, **overrides):
  """The config of a named architecture (`config.clip.arch`)."""
  if name in convnext_clip.PRESETS:
    if overrides:
      raise ValueError(f"CLIP architecture {name!r} takes no overrides (got {sorted(overrides)})")
    return convnext_clip.PRESETS[name]
  if name not in clip_config.PRESETS:
    raise ValueError(f"unknown CLIP architecture {name!r}: expected one of {arch_names()}")
  return clip_config.get_preset(name, **overrides)


def build_clip(cfg, *, rngs: nnx.Rngs, **model_kw) -> CLIPBase:
  """The model of a config (`model_kw`: dtype, scan, remat)."""
  if isinstance(cfg, convnext_clip.ConvNeXtCLIPConfig):
    return convnext_clip.ConvNeXtCLIP(cfg, rngs=rngs, **model_kw)
  return CLIP(cfg, rngs=rngs, **model_kw)


def abstract_clip(cfg, **model_kw) -> CLIPBase:
  """A model whose parameters are shapes only (no memory, no compute)."""
  return nnx.eval_shape(lambda: build_clip(cfg, rngs=nnx.Rngs(0), **model_kw))


def to_record(cfg) -> dict[str, Any]:
  """JSON-able record of a config (an HF config.json for ViTs)."""
  if isinstance(cfg, convnext_clip.ConvNeXtCLIPConfig):
    return convnext_clip.to_dict(cfg)
  return clip_config.to_hf_dict(cfg)


def from_record(d: dict[str, Any]):
  if d.get("model_type") == convnext_clip.MODEL_TYPE:
    return convnext_clip.from_dict(d)
  return clip_config.from_hf_dict(d)


def describe(cfg) -> str:
  """One line for logs: tower sizes."""
  t = cfg.text
  text = f"text {t.num_hidden_layers}x{t.hidden_size}"
  if isinstance(cfg, convnext_clip.ConvNeXtCLIPConfig):
    v = cfg.vision
    return f"ConvNeXt depths {v.depths} dims {v.dims}, {text}, embed {cfg.projection_dim}"
  v = cfg.vision
  return f"vision {v.num_hidden_layers}x{v.hidden_size}, {text}, embed {cfg.projection_dim}"
