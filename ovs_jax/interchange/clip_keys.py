"""CLIP key map: our NNX parameter paths <-> HF `CLIPModel` names, and OpenCLIP -> HF names.

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

from ovs_jax.interchange.errors import CheckpointError

# HF buffers that are not parameters and may appear in older checkpoints.
IGNORED_HF_KEYS = re.compile(r".*(position_ids|attn_mask)$")


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


# OpenCLIP -> HF renames, applied in order to each key.
_OPENCLIP_RENAMES = [
    (r"^visual\.conv1\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),
    (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
    (r"^visual\.transformer\.resblocks\.", "vision_model.encoder.layers."),
    (r"^transformer\.resblocks\.", "text_model.encoder.layers."),
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"\.ln_1\.", ".layer_norm1."),
    (r"\.ln_2\.", ".layer_norm2."),
    (r"\.attn\.out_proj\.", ".self_attn.out_proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
]


def openclip_to_hf(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rename an OpenCLIP ViT state dict to HF CLIP names (q/k/v split, projections transposed)."""
  if "visual.conv1.weight" not in sd:
    if any(k.startswith("visual.trunk.") or k.startswith("visual.layer1") for k in sd):
      raise CheckpointError("OpenCLIP checkpoint has a non-ViT image tower (timm/ResNet trunk); "
                            "only ViT CLIP towers are supported")
    raise CheckpointError("not an OpenCLIP ViT state dict: key 'visual.conv1.weight' is missing")
  out = {}
  for k, v in sd.items():
    if k in ("visual.proj", "text_projection"):  # stored (width, embed), unlike nn.Linear
      out["visual_projection.weight" if k == "visual.proj" else "text_projection.weight"] = v.T
      continue
    name = k
    for pattern, repl in _OPENCLIP_RENAMES:
      name = re.sub(pattern, repl, name)
    m = re.match(r"(.*)\.attn\.in_proj_(weight|bias)$", name)
    if m:
      for proj, part in zip("qkv", np.split(v, 3, axis=0)):
        out[f"{m[1]}.self_attn.{proj}_proj.{m[2]}"] = part
      continue
    out[name] = v
  return out


def infer_openclip_config(sd: dict[str, np.ndarray], hidden_act: str):
  """CLIPConfig from the shapes of an OpenCLIP ViT state dict (head width 64, as OpenCLIP uses)."""
  from ovs_jax.models.clip_config import CLIPConfig, TowerConfig

  def layers(prefix):
    idx = {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return len(idx)
  width, _, patch, _ = sd["visual.conv1.weight"].shape
  grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
  tw = sd["token_embedding.weight"].shape[1]
  vision = TowerConfig(width, sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                       layers("visual.transformer.resblocks."), width // 64, hidden_act,
                       image_size=grid * patch, patch_size=patch)
  text = TowerConfig(tw, sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                     layers("transformer.resblocks."), tw // 64, hidden_act,
                     vocab_size=sd["token_embedding.weight"].shape[0],
                     max_position_embeddings=sd["positional_embedding"].shape[0],
                     eos_token_id=sd["token_embedding.weight"].shape[0] - 1)
  return CLIPConfig(vision, text, projection_dim=sd["text_projection"].shape[1])
