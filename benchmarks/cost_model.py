"""Cost of every shipped recipe from XLA's cost analysis of its real jitted steps, and what a full run
would take on accelerators.

  python benchmarks/cost_model.py [--recipes=cdt_vitb,maft_plus_convnext_b,...] [--utilisation=0.4]
                                  [--measure_size=224] [--no_measure]

Per recipe (every configs/*.py at its default variant):
- train GFLOP and GB per step: `train_step.lower_train_step` (the sharded step the trainer runs:
  forward, backward, optimizer) at the recipe's batch and training canvas, one device, attention
  "xla" (XLA counts a while loop's body once, so the chunked CPU attention would hide FLOPs).
  Bytes are those of the HLO before fusion: an upper bound on memory traffic.
- eval GFLOP per image: the method's `segmentation_model` (150 classes) on one canvas of the
  recipe's first evaluator (short side as configured, 4:3, padded to the model's multiple).
- CPU achieved GFLOP/s and MFU: the real train step run here at batch 1 and --measure_size² with
  random weights, its FLOPs from its own compiled cost analysis over its best wall time, against
  this machine's fp32 matmul peak (measured by the script: XLA and PyTorch).
- projection: (train FLOPs × steps + eval FLOPs × evaluated images) / (chip peak × utilisation),
  dense bf16 peaks A100 312, H100 SXM 989, TPU v5e 197 TFLOP/s; 8-chip wall time assumes linear
  scaling. The paper (Jiao et al. 2024) reports ≈14 h on 8×A100 for MAFT+ Base (ConvNeXt-B).
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path[0] = str(ROOT)  # benchmarks/input_pipeline.py would shadow the package

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax import layers, sharding
from ovs_jax.config_utils import recipe_config
from ovs_jax.methods.registry import get_method
from ovs_jax.timing import best_time
from ovs_jax.train_step import init_train_state, jit_train_step, lower_train_step

PEAKS = {"A100": 312e12, "H100": 989e12, "TPU v5e": 197e12}  # dense bf16 FLOP/s per chip
# Images in each evaluation dataset's split (the recipes' evaluators).
EVAL_IMAGES = {"ade20k_150": 2000, "ade20k_847": 2000, "pascal_context_59": 5105,
               "pascal_context_459": 5105, "pascal_voc_20": 1449, "pascal_voc_21": 1449,
               "coco_stuff_171": 5000, "coco_panoptic_133": 5000, "cityscapes": 500}
PAPER = {"maft_plus_convnext_b": ("8×A100 ≈14 h (MAFT+ Base)", 8 * 14)}  # (text, A100-hours)


def full_config(name):
  config = recipe_config(ROOT / "configs" / f"{name}.py", "")
  config.clip.weights = "random"  # shapes only; nothing is read
  if "vision" in config:
    config.vision.weights = "random"
  config.model.attention = "xla"
  config.mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  return config


def round_up(x, m):
  return int(math.ceil(x / m) * m)


def train_canvas(config):
  """(H, W, note) of a training batch: the fixed crop, or detectron2's short side with a 4:3 image."""
  d = config.data
  if "captions" in d:
    return d.crop_size, d.crop_size, f"{d.crop_size}² crops"
  if d.get("train_mapper") == "lsj" or d.get("crop_enabled"):
    return d.crop_size, d.crop_size, f"{d.crop_size}² crops"
  short = max(d.min_size_train)
  long = min(d.max_size_train, round(short * 4 / 3))
  b = d.get("train_bucket", 32)
  return round_up(short, b), round_up(long, b), f"short side {short}, 4:3 → {round_up(short, b)}×{round_up(long, b)}"


def evaluations(config):
  """(short side, images evaluated over the run) from the recipe's segmentation evaluators."""
  short, images = None, 0
  for e in config.evals.values():
    if e.get("type") not in ("miou", "zero_shot"):
      continue
    short = short or e.short_side
    n = e.max_images or EVAL_IMAGES.get(e.dataset, 2000)
    runs = 1 + (config.train.steps // e.every if e.every > 0 else 0)
    images += n * runs
  return short or 512, images


def train_cost(method, config, batch, h, w):
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  lowered, _ = lower_train_step(method, config, mesh, batch_size=batch, height=h, width=w)
  cost = lowered.cost_analysis()
  # XLA counts a while loop's body once: the loops left (matching, scans) are reported with the row.
  loops = lowered.as_text().count("stablehlo.while")
  return cost["flops"], cost["bytes accessed"], loops


def eval_cost(method, config, short):
  """FLOPs of one image through the method's segmentation model (150 classes, one template)."""
  model = method.build_model(config)
  layers.set_attention(model, "xla")
  graphdef, *states = nnx.split(model, nnx.Param, ...)
  vocab = [[f"class {i}"] for i in range(150)]
  seg = method.segmentation_model(graphdef, tuple(states), config, vocab, templates=("a photo of a {}.",))
  m = max(seg.input_multiple, 1)
  h, w = round_up(short, m), round_up(short * 4 / 3, m)
  pixels = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  valid = jax.ShapeDtypeStruct((1, h, w), jnp.bool_)
  flops = jax.jit(seg.apply).lower(seg.params, pixels, valid).cost_analysis()["flops"]
  del model, seg
  return flops, (h, w)


def measure_cpu(method, config, size):
  """(achieved FLOP/s, seconds) of the real train step at batch 1 and size² here, random weights."""
  config = config.copy_and_resolve_references()
  config.model.attention = "auto"
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  ts = init_train_state(method, config, mesh)
  model = nnx.eval_shape(lambda: method.build_model(config))
  r = np.random.default_rng(0)

  def fill(shape, dtype):
    dtype = jnp.dtype(dtype)
    if dtype == jnp.bool_:
      return jnp.ones(shape, bool)
    if jnp.issubdtype(dtype, jnp.integer):
      return jnp.asarray(r.integers(0, 8, shape), dtype)
    return jnp.asarray(r.standard_normal(shape), dtype)
  is_spec = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)
  batch = {k: fill(*v) for k, v in method.batch_spec(config, 1, size, size).items()}
  context = jax.tree.map(lambda s: fill(*s), method.context_spec(model, 8, 2), is_leaf=is_spec)
  step = jit_train_step(method, config, ts, mesh)
  # The CPU step runs the chunked attention (while loops): count FLOPs on its "xla" twin.
  flops = train_cost(method, full_config_like(config), 1, size, size)[0]
  state = [ts.state]

  def run():
    state[0], metrics = step(state[0], batch, context)
    return metrics["loss"]
  seconds = best_time(run, 2)
  return flops / seconds, seconds


