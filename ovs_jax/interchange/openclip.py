"""OpenCLIP checkpoints: their model configs, safe architecture detection, and both key layouts.

A state dict does not record attention heads. OpenCLIP's model config does (`vision_cfg.head_width`,
`text_cfg.heads`), so an architecture comes from, in order: `arch` (an OpenCLIP model name such as
`ViT-H-14`, `convnext_base_w_320` or `RN50`, or the path of a config JSON), the `open_clip_config.json` next to
the weights (hub directories ship one), or the state dict's shapes when they match exactly one model
in `openclip_configs.json` (OpenCLIP's `src/open_clip/model_configs/*.json` for the models we
support). Anything else is refused rather than guessed: ViT-H-14's 1280-wide tower has 16 heads of
80, not the 20 heads of 64 a shape-based guess would build.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.models import convnext_clip, resnet_clip
from ovs_jax.models.clip_config import CLIPConfig, TowerConfig
from ovs_jax.models.convnext import ConvNeXtConfig
from ovs_jax.models.modified_resnet import ModifiedResNetConfig

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# timm ConvNeXt trunks (timm/models/convnext.py): depths and dims of each name.
TIMM_CONVNEXT = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
# Config fields whose non-default values change the network in ways we do not build.
_UNSUPPORTED = {"vision_cfg": {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                               "final_ln_after_pool": False, "pool_type": "tok", "qk_norm": False,
                               "timm_proj_bias": False, "pos_embed_type": "learnable"},
                "text_cfg": {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                             "pool_type": "argmax", "proj_bias": False, "hf_model_name": None,
                             "final_ln_after_pool": False, "qk_norm": False}}


@lru_cache(maxsize=1)
def known_configs() -> dict[str, dict[str, Any]]:
  """{OpenCLIP model name: model config}."""
  return json.loads(Path(__file__).with_name("openclip_configs.json").read_text())


def read_model_config(arch: str | Path) -> dict[str, Any]:
  """An OpenCLIP model config from a model name or a JSON file (a hub `open_clip_config.json`
  with its 'model_cfg' section, or a bare model config)."""
  if str(arch) in known_configs():
    return known_configs()[str(arch)]
  path = Path(arch)
  if not path.is_file():
    raise CheckpointError(f"--arch={arch}: neither a supported OpenCLIP model name "
                          f"({', '.join(sorted(known_configs()))}) nor a config JSON file")
  try:
    d = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read OpenCLIP config JSON ({e})") from e
  d = d.get("model_cfg", d)
  if "vision_cfg" not in d or "text_cfg" not in d or "embed_dim" not in d:
    raise CheckpointError(f"{path}: not an OpenCLIP model config (needs embed_dim, vision_cfg, text_cfg)")
  return d


def _check_supported(d: dict[str, Any], where: str):
  for section, defaults in _UNSUPPORTED.items():
    for key, default in defaults.items():
      if d[section].get(key, default) != default:
        raise CheckpointError(f"{where}: {section}.{key}={d[section][key]!r} is not supported "
                              f"(only {default!r})")


def config_from_openclip(d: dict[str, Any], where: str = "OpenCLIP config"):
  """Our config (CLIPConfig for a ViT, ConvNeXtCLIPConfig, ResNetCLIPConfig for a `layers` list)
  from an OpenCLIP model config."""
  _check_supported(d, where)
  act = "quick_gelu" if d.get("quick_gelu") else "gelu"
  v, t, embed = d["vision_cfg"], d["text_cfg"], d["embed_dim"]
  tw = t.get("width", 512)
  text = TowerConfig(tw, int(tw * t.get("mlp_ratio", 4.0)), t.get("layers", 12), t.get("heads", 8), act,
                     vocab_size=t.get("vocab_size", 49408),
                     max_position_embeddings=t.get("context_length", 77),
                     eos_token_id=t.get("vocab_size", 49408) - 1)
  if v.get("timm_model_name"):
    name = v["timm_model_name"]
    if name not in TIMM_CONVNEXT or v.get("timm_proj", "linear") not in ("linear", "mlp"):
      raise CheckpointError(f"{where}: timm tower {name!r} with proj {v.get('timm_proj')!r} is not "
                            f"supported (ConvNeXt: {sorted(TIMM_CONVNEXT)}; proj linear or mlp)")
    if v.get("timm_pool", "avg") not in ("", "avg"):
      raise CheckpointError(f"{where}: timm_pool={v['timm_pool']!r} is not supported (avg)")
    depths, dims = TIMM_CONVNEXT[name]
    vision = ConvNeXtConfig(depths, dims, embed, v.get("timm_proj", "linear"),
                            mlp_hidden=2 * embed if v.get("timm_proj") == "mlp" else None,
                            image_size=_side(v.get("image_size", 224), where),
                            drop_path=v.get("timm_drop_path") or 0.0)
    return convnext_clip.ConvNeXtCLIPConfig(vision, text, embed)
  if isinstance(v.get("layers"), (list, tuple)):  # OpenCLIP `_build_vision_tower`: ModifiedResNet
    try:
      vision = ModifiedResNetConfig(tuple(v["layers"]), v.get("width", 64), embed,
                                    _side(v.get("image_size", 224), where), v.get("head_width", 64))
    except ValueError as e:
      raise CheckpointError(f"{where}: {e}") from e
    return resnet_clip.ResNetCLIPConfig(vision, text, embed)
  width, head_width = v.get("width", 768), v.get("head_width", 64)
  if width % head_width:
    raise CheckpointError(f"{where}: vision width {width} is not a multiple of head_width {head_width}")
  vision = TowerConfig(width, int(width * v.get("mlp_ratio", 4.0)), v.get("layers", 12),
                       width // head_width, act, image_size=_side(v.get("image_size", 224), where),
                       patch_size=_side(v.get("patch_size", 16), where))
  return CLIPConfig(vision, text, projection_dim=embed)


def _side(x, where):
  if isinstance(x, (list, tuple)):
    if len(set(x)) != 1:
      raise CheckpointError(f"{where}: non-square size {x} is not supported")
    return x[0]
  return x


def to_openclip_config(cfg) -> dict[str, Any]:
  """The OpenCLIP model config of one of our configs (written next to exported weights)."""
  t = cfg.text
  text = {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size,
          "width": t.hidden_size, "heads": t.num_attention_heads, "layers": t.num_hidden_layers}
  if t.intermediate_size != 4 * t.hidden_size:
    text["mlp_ratio"] = t.intermediate_size / t.hidden_size
  d = {"embed_dim": cfg.projection_dim, "text_cfg": text}
  if t.hidden_act == "quick_gelu":
    d["quick_gelu"] = True
  if isinstance(cfg, convnext_clip.ConvNeXtCLIPConfig):
    v = cfg.vision
    name = next((n for n, (de, di) in TIMM_CONVNEXT.items() if (de, di) == (v.depths, v.dims)), None)
    if name is None or (v.head == "mlp" and v.mlp_hidden != 2 * cfg.projection_dim):
      raise CheckpointError(f"ConvNeXt depths {v.depths} dims {v.dims} (head {v.head}) has no "
                            "OpenCLIP/timm name: it cannot be written in the OpenCLIP layout")
    d["vision_cfg"] = {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": v.head, "image_size": v.image_size, "timm_drop_path": v.drop_path}
  elif isinstance(cfg, resnet_clip.ResNetCLIPConfig):
    v = cfg.vision
    d["vision_cfg"] = {"image_size": v.image_size, "layers": list(v.layers), "width": v.width,
                       "head_width": v.head_width, "patch_size": None}
  else:
    v = cfg.vision
    d["vision_cfg"] = {"image_size": v.image_size, "layers": v.num_hidden_layers,
                       "width": v.hidden_size, "head_width": v.head_dim, "patch_size": v.patch_size}
    if v.intermediate_size != 4 * v.hidden_size:
      d["vision_cfg"]["mlp_ratio"] = v.intermediate_size / v.hidden_size
  return d


def _layers(sd, prefix):
  return len({m[1] for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def shape_signature(sd: dict[str, np.ndarray]) -> tuple | None:
  """What a state dict's shapes say about the architecture (all but head counts), or None."""
  if "token_embedding.weight" not in sd or "text_projection" not in sd:
    return None
  text = (sd["token_embedding.weight"].shape[1], _layers(sd, "transformer.resblocks."),
          sd["positional_embedding"].shape[0], sd["text_projection"].shape[1])
  if "visual.conv1.weight" in sd and "visual.transformer.resblocks.0.ln_1.weight" in sd:
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    return ("vit", width, _layers(sd, "visual.transformer.resblocks."), patch, grid * patch,
            sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]) + text
  if "visual.trunk.stem.0.weight" in sd:
    dims = tuple(sd[f"visual.trunk.stages.{i}.blocks.0.norm.weight"].shape[0] for i in range(4))
    depths = tuple(_layers(sd, f"visual.trunk.stages.{i}.blocks.") for i in range(4))
    head = "mlp" if "visual.head.mlp.fc1.weight" in sd else "linear"
    return ("convnext", depths, dims, head) + text
  if "visual.layer1.0.conv1.weight" in sd and "visual.attnpool.c_proj.weight" in sd:
    grid = int(round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5))
    layers = tuple(_layers(sd, f"visual.layer{i}.") for i in range(1, 5))
    return ("resnet", layers, sd["visual.bn3.weight"].shape[0], grid,
            sd["visual.attnpool.c_proj.weight"].shape[0]) + text
  return None


