"""Load CLIP weights from any supported source into our model, and write them back out.

Sources (`load_clip(path)`):
  * an HF CLIP directory (`config.json` + `model.safetensors` / `pytorch_model.bin` / sharded index);
  * an OpenCLIP state dict file (`.safetensors`, `.bin`, `.pt`) or hub directory (`open_clip_config.json`
    + `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`), ViT, ConvNeXt or ModifiedResNet
    (RN50, RN101; BatchNorm running statistics and step counters included): the architecture
    from `arch` (OpenCLIP model name or config JSON), the directory's config, or the shapes when they
    match one known model (`interchange/openclip.py`); activation given by `hidden_act` where the
    config does not say (OpenAI-pretrained weights: 'quick_gelu'; LAION: 'gelu');
  * our own directory (`config.json` + orbax `params/`), written by `save_orbax_clip`;
  * an official MAFT+ checkpoint (`maftp_*.pth`): its fine-tuned OpenCLIP model (`backbone.clip_model`).
Outputs: HF directories (ViT only), OpenCLIP directories, our directories.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ovs_jax.interchange import clip_keys, openclip, state_dict_io, torch_state
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.models import clip_config, clip_family
from ovs_jax.models.clip import CLIP, CLIPBase


OFFICIAL_MAFT_PREFIX = "backbone.clip_model."


def abstract_clip(cfg, **model_kw) -> CLIPBase:
  """A CLIP whose parameters are shapes only (no memory, no compute)."""
  return clip_family.abstract_clip(cfg, **model_kw)


def with_activation(cfg, hidden_act: str | None):
  """`cfg` with both towers' activation set (a ConvNeXt image tower has its own GELU)."""
  if not hidden_act:
    return cfg
  if hidden_act not in clip_config.SUPPORTED_ACTS:
    raise CheckpointError(f"hidden_act={hidden_act!r}: expected one of {clip_config.SUPPORTED_ACTS}")
  cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, hidden_act=hidden_act))
  if isinstance(cfg, clip_config.CLIPConfig):
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, hidden_act=hidden_act))
  return cfg


def _openclip_source(path: Path, sd, hidden_act, arch):
  """(config, our-named state dict) of an OpenCLIP state dict."""
  side_config = (path if path.is_dir() else path.parent) / openclip.CONFIG_FILE
  if arch in clip_family.OPENCLIP_PRESETS:  # our ConvNeXt/ResNet CLIP sizes (e.g. the demo's)
    cfg = clip_family.get_arch(arch)
  elif arch:
    cfg = openclip.config_from_openclip(openclip.read_model_config(arch), str(arch))
  elif side_config.is_file():
    cfg = openclip.config_from_openclip(openclip.read_model_config(side_config), str(side_config))
  else:
    cfg = openclip.infer_config(sd, str(path))
  if openclip.config_signature(cfg) != openclip.shape_signature(sd):
    raise CheckpointError(f"{path}: the weights' shapes {openclip.shape_signature(sd)} do not match "
                          f"the architecture {openclip.config_signature(cfg)} (from "
                          f"{arch or side_config})")
  return with_activation(cfg, hidden_act), clip_keys.openclip_to_hf(sd)


