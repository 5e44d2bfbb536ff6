"""CLIP architecture description, convertible to and from a HuggingFace `CLIPConfig` dict.

The field names are HF's so that `config.json` of any HF CLIP checkpoint maps one to one.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One transformer tower (vision or text)."""
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  # Vision only.
  image_size: int = 224
  patch_size: int = 16
  # Text only.
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  # Special ids as HF `text_config` carries them. The OpenAI checkpoints on the hub keep the legacy
  # bos 0 / eos 2 / pad 1; with eos 2 transformers pools at argmax(ids) (EOT has the highest id).
  eos_token_id: int = 49407
  bos_token_id: int = 49406
  pad_token_id: int = 1

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def openclip_text_tower(width: int, heads: int, layers: int, act: str = "gelu", context: int = 77,
                        vocab: int = 49408) -> TowerConfig:
  """An OpenCLIP text tower (`text_cfg`: width, heads, layers, mlp_ratio 4, eps 1e-5)."""
  return TowerConfig(width, 4 * width, layers, heads, act, vocab_size=vocab,
                     max_position_embeddings=context, eos_token_id=vocab - 1)


def two_tower_from_dict(config_cls, vision_cls, d: dict[str, Any], tuples=()):
  """A {vision, text, projection_dim[, logit_scale_init_value]} record (`dataclasses.asdict` of an
  OpenCLIP-layout CLIP config) -> `config_cls`; `tuples`: vision fields JSON stored as lists."""
  vision = {k: tuple(v) if k in tuples else v for k, v in d["vision"].items()}
  return config_cls(vision_cls(**vision), TowerConfig(**d["text"]), d["projection_dim"],
                    d.get("logit_scale_init_value", 2.6592))


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vision: TowerConfig
  text: TowerConfig
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  @property
  def grid_size(self) -> int:
    return self.vision.image_size // self.vision.patch_size


_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "hidden_act", "layer_norm_eps", "image_size", "patch_size")
_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "hidden_act", "layer_norm_eps", "vocab_size", "max_position_embeddings", "eos_token_id",
              "bos_token_id", "pad_token_id")
SUPPORTED_ACTS = ("quick_gelu", "gelu")


def _tower(d: dict[str, Any], keys, where: str) -> TowerConfig:
  kw = {k: d[k] for k in keys if k in d and d[k] is not None}
  for k in ("image_size", "patch_size"):
    if isinstance(kw.get(k), (list, tuple)):
      if len(set(kw[k])) != 1:
        raise ValueError(f"{where}.{k}={kw[k]}: only square images and patches are supported")
      kw[k] = kw[k][0]
  for k in ("eos_token_id", "bos_token_id", "pad_token_id"):
    if isinstance(kw.get(k), list):
      kw[k] = kw[k][0]
  act = kw.get("hidden_act", "quick_gelu")
  if act not in SUPPORTED_ACTS:
    raise ValueError(f"{where}.hidden_act={act!r}: expected one of {SUPPORTED_ACTS}")
  cfg = TowerConfig(**kw)
  if cfg.hidden_size % cfg.num_attention_heads:
    raise ValueError(f"{where}: hidden_size {cfg.hidden_size} is not divisible by "
                     f"num_attention_heads {cfg.num_attention_heads}")
  return cfg


def from_hf_dict(d: dict[str, Any]) -> CLIPConfig:
  """From the dict of an HF `config.json` (model_type 'clip')."""
  if d.get("model_type", "clip") != "clip":
    raise ValueError(f"config model_type={d.get('model_type')!r}: expected 'clip' "
                     "(only CLIP ViT checkpoints are supported)")
  if "vision_config" not in d or "text_config" not in d:
    raise ValueError("CLIP config needs 'vision_config' and 'text_config' sections")
  return CLIPConfig(
      vision=_tower(d["vision_config"], _VISION_KEYS, "vision_config"),
      text=_tower(d["text_config"], _TEXT_KEYS, "text_config"),
      projection_dim=d.get("projection_dim", 512),
      logit_scale_init_value=d.get("logit_scale_init_value", 2.6592))


def to_hf_dict(cfg: CLIPConfig) -> dict[str, Any]:
  """The `config.json` content that `transformers.CLIPModel.from_pretrained` reads."""
  vision = {k: getattr(cfg.vision, k) for k in _VISION_KEYS}
  text = {k: getattr(cfg.text, k) for k in _TEXT_KEYS}
  vision["projection_dim"] = text["projection_dim"] = cfg.projection_dim
  return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.projection_dim,
          "logit_scale_init_value": cfg.logit_scale_init_value,
          "vision_config": vision, "text_config": text}


def load_config_file(path: str | Path) -> CLIPConfig:
  path = Path(path)
  try:
    return from_hf_dict(json.loads(path.read_text()))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read CLIP config JSON ({e})") from e


def _preset(width, layers, heads, patch, image, text_width=512, text_layers=12, act="quick_gelu",
            proj=512) -> CLIPConfig:
  return CLIPConfig(
      vision=TowerConfig(width, 4 * width, layers, heads, act, image_size=image, patch_size=patch),
      text=TowerConfig(text_width, 4 * text_width, text_layers, text_width // 64, act),
      projection_dim=proj)


# The shipped architectures (OpenAI weights use quick_gelu; most OpenCLIP LAION weights use gelu).
PRESETS: dict[str, CLIPConfig] = {
    "vit_b32": _preset(768, 12, 12, 32, 224),
    "vit_b16": _preset(768, 12, 12, 16, 224),
    "vit_l14": _preset(1024, 24, 16, 14, 224, 768, 12, proj=768),
    "vit_l14_336": _preset(1024, 24, 16, 14, 336, 768, 12, proj=768),
    # A small tower pair for demos and tests (random init or distilled weights).
    "tiny": _preset(128, 4, 2, 16, 224, 128, 4, proj=128),
}


def get_preset(name: str, **overrides) -> CLIPConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown CLIP architecture {name!r}: expected one of {sorted(PRESETS)}")
  cfg = PRESETS[name]
  if "hidden_act" in overrides:
    act = overrides.pop("hidden_act")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, hidden_act=act),
                              text=dataclasses.replace(cfg.text, hidden_act=act))
  return dataclasses.replace(cfg, **overrides)