def config_signature(cfg) -> tuple:
  t = cfg.text
  text = (t.hidden_size, t.num_hidden_layers, t.max_position_embeddings, cfg.projection_dim)
  v = cfg.vision
  if isinstance(cfg, convnext_clip.ConvNeXtCLIPConfig):
    return ("convnext", v.depths, v.dims, v.head) + text
  if isinstance(cfg, resnet_clip.ResNetCLIPConfig):
    return ("resnet", v.layers, v.width, v.image_size // 32, v.embed_dim) + text
  return ("vit", v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size,
          v.intermediate_size) + text


def _heads(cfg) -> tuple[int, int]:
  """(text heads, image-tower heads; 0 for a ConvNeXt)."""
  v = cfg.vision
  vision = (v.heads if isinstance(cfg, resnet_clip.ResNetCLIPConfig)
            else getattr(v, "num_attention_heads", 0))
  return cfg.text.num_attention_heads, vision


def infer_config(sd: dict[str, np.ndarray], source: str):
  """The config of the one supported OpenCLIP model whose shapes `sd` has; refuses otherwise."""
  sig = shape_signature(sd)
  if sig is None:
    raise CheckpointError(f"{source}: not an OpenCLIP state dict (no token_embedding/text_projection"
                          " or no ViT/ConvNeXt/ModifiedResNet image tower keys)")
  configs = {n: config_from_openclip(d, n) for n, d in known_configs().items()
             if "-quickgelu" not in n}
  names = [n for n, cfg in configs.items() if config_signature(cfg) == sig]
  heads = {_heads(configs[n]) for n in names}
  if len(heads) != 1:
    raise CheckpointError(
        f"{source}: the number of attention heads is not stored in a state dict and these shapes "
        + ("match no OpenCLIP model we know" if not names else f"match several ({names})")
        + f"; pass the model's name or config: --arch=<OpenCLIP name, e.g. ViT-H-14> or "
        f"--arch=PATH/{CONFIG_FILE} (hub directories ship one)")
  return configs[names[0]]


def from_timm_convnext(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A timm ConvNeXt state dict (`stem.0.weight`, `stages.2.blocks.5.mlp.fc1.weight`, `head.norm`,
  `head.fc` of a classifier) -> the `trunk.*` names of `models.convnext.ConvNeXtImageTower`; the
  ImageNet classifier `head.fc` is dropped (OpenCLIP's `reset_classifier(0)`)."""
  if "stem.0.weight" not in sd or not any(k.startswith("stages.") for k in sd):
    raise CheckpointError("not a timm ConvNeXt state dict: keys 'stem.0.weight' and 'stages.*' expected")
  return {f"trunk.{k}": v for k, v in sd.items() if not k.startswith("head.fc.")}