def read_clip_source(path: str | Path, hidden_act: str | None = None, arch: str | None = None):
  """-> (config, our-named state dict, or None for our orbax format)."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: CLIP weights not found")
  if path.is_dir() and not (path / "config.json").exists():
    weights = [path / f for f in openclip.WEIGHT_FILES if (path / f).exists()]
    if not (path / openclip.CONFIG_FILE).exists() or not weights:
      raise CheckpointError(f"{path}: directory has neither config.json (an HF CLIP directory or one "
                            "written by `python -m ovs_jax.convert clip`) nor an OpenCLIP "
                            f"{openclip.CONFIG_FILE} with {' or '.join(openclip.WEIGHT_FILES)}")
    return _openclip_source(path, state_dict_io.read_state_dict(weights[0]), hidden_act, arch)
  if path.is_dir():
    try:
      cfg = clip_family.from_record(json.loads((path / "config.json").read_text()))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{path / 'config.json'}: unsupported architecture: {e}") from e
    if (path / "params").is_dir():
      return cfg, None
    return cfg, state_dict_io.read_state_dict(path)
  sd = state_dict_io.read_state_dict(path)
  if any(k.startswith(OFFICIAL_MAFT_PREFIX) for k in sd):  # an official MAFT+ checkpoint's student
    sd = {k[len(OFFICIAL_MAFT_PREFIX):]: v for k, v in sd.items() if k.startswith(OFFICIAL_MAFT_PREFIX)}
  if "token_embedding.weight" in sd or any(k.startswith("visual.") for k in sd):
    return _openclip_source(path, sd, hidden_act, arch)
  if "vision_model.embeddings.patch_embedding.weight" in sd:
    raise CheckpointError(f"{path}: HF-named CLIP weights need their config.json; pass the directory")
  if "stem.0.weight" in sd and any(k.startswith("stages.") for k in sd):
    raise CheckpointError(f"{path}: a timm ConvNeXt trunk alone is not a CLIP (no text tower or CLIP "
                          "head); load it into an image tower with "
                          "`interchange.openclip.from_timm_convnext`")
  raise CheckpointError(f"{path}: unknown architecture: neither HF CLIP nor OpenCLIP keys "
                        f"(first keys: {sorted(sd)[:3]})")


def load_clip(path: str | Path, *, hidden_act: str | None = None, arch: str | None = None,
              **model_kw) -> CLIPBase:
  """Our CLIP with the weights at `path` (see module docstring). `model_kw`: dtype, scan, remat."""
  cfg, sd = read_clip_source(path, hidden_act, arch)
  model = abstract_clip(cfg, **model_kw)
  if sd is None:
    _restore_orbax(model, Path(path) / "params")
  else:
    torch_state.import_state_dict(model, sd, source=str(path), ignore=clip_keys.IGNORED_HF_KEYS.pattern)
  return model


def save_openclip(model: CLIPBase, out_dir: str | Path, dtype=np.float32) -> Path:
  """Write an OpenCLIP hub-style directory (`open_clip_config.json` + `open_clip_model.safetensors`,
  OpenCLIP key names) atomically; `open_clip.create_model(..., pretrained=FILE)` reads the weights."""
  state_dict_io.write_dir_atomically(out_dir, openclip_files(model, dtype))
  return Path(out_dir)


def openclip_files(model: CLIPBase, dtype=np.float32) -> dict:
  """{file name: content} of an OpenCLIP directory, for `write_dir_atomically`."""
  config = {"model_cfg": openclip.to_openclip_config(model.config)}
  return {openclip.CONFIG_FILE: json.dumps(config, indent=2).encode(),
          openclip.WEIGHT_FILES[0]: clip_keys.hf_to_openclip(torch_state.export_state_dict(model, dtype))}


def save_hf_clip(model: CLIP, out_dir: str | Path, dtype=np.float32) -> Path:
  """Write an HF CLIP directory (`config.json` + `model.safetensors`) atomically (ViT CLIP only)."""
  if not isinstance(model, CLIP):
    raise CheckpointError(f"{type(model).__name__} has no HF transformers layout: write it as "
                          "OpenCLIP (--to=openclip) or in our format (--to=ours)")
  state_dict_io.write_dir_atomically(out_dir, hf_clip_files(model, dtype))
  return Path(out_dir)


def hf_clip_files(model: CLIP, dtype=np.float32) -> dict:
  """The files of an HF CLIP directory, {name: bytes or state dict}, for `write_dir_atomically`."""
  cfg = clip_config.to_hf_dict(model.config)
  cfg["dtype"] = np.dtype(dtype).name if dtype != jnp.bfloat16 else "bfloat16"
  return {"config.json": json.dumps(cfg, indent=2).encode(),
          "model.safetensors": torch_state.export_state_dict(model, dtype)}


def clip_files(model: CLIPBase, dtype=np.float32) -> dict:
  """A CLIP's files in its PyTorch ecosystem's layout: HF for a ViT CLIP, OpenCLIP otherwise."""
  return hf_clip_files(model, dtype) if isinstance(model, CLIP) else openclip_files(model, dtype)


def save_orbax_clip(model: CLIPBase, out_dir: str | Path) -> Path:
  """Write our format: `config.json` (the architecture record) + an orbax checkpoint `params/`.

  The checkpoint holds the PyTorch-named, unscanned state dict, so it does not depend on the scan
  setting and restores through the same key and shape checks as any other source.
  """
  import orbax.checkpoint as ocp
  out_dir = Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:  # orbax writes to a temp dir and renames: atomic
    ckptr.save(out_dir / "params", torch_state.export_state_dict(model), force=True)
  (out_dir / "config.json").write_text(json.dumps(clip_family.to_record(model.config), indent=2))
  return out_dir


def _restore_orbax(model: CLIPBase, params_dir: Path):
  import orbax.checkpoint as ocp
  try:
    with ocp.StandardCheckpointer() as ckptr:
      sd = ckptr.restore(params_dir.absolute())
  except Exception as e:
    raise CheckpointError(f"{params_dir}: unreadable orbax checkpoint ({type(e).__name__}: {e})") from e
  torch_state.import_state_dict(model, {k: np.asarray(v) for k, v in sd.items()}, source=str(params_dir))
