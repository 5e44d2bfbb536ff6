"""CLIP key map: our NNX parameter paths <-> HF `CLIPModel` names, and OpenCLIP <-> HF names.

Conversion is data: a parameter's HF name is its path with the leaf renamed, and its layout change
is decided by the leaf kind alone:
  Linear `kernel` (in, out)       <-> `weight` (out, in)
  Conv   `kernel` (kh, kw, I, O)  <-> `weight` (O, I, kh, kw)
  LayerNorm `scale`               <-> `weight`
  Embed  `embedding`              <-> `weight`
  BatchNorm `mean`, `var`         <-> `running_mean`, `running_var` (nnx.BatchStat)
"""
from __future__ import annotations

import re

import numpy as np


# Buffers that are not parameters: HF's in older checkpoints; OpenAI's TorchScript CLIP state dicts
# carry three model hyper-parameters (OpenCLIP's `build_model_from_openai_state_dict` drops them).
IGNORED_HF_KEYS = re.compile(
    r".*(position_ids|attn_mask)$|input_resolution|context_length|vocab_size")


def to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
  """Our (path, array) -> (PyTorch name, array in PyTorch layout)."""
  *head, leaf = path
  if leaf == "kernel":
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    leaf = "weight"
  elif leaf in ("scale", "embedding"):
    leaf = "weight"
  elif leaf in ("mean", "var"):
    leaf = f"running_{leaf}"
  return ".".join([*head, leaf]), value


def from_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Inverse of `to_torch_layout` for the array, given our path."""
  if path[-1] == "kernel":
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def torch_name(path: tuple[str, ...]) -> str:
  return to_torch_layout(path, np.zeros((1,) * (4 if path[-1] == "kernel" else 1)))[0]


# OpenCLIP <-> HF name fragments, (OpenCLIP, HF, where): "key" a whole key, "prefix" a leading
# fragment, "infix" anywhere. One table gives both directions.
_RENAMES = [
    ("visual.conv1.", "vision_model.embeddings.patch_embedding.", "prefix"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", "key"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", "key"),
    ("visual.ln_pre.", "vision_model.pre_layrnorm.", "prefix"),
    ("visual.ln_post.", "vision_model.post_layernorm.", "prefix"),
    ("visual.transformer.resblocks.", "vision_model.encoder.layers.", "prefix"),
    ("transformer.resblocks.", "text_model.encoder.layers.", "prefix"),
    ("token_embedding.", "text_model.embeddings.token_embedding.", "prefix"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight", "key"),
    ("ln_final.", "text_model.final_layer_norm.", "prefix"),
    (".ln_1.", ".layer_norm1.", "infix"),
    (".ln_2.", ".layer_norm2.", "infix"),
    (".attn.out_proj.", ".self_attn.out_proj.", "infix"),
    (".mlp.c_fc.", ".mlp.fc1.", "infix"),
    (".mlp.c_proj.", ".mlp.fc2.", "infix"),
]
# Stored (width, embed) as nn.Parameter, unlike nn.Linear's (out, in).
_PROJECTIONS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}


def _rename(name: str, reverse: bool) -> str:
  for openclip, hf, where in _RENAMES:
    src, dst = (hf, openclip) if reverse else (openclip, hf)
    if where == "key" and name == src or where == "prefix" and name.startswith(src):
      name = dst + name[len(src):]
    elif where == "infix":
      name = name.replace(src, dst)
  return name


def openclip_to_hf(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """OpenCLIP names -> ours: HF CLIP names for the text tower and a ViT image tower (q/k/v split,
  projections transposed); any other image tower's `visual.*` keys (a timm ConvNeXt's
  `visual.trunk.*` / `visual.head.*`, a ModifiedResNet's `visual.conv1.*`, `visual.layer1.*`, ...)
  are ours as they are. A ViT is told by its `visual.class_embedding`."""
  out = {}
  vit = "visual.class_embedding" in sd
  for k, v in sd.items():
    if k in _PROJECTIONS:
      out[_PROJECTIONS[k]] = v.T
      continue
    if k.startswith("visual.") and not vit:
      out[k] = v
      continue
    name = _rename(k, reverse=False)
    m = re.match(r"(.*)\.attn\.in_proj_(weight|bias)$", name)
    if m:
      for proj, part in zip("qkv", np.split(v, 3, axis=0)):
        out[f"{m[1]}.self_attn.{proj}_proj.{m[2]}"] = part
      continue
    out[name] = v
  return out


def hf_to_openclip(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `openclip_to_hf`: q/k/v merged into `in_proj_*`, projections transposed back."""
  out, qkv = {}, {}
  for k, v in sd.items():
    inverse = {hf: oc for oc, hf in _PROJECTIONS.items()}
    if k in inverse:
      out[inverse[k]] = v.T
      continue
    m = re.match(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
    if m:
      qkv.setdefault((m[1], m[3]), {})[m[2]] = v
      continue
    # A ViT's image tower is `vision_model.*` here: every `visual.*` key is another tower's.
    out[k if k.startswith("visual.") else _rename(k, reverse=True)] = v
  for (prefix, kind), parts in qkv.items():
    out[_rename(f"{prefix}.attn.in_proj_{kind}", reverse=True)] = np.concatenate(
        [parts["q"], parts["k"], parts["v"]], axis=0)
  return out
