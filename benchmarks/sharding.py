"""Per-device memory of the cdt_vitb train step on several meshes, from compiled executables.

  python benchmarks/sharding.py [--config=configs/cdt_vitb.py] [--batch=8] [--crop=640] [--fast]

Nothing runs: each mesh's train step (full size: ViT-B/16 student + teacher, 100 queries, 9
decoder layers, batch 8 at 640², AdamW) is lowered with its explicit shardings onto 8 simulated
CPU devices and compiled; XLA's memory analysis gives per-device bytes of the arguments
(parameters + frozen + optimizer state + batch), of the optimizer state alone (a compiled update),
and of temporaries (peak activations). --fast: -O0 XLA:CPU backend (compile time only).
"""
import argparse
import os
import sys
import time

_FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if __name__ == "__main__":
  _args = argparse.ArgumentParser()
  _args.add_argument("--config", default="configs/cdt_vitb.py")
  _args.add_argument("--batch", type=int, default=8)
  _args.add_argument("--crop", type=int, default=640)
  _args.add_argument("--classes", type=int, default=171)
  _args.add_argument("--scan", action="store_true", help="scan over CLIP layers (smaller program)")
  _args.add_argument("--fast", action="store_true")
  _args.add_argument("--meshes", default="1,data8,fsdp8,fsdp2xtensor4")
  ARGS = _args.parse_args()
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8" + (" " + _FAST if ARGS.fast else "")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

MESHES = {"1": {"data": 1}, "data8": {"data": 8}, "fsdp8": {"fsdp": 8},
          "fsdp2xtensor4": {"fsdp": 2, "tensor": 4}}


def full_config(path, scan=False):
  from ovs_jax.config_utils import recipe_config
  c = recipe_config(path)
  c.clip.weights, c.clip.arch = "random", "vit_b16"
  c.model.scan = scan
  return c


def measure(config, mesh_config, args):
  from ovs_jax import sharding
  from ovs_jax.methods.registry import get_method
  from ovs_jax.train_step import compile_train_step
  mesh = sharding.make_mesh(mesh_config)
  tic = time.perf_counter()
  compiled, ts = compile_train_step(get_method(config.method), config, mesh, batch_size=args.batch,
                                    height=args.crop, width=args.crop, num_classes=args.classes)
  mem = compiled.memory_analysis()
  compile_s = time.perf_counter() - tic
  abstract = ts.state

  def nbytes(tree):  # per-device bytes of a sharded abstract tree
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))
  return {"params": nbytes(abstract["params"]), "frozen": nbytes(abstract["frozen"]),
          "opt_state": nbytes(abstract["opt_state"]), "arguments": mem.argument_size_in_bytes,
          "temp": mem.temp_size_in_bytes, "output": mem.output_size_in_bytes,
          "replicated": sharding.replicated_parameters(abstract, ts.shardings), "compile_s": compile_s}


def main(args):
  config = full_config(args.config, args.scan)
  names = args.meshes.split(",")
  rows = {}
  for name in names:
    rows[name] = measure(config, MESHES[name], args)
    r = rows[name]
    print(f"# {name}: compiled in {r['compile_s']:.0f}s; replicated >1MiB: "
          f"{[p for p, _, _ in r['replicated']][:5] or 'none'}", flush=True)
  base = rows.get("1") or rows[names[0]]
  mib = lambda b: b / 2**20
  cols = ("params", "opt_state", "frozen", "arguments", "temp")
  print(f"\ncdt_vitb train step, batch {args.batch} at {args.crop}², per-device MiB (ratio to 1 device)")
  print(f"| mesh | {' | '.join(cols)} | params+opt |")
  print("|---" * (len(cols) + 2) + "|")
  for name, r in rows.items():
    po, po1 = r["params"] + r["opt_state"], base["params"] + base["opt_state"]
    cells = [f"{mib(r[c]):.0f} ({r[c] / max(base[c], 1):.2f})" for c in cols]
    print(f"| {name} | {' | '.join(cells)} | {mib(po):.0f} ({po / po1:.3f}) |")


if __name__ == "__main__":
  main(ARGS)
