"""A tiny MAFT+ recipe on the demo dataset, small enough to compile and step in seconds."""
import sys

from configs.cdt_vitb import get_config

TINY = {
    "clip.weights": "random",
    "model.num_queries": 8, "model.hidden_dim": 32, "model.enc_layers": 1, "model.enc_ffn_dim": 64,
    "model.dec_layers": 1, "model.dec_ffn_dim": 64, "model.num_heads": 2, "model.deform_points": 1,
    "model.cdt_heads": 2, "loss.num_points": 256, "data.crop_size": 64, "data.num_masks": 6,
    "data.eval_short_side": 64, "data.eval_max_images": 8, "train.batch_size": 8, "train.steps": 4,
    "train.log_every": 1, "train.ckpt_every": 2, "train.eval_every": 0, "train.num_predictions": 0,
}


def tiny_config(**overrides):
  """The demo config shrunk by TINY, then `overrides` ('train__steps'=6 sets train.steps)."""
  c = get_config("demo")
  for key, value in {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
    group, field = key.split(".")
    c[group][field] = value
  return c


def train_command(workdir, *extra):
  """The CLI call that trains the same tiny recipe."""
  return [sys.executable, "-m", "ovs_jax.train", "--config=configs/cdt_vitb.py:demo",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in TINY.items()), *extra]
