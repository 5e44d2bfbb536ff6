"""The SimZSS release's checkpoints (its ViT-B/14 COCO and LAION files, README "Pretrained model")
<-> our workdirs.

  from_official: a release checkpoint ({"state_dict": ...} with DDP's "module." prefix, or a bare
                 state dict; read with torch.load(weights_only=True)) -> a new workdir that
                 evaluate / predict / serve read, recipe configs/simzss_dinov2_b14.py.
  to_official:   a SimZSS workdir with a DINOv2 tower -> `{"state_dict": ...}` in the release's
                 layout (its README's loading snippet strips "module." and calls load_state_dict).
Names and shapes: `ovs_jax/interchange/simzss_official.py`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from ovs_jax.interchange import simzss_official as official
from ovs_jax.interchange.errors import CheckpointError

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "simzss_dinov2_b14.py"


def read_release_checkpoint(src) -> dict[str, np.ndarray]:
  import torch
  try:
    obj = torch.load(str(src), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{src}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None
  sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
  if not isinstance(sd, dict):
    raise CheckpointError(f"{src}: expected a state dict or {{'state_dict': ...}}, got {type(obj).__name__}")
  return official.unwrap({k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")})


def from_official(src, workdir, *, recipe: str | None = None, step: int = 0,
                  text_heads: int | None = None) -> Path:
  from ovs_jax.config_utils import recipe_config
  from ovs_jax.torch_export.checkpoint import write_imported_workdir
  src = Path(src).absolute()
  sd = read_release_checkpoint(src)
  name, _, variant = (recipe or str(RECIPE)).partition(":")
  config = recipe_config(name, variant)
  architecture = official.architecture(sd, text_heads)
  config.vision.denoiser = str(src) if architecture["vision"]["config"]["dvt_denoiser"] else ""
  return write_imported_workdir(workdir, config, architecture, step=step, source=str(src),
                                precision="float32",
                                load=lambda model: official.load(model, sd, source=str(src)))


def to_official(checkpoint, out) -> Path:
  import jax
  import torch

  from ovs_jax import sharding
  from ovs_jax.restore import restore_workdir
  from ovs_jax.torch_export.checkpoint import parse_checkpoint
  workdir, step = parse_checkpoint(checkpoint)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  config, graphdef, state, step = restore_workdir(workdir, step, mesh)
  if config.method != "simzss" or config.vision.tower != "dinov2":
    raise CheckpointError(f"{workdir}: method {config.method!r}, tower {config.vision.get('tower')!r}; "
                          "the release's layout holds a SimZSS with a DINOv2 tower")
  sd = official.to_official(nnx.merge(graphdef, state["params"], state["frozen"]))
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  torch.save({"epoch": 0, "state_dict": {"module." + k: torch.from_numpy(np.array(v, order="C"))
                                         for k, v in sd.items()}}, tmp)
  tmp.replace(out)
  return out