def full_config_like(config):
  c = config.copy_and_resolve_references()
  c.model.attention = "xla"
  return c


def matmul_peak(n=2048):
  """fp32 matmul FLOP/s here: (XLA, PyTorch)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  t = best_time(lambda: f(a), 5)
  import torch
  ta = torch.randn(n, n)
  tt = best_time(lambda: ta @ ta, 5)
  return 2 * n ** 3 / t, 2 * n ** 3 / tt


def main():
  p = argparse.ArgumentParser()
  names = sorted(f.stem for f in (ROOT / "configs").glob("*.py"))
  p.add_argument("--recipes", default=",".join(n for n in names if n != "cdt_vitb"),
                 help="cdt_vitb is maft_plus_vitb under its first name")
  p.add_argument("--utilisation", type=float, default=0.4)
  p.add_argument("--measure_size", type=int, default=224)
  p.add_argument("--no_measure", action="store_true")
  args = p.parse_args()
  peak_xla, peak_torch = matmul_peak()
  print(f"fp32 matmul peak here: XLA {peak_xla / 1e9:.0f} GFLOP/s, PyTorch {peak_torch / 1e9:.0f} GFLOP/s "
        f"(load {os.getloadavg()[0]:.1f})", flush=True)
  rows, implied = [], []
  for name in args.recipes.split(","):
    t0 = time.time()
    config = full_config(name)
    method = get_method(config.method)
    h, w, canvas = train_canvas(config)
    batch, steps = config.train.batch_size, config.train.steps
    tf, tb, loops = train_cost(method, config, batch, h, w)
    short, n_eval = evaluations(config)
    ef, ehw = eval_cost(method, config, short)
    achieved = seconds = float("nan")
    if not args.no_measure:
      achieved, seconds = measure_cpu(method, config, args.measure_size)
    total = tf * steps + ef * n_eval
    hours = {k: total / (v * args.utilisation) / 3600 for k, v in PEAKS.items()}
    rows.append((name, f"{batch} × {canvas}", steps, loops, tf / 1e9, tb / 1e9, ef / 1e9, f"{ehw[0]}×{ehw[1]}",
                 n_eval, achieved / 1e9, achieved / peak_xla, hours, PAPER.get(name, ("",))[0]))
    if name in PAPER:
      implied.append(f"{name}: the paper's {PAPER[name][1]} A100-hours for these FLOPs mean "
                     f"{total / (PAPER[name][1] * 3600 * PEAKS['A100']):.1%} of A100 bf16 peak")
    print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)

  print(f"\nRecipe costs (XLA cost analysis, one device; projected at {args.utilisation:.0%} of dense bf16 "
        f"peak: A100 312, H100 989, TPU v5e 197 TFLOP/s; CPU: {os.cpu_count()} cores, fp32 matmul peak "
        f"XLA {peak_xla / 1e9:.0f} / PyTorch {peak_torch / 1e9:.0f} GFLOP/s, step measured at batch 1, "
        f"{args.measure_size}², load {os.getloadavg()[0]:.1f} at the end)")
  print("| recipe | batch × train canvas | steps | while loops | train TFLOP/step | train GB/step (unfused) | "
        "eval GFLOP/image (canvas) | eval images | CPU GFLOP/s | CPU MFU | A100-h | H100-h | v5e-h | "
        "8×A100 wall h | paper |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for (name, bc, steps, loops, tf, tb, ef, ehw, n_eval, ach, mfu, hours, paper) in rows:
    print(f"| {name} | {bc} | {steps} | {loops} | {tf / 1e3:.2f} | {tb:.0f} | {ef:.0f} ({ehw}) | {n_eval} | "
          f"{ach:.0f} | {mfu:.0%} | {hours['A100']:.1f} | {hours['H100']:.1f} | {hours['TPU v5e']:.1f} | "
          f"{hours['A100'] / 8:.1f} | {paper} |")
  print("\n".join(implied))


if __name__ == "__main__":
  main()
