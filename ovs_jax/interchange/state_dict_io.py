"""Reading and writing PyTorch-layout state dicts as numpy, without ever unpickling code.

`.safetensors` is read directly; `.bin/.pt/.pth` only through `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ovs_jax.interchange.errors import CheckpointError

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  out = {}
  with safe_open(str(path), framework="numpy") as f:
    for k in f.keys():
      out[k] = np.asarray(f.get_tensor(k))
  return out


def _read_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(f"{path}: reading PyTorch .bin/.pt files needs torch "
                          "(pip install 'ovs_jax[torch]'), or convert it to .safetensors") from e
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except RuntimeError as e:
    if "TorchScript" not in str(e):
      raise
    raise CheckpointError(
        f"{path}: a TorchScript archive (as OpenAI's CLIP downloads, e.g. RN50.pt), which holds "
        "code and is not read here. Use OpenCLIP's copy of the weights (open_clip_pytorch_model.bin"
        " on the hub), or, for a file you trust, save its state dict once: "
        "safetensors.torch.save_file(torch.jit.load(PATH).state_dict(), 'clip.safetensors')") from e
  for wrapper in ("state_dict", "model"):  # Lightning-style, detectron2 ({'model': ..., 'iteration': ...})
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      out[k.removeprefix("module.")] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict from a file, a sharded index, or an HF model directory."""
  path = Path(path)
  if path.is_dir():
    for name in HF_WEIGHT_FILES:
      if (path / name).exists():
        return read_state_dict(path / name)
    raise CheckpointError(f"{path}: no weights file found; expected one of {', '.join(HF_WEIGHT_FILES)}")
  if not path.exists():
    raise CheckpointError(f"{path}: file not found")
  try:
    if path.name.endswith(".index.json"):
      index = json.loads(path.read_text())["weight_map"]
      out = {}
      for shard in sorted(set(index.values())):
        out.update(read_state_dict(path.parent / shard))
      return out
    if path.suffix == ".safetensors":
      return _read_safetensors(path)
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
      return _read_torch(path)
  except CheckpointError:
    raise
  except Exception as e:  # a truncated or foreign file: say which and why
    raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
  raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}; "
                        "expected .safetensors, .bin/.pt/.pth or an HF model directory")


def write_dir_atomically(out_dir: str | os.PathLike, files: dict[str, bytes | dict[str, np.ndarray]]):
  """Write files into `out_dir` via a temporary sibling directory renamed at the end.

  Values are bytes (written as is) or a state dict (written as safetensors). A crash leaves either
  the previous directory or the complete new one, never a half-written mix.
  """
  from safetensors.numpy import save_file
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    for name, content in files.items():
      (tmp / name).parent.mkdir(parents=True, exist_ok=True)  # names may hold subdirectories
      if isinstance(content, dict):
        save_file({k: np.array(v, order="C") for k, v in content.items()}, str(tmp / name),
                  metadata={"format": "pt"})
      else:
        (tmp / name).write_bytes(content)
    if out_dir.exists():
      old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
      out_dir.rename(old)
      tmp.rename(out_dir)
      shutil.rmtree(old)
    else:
      tmp.rename(out_dir)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
