"""Shared pieces of the scale-out tests: a tiny MAFT+ config and a few training steps on a mesh."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Faster XLA:CPU compiles for subprocess runs (half the compile time; numerics are compared only
# between runs that use the same flags).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _scale_overrides(mesh: dict, steps: int) -> dict:
  """The demo recipe shrunk until a step compiles in well under a minute (fp32); eval at the end."""
  sizes = dict(dict(data=1, fsdp=1, tensor=1), **mesh)
  return {
      "clip.weights": "random", "model.num_queries": 8, "model.dec_layers": 1, "model.enc_layers": 1,
      "model.enc_ffn_dim": 32, "model.dec_ffn_dim": 32, "model.hidden_dim": 32, "model.dtype": "float32",
      "loss.num_points": 64, "data.num_masks": 4, "data.crop_size": 64, "data.worker_count": 0,
      "evals.val.short_side": 64, "evals.val.batch_size": 8, "evals.val.max_images": 8,
      "evals.val.every": 1000, "evals.pictures.every": -1, "train.steps": steps,
      "train.log_every": 1, "train.ckpt_every": 1000,
      # Adam eps 1e-3 instead of 1e-8: parameters whose exact gradient is zero (attention key
      # biases, biases right before a normalisation) get roundoff-level gradients whose sign
      # depends on the reduction order of sharded sums; g/(sqrt(v)+1e-8) would make them ±lr steps.
      "optim.eps": 1e-3, **{f"mesh.{k}": v for k, v in sizes.items()}}


def tiny_config(mesh: dict, steps: int = 3):
  from configs.cdt_vitb import get_config
  from trainer_helpers import apply_overrides
  return apply_overrides(get_config("demo"), _scale_overrides(mesh, steps))


def config_flags(mesh: dict, steps: int) -> list[str]:
  """The same tiny config as command-line overrides of configs/cdt_vitb.py:demo."""
  return [f"--config.{k}={v}" for k, v in _scale_overrides(mesh, steps).items()]


def train_steps(run, n: int):
  """n steps of `run` (a trainer.Run): (losses, params as numpy, this host's sample fingerprints).

  A fingerprint is a hash of one training image, for checking which host read which sample.
  """
  import hashlib

  import jax
  from jax.experimental import multihost_utils
  losses, seen = [], []
  for _ in range(n):
    batch, _ = next(run.data)
    for s in batch["image"].addressable_shards:
      if s.replica_id == 0:
        seen += [hashlib.sha1(np.asarray(x).tobytes()).hexdigest() for x in np.asarray(s.data)]
    run.state, metrics = run.train_step(run.state, batch, run.context)
    losses.append(float(metrics["loss"].addressable_data(0)))  # replicated: any local copy
  params = (jax.device_get(run.state["params"]) if jax.process_count() == 1 else
            multihost_utils.process_allgather(run.state["params"], tiled=True))
  return losses, params, seen


def assert_trees_close(actual, expected, rtol=5e-5, what="params", floor=3e-4):
  """Per leaf: max|a-b| ≤ rtol · max(max|b|, floor): fp32 roundoff of sharded sums in reordered
  reductions reaches ~2.5e-5 after a few Adam steps on small biases. The floor (the tiny config's learning rate)
  judges zero-initialised parameters with an exactly-zero gradient (attention key biases, biases
  before a normalisation), which only ever move by roundoff, against the size of a real step."""
  import jax
  from ovs_jax.optim import path_str
  bad = []
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)):
    a, b = np.asarray(a), np.asarray(b)
    err = float(np.max(np.abs(a - b), initial=0) / max(float(np.max(np.abs(b), initial=0)), floor, 1e-30))
    if err > rtol:
      bad.append(f"{path_str(path)} {a.shape}: {err:.2e}")
  assert not bad, f"{what} differ (max abs diff / max abs) > {rtol}:\n" + "\n".join(bad[:20])


def python_env(**extra) -> dict:
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", XLA_FLAGS=FAST_XLA,
             PYTHONUNBUFFERED="1", **extra)
  env.pop("JAX_PLATFORMS", None)
  return env


def run_python(args, timeout=600, **env):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=python_env(**env), capture_output=True,
                        text=True, timeout=timeout)


def assert_updates_close(actual, expected, initial, lr, rtol=1e-3, what="params"):
  """Per leaf: max|a-b| ≤ rtol · max(max|b-initial|, lr): two runs of the same steps agree to a
  fraction of the update they made. Comparing against the parameters' size instead puts
  zero-initialised biases (|b| ~ a few lr) at the edge of fp32 roundoff: a sharded gradient summed
  in another order differs by ~1e-7 of its terms, and where the terms cancel that is ~1e-4 of the
  gradient and of Adam's step (eps 1e-3 > |g|). A sharding bug (a missing or doubled reduction)
  moves a step by O(1) of itself."""
  import jax
  from ovs_jax.optim import path_str
  bad = []
  flat = jax.tree_util.tree_flatten_with_path(actual)[0]
  for (path, a), b, i in zip(flat, jax.tree.leaves(expected), jax.tree.leaves(initial)):
    a, b, i = np.asarray(a), np.asarray(b), np.asarray(i)
    step = max(float(np.max(np.abs(b - i), initial=0)), lr)
    err = float(np.max(np.abs(a - b), initial=0)) / step
    if err > rtol:
      bad.append(f"{path_str(path)} {a.shape}: {err:.2e} of its update")
  assert not bad, f"{what} differ by more than {rtol} of their update:\n" + "\n".join(bad[:20])
