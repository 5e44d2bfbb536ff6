"""A tiny MAFT+ recipe on the demo dataset, small enough to compile and step in seconds."""
import sys

from configs.cdt_vitb import get_config

TINY = {
    "clip.weights": "random",
    "model.num_queries": 8, "model.hidden_dim": 32, "model.enc_layers": 1, "model.enc_ffn_dim": 64,
    "model.dec_layers": 1, "model.dec_ffn_dim": 64, "model.num_heads": 2, "model.deform_points": 1,
    "model.cdt_heads": 2, "loss.num_points": 256, "data.crop_size": 64, "data.num_masks": 6,
    "evals.val.short_side": 64, "evals.val.max_images": 8, "evals.val.every": -1,
    "evals.val.baseline": "",  # the MaskCLIP baseline is covered once, in test_mvp_seg
    "evals.pictures.short_side": 64, "evals.pictures.every": -1, "train.batch_size": 8,
    "train.steps": 4, "train.log_every": 1, "train.ckpt_every": 2,
}


def apply_overrides(config, overrides: dict):
  """Set dotted keys ('evals.val.every') of a ConfigDict, as --config.a.b=v does."""
  for key, value in overrides.items():
    *groups, field = key.split(".")
    node = config
    for g in groups:
      node = node[g]
    node[field] = value
  return config


def tiny_config(**overrides):
  """The demo config shrunk by TINY, then `overrides` ('train__steps'=6 sets train.steps)."""
  return apply_overrides(get_config("demo"), {**TINY, **{k.replace("__", "."): v
                                                         for k, v in overrides.items()}})


def train_command(workdir, *extra):
  """The CLI call that trains the same tiny recipe."""
  return [sys.executable, "-m", "ovs_jax.train", "--config=configs/cdt_vitb.py:demo",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in TINY.items()), *extra]


def file_digests(root) -> dict:
  """{path relative to root: sha256} of every file under root (to show nothing was lost)."""
  import hashlib
  from pathlib import Path
  root = Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}
