"""ImageNet ResNets for MaskCLIP+'s students: mmseg `open-mmlab://resnet101_v1c` (deep stem) and
torchvision `resnet101` state dicts <-> `models/dilated_resnet.DilatedResNet`, and the DeepLab heads
(`heads/deeplab.py`) <-> mmseg's head state dicts.

Names are PyTorch's except for these renames (one table, both directions): the deep stem's
Sequential keeps its convs and BNs at torch indices 0,1,3,4,6,7 (2,5,8 are ReLUs), ours at 0..5;
the heads' `image_pool` is torch's `image_pool.1` (index 0 is the pooling). The classifier `fc.*`
of an ImageNet checkpoint and an mmseg model's `backbone.` prefix are dropped on import.

  python -m ovs_jax.convert resnet --src=resnet101_v1c-e67eebb6.pth --out=r101_v1c/
writes `r101_v1c/config.json` (the `DilatedResNetConfig` the keys imply) and
`r101_v1c/model.safetensors` (PyTorch names), after checking that the weights load into the model
and export back bit-identically; `config.model.backbone_weights` reads either.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from ovs_jax.interchange import torch_state
from ovs_jax.interchange.errors import CheckpointError

_STEM = {"0": "0", "1": "1", "3": "2", "4": "3", "6": "4", "7": "5"}  # torch -> ours
_STEM_BACK = {v: k for k, v in _STEM.items()}
_IGNORED = re.compile(r"fc\..*")


def _rename(name: str, table: dict, pool_from: str, pool_to: str) -> str:
  m = re.match(r"stem\.(\d+)\.(.*)", name)
  if m and m.group(1) in table:
    return f"stem.{table[m.group(1)]}.{m.group(2)}"
  return re.sub(rf"(^|\.){re.escape(pool_from)}\.", rf"\g<1>{pool_to}.", name)


def from_torch_names(sd: dict) -> dict:
  """A torchvision / mmseg state dict -> our names (fc.* and `backbone.` dropped)."""
  out = {}
  for k, v in sd.items():
    k = k.removeprefix("backbone.")
    if not _IGNORED.fullmatch(k):
      out[_rename(k, _STEM, "image_pool.1", "image_pool")] = v
  return out


def to_torch_names(sd: dict) -> dict:
  return {_rename(k, _STEM_BACK, "image_pool", "image_pool.1"): v for k, v in sd.items()}


def config_from_state_dict(sd: dict, **overrides):
  """The `DilatedResNetConfig` whose shapes a (torch-named) backbone state dict holds."""
  from ovs_jax.models.dilated_resnet import DilatedResNetConfig
  sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
  deep = "stem.0.weight" in sd
  if not deep and "conv1.weight" not in sd:
    raise CheckpointError("not a ResNet state dict: neither 'stem.0.weight' (mmseg V1c) nor "
                          "'conv1.weight' (torchvision) is present")
  blocks = []
  for i in range(1, 5):
    ids = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
    if not ids:
      raise CheckpointError(f"ResNet state dict has no layer{i}.* keys")
    blocks.append(max(ids) + 1)
  stem = sd["stem.6.weight" if deep else "conv1.weight"].shape[0]
  return DilatedResNetConfig(blocks=tuple(blocks), base_width=sd["layer1.0.conv1.weight"].shape[0],
                             stem_channels=stem, deep_stem=deep, **overrides)


def import_torch(model, sd: dict, source: str = "checkpoint") -> None:
  """Load a torch-named state dict (backbone, head, or a module holding both) into `model`."""
  torch_state.import_state_dict(model, from_torch_names(sd), source=source)


def export_torch(model) -> dict[str, np.ndarray]:
  return to_torch_names(torch_state.export_state_dict(model))


def load_backbone_weights(model, path: str | Path) -> None:
  """`path`: a torchvision / mmseg .pth or .safetensors, or a directory from `convert resnet`."""
  from ovs_jax.interchange.state_dict_io import read_state_dict
  p = Path(path)
  import_torch(model, read_state_dict(p / "model.safetensors" if p.is_dir() else p), source=str(p))


def convert_resnet(src: str | Path, out: str | Path) -> Path:
  """A ResNet ImageNet checkpoint -> `out/` (config.json, model.safetensors), verified bit-identical."""
  from flax import nnx

  from ovs_jax.interchange.state_dict_io import read_state_dict, write_dir_atomically
  from ovs_jax.models.dilated_resnet import DilatedResNet
  sd = {k.removeprefix("backbone."): v for k, v in read_state_dict(src).items()}
  cfg = config_from_state_dict(sd)
  model = nnx.eval_shape(lambda: DilatedResNet(cfg, rngs=nnx.Rngs(0)))
  import_torch(model, sd, source=str(src))
  back = export_torch(model)
  for k, v in back.items():
    if not np.array_equal(v, np.asarray(sd[k]).astype(v.dtype)):
      raise CheckpointError(f"{src}: {k} did not survive the round trip")
  write_dir_atomically(out, {"config.json": json.dumps(dataclasses.asdict(cfg), indent=1).encode(),
                             "model.safetensors": back})
  print(f"wrote {out} ({sum(v.size for v in back.values()) / 1e6:.1f}M parameters, blocks "
        f"{cfg.blocks}, {'V1c deep' if cfg.deep_stem else 'torchvision 7x7'} stem)")
  return Path(out)
