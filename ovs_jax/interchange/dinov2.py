"""DINOv2-with-registers weights: HF (today's and legacy key names), timm and DVT files in; HF out.

Conversion is data: each source's names map onto HF `Dinov2WithRegistersModel` names (transformers
5) by the regex tables below, checked there (missing, unexpected and misshapen keys named as the
file names them), then onto ours by `HF_TO_OURS`.

  HF today      `encoder.layer.N.attention.{q,k,v,o}_proj.*`, `layer_scale1.lambda1`, `embeddings.*`,
                `layernorm.*` (the files transformers 5 writes; `config.json` beside them)
  HF legacy     the same but `attention.attention.{query,key,value}.*` and `attention.output.dense.*`
                (every hub file saved before transformers 5, e.g. facebook/dinov2-with-registers-base;
                transformers renames them on load, `conversion_mapping.py`)
  timm          `vit_base_patch14_reg4_dinov2` (timm's `_convert_dinov2` layout): `cls_token`,
                `reg_token`, `pos_embed` without the class slot (its embedding is folded into
                `cls_token`), `patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
                mlp.fc1,mlp.fc2,ls2.gamma}`, `norm`; no `mask_token`
  DVT           the denoiser: `pos_embed` (1, g*g, D) and a timm block `denoiser.*`

Exports are HF directories (`config.json` + `model.safetensors`, today's names) that
`Dinov2WithRegistersModel.from_pretrained` loads; a DVT denoiser goes beside them as
`dvt_denoiser.safetensors` in DVT's layout.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from ovs_jax.interchange import state_dict_io, torch_state
from ovs_jax.interchange.errors import CheckpointError, raise_listed
from ovs_jax.models import dinov2
from ovs_jax.models.dinov2 import Dinov2Config, Dinov2WithRegisters

DVT_FILE = "dvt_denoiser.safetensors"
_QKV = "{qkv}"  # a target holding this is one fused (3·D, ...) tensor split into q, k and v

# Source name (regex, full match) -> HF name. Anything unmatched stays as it is (and is unexpected).
HF_LEGACY_TO_HF = (
    (r"(.*)\.attention\.attention\.(query|key|value)\.(weight|bias)",
     lambda m: f"{m[1]}.attention.{m[2][0]}_proj.{m[3]}"),
    (r"(.*)\.attention\.output\.dense\.(weight|bias)", r"\1.attention.o_proj.\2"),
)
TIMM_TO_HF = (
    (r"cls_token", "embeddings.cls_token"),
    (r"reg_token", "embeddings.register_tokens"),
    (r"pos_embed", "embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layer.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", rf"encoder.layer.\1.attention.{_QKV}_proj.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.o_proj.\2"),
    (r"blocks\.(\d+)\.ls([12])\.gamma", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layer.\1.mlp.fc\2.\3"),
    (r"norm\.(weight|bias)", r"layernorm.\1"),
)
# DVT -> our PyTorch-layout names (the denoiser is no part of HF's model).
DVT_TO_OURS = (
    (r"pos_embed", "denoiser.pos_embed"),
    (r"denoiser\.attn\.qkv\.(weight|bias)", rf"denoiser.attention.{_QKV}_proj.\1"),
    (r"denoiser\.attn\.proj\.(weight|bias)", r"denoiser.attention.out_proj.\1"),
    (r"denoiser\.(norm[12]|mlp\.fc[12])\.(weight|bias)", r"denoiser.\1.\2"),
)
# HF <-> ours, fragment for fragment (both directions): our stack is `layers` (what scan-over-layers
# and `torch_state` expect), our shared attention layer names its output `out_proj`.
HF_TO_OURS = (("encoder.layer.", "encoder.layers."), (".attention.o_proj.", ".attention.out_proj."))
# A classification checkpoint's backbone prefix, and its head (not part of the backbone).
_HF_PREFIX = "dinov2_with_registers."
_HF_HEAD = re.compile(r"classifier\..*")


def source_kind(sd: dict) -> str:
  """'timm', 'hf_legacy' or 'hf' from the key names."""
  if "reg_token" in sd or any(k.startswith("blocks.") for k in sd):
    return "timm"
  if any(".attention.attention." in k for k in sd):
    return "hf_legacy"
  return "hf"


def _rename(sd: dict, table):
  """Apply a (pattern, replacement) table -> ({new name: array}, {new name: source name}, problems)."""
  out, origin, problems = {}, {}, []
  for k, v in sd.items():
    name = k
    for pattern, repl in table:
      m = re.fullmatch(pattern, k)
      if m:
        name = repl(m) if callable(repl) else m.expand(repl)
        break
    if _QKV not in name:
      out[name], origin[name] = v, k
    elif v.shape[0] % 3:
      problems.append(f"key {k!r} has shape {tuple(v.shape)}: expected q, k and v stacked on the first axis")
    else:
      for part, chunk in zip("qkv", np.split(v, 3, axis=0)):
        out[name.replace(_QKV, part)], origin[name.replace(_QKV, part)] = chunk, k
  return out, origin, problems


def timm_to_hf(sd: dict) -> tuple[dict, dict, list]:
  """timm names -> HF names, undoing timm's file quirks: the class slot of the position table comes
  back as zeros (its embedding already sits in `cls_token`, which no resampling touches, so the
  network is the same) and the mask token, which timm drops, as zeros (HF's init; no forward here
  reads it)."""
  out, origin, problems = _rename(sd, TIMM_TO_HF)
  pos = out.get("embeddings.position_embeddings")
  if pos is not None and pos.ndim == 3:
    out["embeddings.position_embeddings"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  cls = out.get("embeddings.cls_token")
  if cls is not None and cls.ndim == 3:
    out.setdefault("embeddings.mask_token", np.zeros_like(cls[0]))
  return out, origin, problems


def to_hf_names(sd: dict, source: str = "checkpoint") -> tuple[dict, dict]:
  """Any supported backbone state dict -> (HF-named state dict, {HF name: source name}).

  Raises CheckpointError for a fused tensor that does not split in three."""
  kind = source_kind(sd)
  if kind == "timm":
    out, origin, problems = timm_to_hf(sd)
  else:
    sd = {k.removeprefix(_HF_PREFIX): v for k, v in sd.items() if not _HF_HEAD.fullmatch(k)}
    out, origin, problems = _rename(sd, HF_LEGACY_TO_HF if kind == "hf_legacy" else ())
  if problems:
    raise_listed(f"{source} ({kind} layout) does not match the model", problems)
  return out, origin


def _hf_to_ours(name: str, reverse: bool = False) -> str:
  for hf, ours in HF_TO_OURS:
    name = name.replace(*((ours, hf) if reverse else (hf, ours)))
  return name


def expected_shapes(model: Dinov2WithRegisters) -> dict[str, tuple]:
  """{our PyTorch-layout name: shape} of every parameter (works on an abstract model)."""
  out = {}
  for path, like in torch_state._param_leaves(model)[1]:
    s = torch_state._stacked_at(path)
    shape = like.shape if s is None else like.shape[1:]
    for i in range(1 if s is None else like.shape[0]):
      p = path if s is None else path[:s + 1] + (str(i),) + path[s + 1:]
      name, v = torch_state.to_torch_layout(p, np.broadcast_to(np.zeros((), np.float32), shape))
      out[name] = tuple(v.shape)
  return out


def _check(sd: dict, want: dict, origin: dict, what: str):
  """Strict: every wanted key present with its shape, nothing else; names as the file has them."""
  def named(k):
    src = origin.get(k, k)
    return repr(src) if src == k else f"{src!r} (as {k!r})"
  problems = [f"missing key {k!r} (expected shape {shape})" for k, shape in want.items() if k not in sd]
  problems += [f"key {named(k)} has shape {tuple(np.shape(v))}, expected {want[k]}"
               for k, v in sd.items() if k in want and tuple(np.shape(v)) != want[k]]
  problems += [f"unexpected key {named(k)}" for k in sorted(sd) if k not in want]
  if problems:
    raise_listed(what, problems)


def backbone_state(model: Dinov2WithRegisters, sd: dict, *, source: str = "checkpoint") -> dict:
  """An HF (either naming) or timm backbone state dict, checked against `model` -> our names."""
  hf, origin = to_hf_names(sd, source)
  want = {_hf_to_ours(k, reverse=True): s for k, s in expected_shapes(model).items()
          if not k.startswith("denoiser.")}
  _check(hf, want, origin, f"{source} ({source_kind(sd)} layout) does not match the model")
  return {_hf_to_ours(k): v for k, v in hf.items()}


def denoiser_state(model: Dinov2WithRegisters, sd: dict, *, source: str = "checkpoint") -> dict:
  """DVT denoiser weights (`pos_embed`, `denoiser.*`), checked against `model.denoiser` -> our names."""
  if model.denoiser is None:
    raise CheckpointError(f"{source}: the model has no DVT denoiser (build it with dvt_denoiser=True)")
  ours, origin, problems = _rename(sd, DVT_TO_OURS)
  if problems:
    raise_listed(f"{source} (DVT layout) does not match the denoiser", problems)
  want = {k: s for k, s in expected_shapes(model).items() if k.startswith("denoiser.")}
  _check(ours, want, origin, f"{source} (DVT layout) does not match the denoiser")
  return ours


def import_backbone(model: Dinov2WithRegisters, sd: dict, *, source: str = "checkpoint"):
  """Load a backbone state dict into `model` in place; a DVT denoiser keeps its weights."""
  _update(model, backbone_state(model, sd, source=source))


def import_denoiser(model: Dinov2WithRegisters, sd: dict, *, source: str = "checkpoint"):
  """Load DVT denoiser weights into `model.denoiser` in place."""
  _update(model, denoiser_state(model, sd, source=source))


def _update(model, sd_ours: dict):
  """Set the (checked) parameters in `sd_ours`; the others keep their values."""
  rest = [k for k in expected_shapes(model) if k not in sd_ours]
  if rest:
    current = torch_state.export_state_dict(model)
    sd_ours = {**{k: current[k] for k in rest}, **sd_ours}
  torch_state.import_state_dict(model, sd_ours)


def export_hf_state_dict(model: Dinov2WithRegisters, dtype=np.float32) -> dict[str, np.ndarray]:
  """The backbone as an HF `Dinov2WithRegistersModel` state dict (today's names)."""
  return {_hf_to_ours(k, reverse=True): v for k, v in torch_state.export_state_dict(model, dtype).items()
          if not k.startswith("denoiser.")}


def export_denoiser(model: Dinov2WithRegisters, dtype=np.float32) -> dict[str, np.ndarray]:
  """The DVT denoiser in DVT's layout (`pos_embed`, `denoiser.attn.qkv.*`, ...)."""
  sd = {k: v for k, v in torch_state.export_state_dict(model, dtype).items() if k.startswith("denoiser.")}
  out = {"pos_embed": sd.pop("denoiser.pos_embed")}
  for kind in ("weight", "bias"):
    out[f"denoiser.attn.qkv.{kind}"] = np.concatenate(
        [sd.pop(f"denoiser.attention.{p}_proj.{kind}") for p in "qkv"], axis=0)
    out[f"denoiser.attn.proj.{kind}"] = sd.pop(f"denoiser.attention.out_proj.{kind}")
  out.update(sd)  # norm1/2, mlp.fc1/2: same names
  return out


def save_hf_dinov2(model: Dinov2WithRegisters, out_dir: str | Path, dtype=np.float32) -> Path:
  """Write an HF directory (`config.json` + `model.safetensors`; `dvt_denoiser.safetensors` too
  when the model has a denoiser) atomically."""
  cfg = dinov2.to_hf_dict(model.config)
  cfg["dtype"] = np.dtype(dtype).name
  files = {"config.json": json.dumps(cfg, indent=2).encode(),
           "model.safetensors": export_hf_state_dict(model, dtype)}
  if model.denoiser is not None:
    files[DVT_FILE] = export_denoiser(model, dtype)
  state_dict_io.write_dir_atomically(out_dir, files)
  return Path(out_dir)


def _timm_grid_config(cfg: Dinov2Config, sd: dict, source: str) -> Dinov2Config:
  """timm files carry the grid they were created for (518 -> 37×37, or e.g. 224 -> 16×16)."""
  pos = sd.get("pos_embed")
  if pos is None or pos.ndim != 3:
    return cfg  # reported as a missing / misshapen key by the strict check
  g = int(round(pos.shape[1] ** 0.5))
  if g * g != pos.shape[1]:
    raise CheckpointError(f"{source}: 'pos_embed' has {pos.shape[1]} positions, not a square grid")
  return dataclasses.replace(cfg, image_size=g * cfg.patch_size)


def read_dinov2_source(path: str | Path, arch: str | None = None) -> tuple[Dinov2Config, dict]:
  """-> (config, state dict as in the file). An HF directory brings its `config.json`; a timm hub
  directory's `config.json` names its `architecture`; a bare state dict needs `arch` (a preset name:
  a state dict records no head count). A timm file sets the native grid from its `pos_embed`."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: DINOv2 weights not found")
  config_file = path / "config.json" if path.is_dir() else None
  cfg = None
  if config_file is not None and config_file.is_file():
    record = json.loads(config_file.read_text())
    if "architecture" in record and arch is None:  # timm hub directory
      arch = record["architecture"]
    elif "model_type" in record:
      try:
        cfg = dinov2.from_hf_dict(record)
      except ValueError as e:
        raise CheckpointError(f"{config_file}: unsupported architecture: {e}") from e
  sd = state_dict_io.read_state_dict(path)
  if cfg is None:
    if arch is None:
      raise CheckpointError(f"{path}: a bare state dict does not record the architecture: pass "
                            f"arch= one of {sorted(dinov2.PRESETS)}")
    cfg = dinov2.get_preset(arch.split(".")[0]) if arch.split(".")[0] in dinov2.PRESETS else None
    if cfg is None:
      raise CheckpointError(f"{path}: unknown DINOv2 architecture {arch!r}: expected one of "
                            f"{sorted(dinov2.PRESETS)}")
    if source_kind(sd) == "timm":
      cfg = _timm_grid_config(cfg, sd, str(path))
  return cfg, sd


def read_dvt_file(path: str | Path) -> dict:
  """DVT denoiser weights: the file the SimZSS README names (`vit_base_patch14_reg4_dinov2.lvd142m
  .pth`, {"denoiser": {pos_embed, denoiser.*}, ...}; the release reads `torch.load(...)['denoiser']`,
  src/open_clip/model.py L152-154), a bare state dict, or our export's directory."""
  path = Path(path)
  if path.is_dir():
    return state_dict_io.read_state_dict(path / DVT_FILE)
  if path.suffix in (".pth", ".pt", ".bin"):
    import torch
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("denoiser"), dict):
      return {k: v.float().numpy() for k, v in obj["denoiser"].items() if isinstance(v, torch.Tensor)}
  return state_dict_io.read_state_dict(path)


def load_dinov2(path: str | Path, *, arch: str | None = None, denoiser: str | Path | None = None,
                **model_kw) -> Dinov2WithRegisters:
  """Our DINOv2-reg with the weights at `path` (HF directory or file, either naming; timm file or
  hub directory), plus a DVT denoiser from `denoiser` (a file, or our export's directory).
  `model_kw`: dtype, scan, remat."""
  cfg, sd = read_dinov2_source(path, arch)
  if denoiser is not None:
    cfg = dataclasses.replace(cfg, dvt_denoiser=True)
  model = dinov2.abstract_model(cfg, **model_kw)
  state = backbone_state(model, sd, source=str(path))
  if denoiser is not None:
    state.update(denoiser_state(model, read_dvt_file(denoiser), source=str(denoiser)))
  torch_state.import_state_dict(model, state)
  return model
