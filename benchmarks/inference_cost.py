"""Inference cost of GKC against MAFT+ on the same backbone: GFLOPs per image and images/s.

  python benchmarks/inference_cost.py [--rows=gkc_vitb,maft_plus_vitb,gkc_r50]
                                      [--sizes=800x1216,512x512] [--time_sizes=512x512] [--repeats=2]

GKC's claim is speed: no CLIP image encoder runs at test time besides the student backbone
(paper: ≈268 GFLOPs at 800×1216 for R-50 against ≈1100 for two-stage CLIP methods). Each row is
a recipe's `segmentation_model` (the code evaluate/predict run) with random weights at full size,
150 classes (text embeddings precomputed, as at test time), batch 1:
- GFLOP: XLA's cost analysis of the lowered inference function (attention "xla", so no loop
  hides FLOPs), everything from pixels to per-class scores at the input size. XLA counts a
  multiply-add as 2 FLOPs; detectron2/fvcore "GFLOPs" (the papers' unit) count it once, so
  the table also gives GFLOP/2 ≈ GMAC to compare with the paper;
- images/s: measured here (best of --repeats after a warm-up) at --time_sizes, float32 on CPU
  unless the recipe says bfloat16 (it is kept: the recipe's compute dtype).
One markdown table on stdout.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path[0] = str(ROOT)  # benchmarks/input_pipeline.py would shadow the package

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax import layers
from ovs_jax.config_utils import recipe_config
from ovs_jax.methods.registry import get_method
from ovs_jax.timing import best_time

NUM_CLASSES = 150


def segmenter(recipe):
  """The recipe's segmentation model over 150 classes, random weights, attention 'xla'."""
  config = recipe_config(ROOT / "configs" / f"{recipe}.py", "")
  config.clip.weights = "random"
  method = get_method(config.method)
  model = method.build_model(config)
  layers.set_attention(model, "xla")
  graphdef, *states = nnx.split(model, nnx.Param, ...)
  vocab = [[f"class {i}"] for i in range(NUM_CLASSES)]
  seg = method.segmentation_model(graphdef, tuple(states), config, vocab, templates=("{}",))
  return config, seg


def parse_size(text, multiple):
  h, w = (int(v) for v in text.lower().split("x"))
  up = lambda v: -(-v // multiple) * multiple  # the engine pads to the model's multiple
  return up(h), up(w)


def gflops(seg, h, w):
  pixels = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  valid = jax.ShapeDtypeStruct((1, h, w), jnp.bool_)
  return jax.jit(seg.apply).lower(seg.params, pixels, valid).cost_analysis()["flops"] / 1e9


def images_per_second(seg, h, w, repeats):
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(1, h, w, 3)), jnp.float32)
  valid = jnp.ones((1, h, w), bool)
  apply = jax.jit(seg.apply)
  return 1.0 / best_time(lambda: apply(seg.params, pixels, valid), repeats)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", default="gkc_vitb,maft_plus_vitb,gkc_r50")
  p.add_argument("--sizes", default="800x1216,512x512")
  p.add_argument("--time_sizes", default="512x512", help="sizes also timed here ('' = none)")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args(argv)
  timed = set(filter(None, args.time_sizes.split(",")))
  rows = []
  for recipe in args.rows.split(","):
    config, seg = segmenter(recipe)
    for size in args.sizes.split(","):
      h, w = parse_size(size, seg.input_multiple)
      speed = images_per_second(seg, h, w, args.repeats) if size in timed else None
      rows.append((recipe, config.method, config.clip.arch, f"{h}×{w}", gflops(seg, h, w), speed,
                   config.model.dtype))
      print(f"{recipe} {h}x{w}: {rows[-1][4]:.1f} GFLOP"
            + (f", {speed:.2f} img/s" if speed else ""), file=sys.stderr)
  print(f"| recipe | method | backbone | input | GFLOP / image (XLA) | ≈ GMAC (papers' GFLOPs) | "
        f"images/s ({jax.devices()[0].platform}, batch 1) | dtype |")
  print("| --- | --- | --- | --- | ---: | ---: | ---: | --- |")
  for recipe, method, arch, size, g, speed, dtype in rows:
    print(f"| {recipe} | {method} | {arch} | {size} | {g:.0f} | {g / 2:.0f} | "
          f"{'—' if speed is None else f'{speed:.2f}'} | {dtype} |")


if __name__ == "__main__":
  main()
