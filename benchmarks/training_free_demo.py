"""The training-free family on the demo: mIoU of MaskCLIP, SCLIP, ClearCLIP, NACLIP and ProxyCLIP with
one demo CLIP, whole image and sliding window, and each one's CPU wall time relative to MaskCLIP.

  OVS_JAX_CACHE=/tmp/ovscache flock /tmp/ovs_heavy.lock .venv/bin/python \
      benchmarks/training_free_demo.py --workdir=/tmp/training_free_demo

Every method runs with its own scoring defaults (logit scale, NACLIP's PAMR; no background
threshold: the demo has no background class) and the same templates (the 80 OpenAI ImageNet ones
the official segmentors use), the same inference sizes and the same mIoU convention. Times are the
wall seconds of `ovs_jax.evaluation.evaluate` over the demo's val split (compilation included).
ProxyCLIP uses the CLIP's own tokens as its proxy (no DINOv2 weights offline).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run as a script, this folder comes first on sys.path; benchmarks/input_pipeline.py would shadow
# the package of that name (as benchmarks/evaluate.py does).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path.pop(0)

from absl import app, flags

from ovs_jax.evaluation import evaluate
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.methods.maskclip import clip_from_spec
from ovs_jax.methods.training_free import clip_method
from ovs_jax.templates import get_templates

METHODS = ("maskclip", "sclip", "clearclip", "naclip", "proxyclip")
flags.DEFINE_string("clip", "demo:tiny", "CLIP spec")
flags.DEFINE_string("workdir", "/tmp/training_free_demo", "output folder")
flags.DEFINE_integer("short_side", 320, "inference short side")
flags.DEFINE_integer("window", 160, "sliding window side")
flags.DEFINE_integer("stride", 80, "sliding window stride")
flags.DEFINE_integer("max_images", 0, "only the first N val images (0: all 64)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  clip = clip_from_spec(FLAGS.clip)
  templates = get_templates("imagenet")
  cache = Path(os.environ.get("OVS_JAX_CACHE", Path.home() / ".cache" / "ovs_jax")) / "text"
  rows = {}
  for mode in ("whole", "slide"):
    cfg = InferenceConfig(mode, FLAGS.short_side, 4 * FLAGS.short_side, FLAGS.window, FLAGS.stride)
    for name in METHODS:
      make = clip_method(name)
      models = {name: lambda v, make=make: make(clip, v, templates=templates, cache_dir=cache)}
      r = evaluate(models, ["demo"], cfg, Path(FLAGS.workdir) / mode / name,
                   max_images=FLAGS.max_images or None)[name]["demo"]
      rows.setdefault(name, {})[mode] = {"mIoU": r["mIoU"], "seconds": r["seconds"],
                                         "images": r["num_images"], "convention": r["miou_convention"]}
      print(name, mode, rows[name][mode], flush=True)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
  lines = ["| method | mIoU whole | mIoU slide | time whole (× MaskCLIP) | time slide (× MaskCLIP) |",
           "| --- | ---: | ---: | ---: | ---: |"]
  for name, r in rows.items():
    rel = {m: r[m]["seconds"] / rows["maskclip"][m]["seconds"] for m in ("whole", "slide")}
    lines.append(f"| {name} | {r['whole']['mIoU']:.1f} | {r['slide']['mIoU']:.1f} | "
                 f"{r['whole']['seconds']:.1f} s ({rel['whole']:.2f}×) | "
                 f"{r['slide']['seconds']:.1f} s ({rel['slide']:.2f}×) |")
  table = "\n".join(lines)
  print(f"commit {commit}, {FLAGS.clip}, short side {FLAGS.short_side}, window {FLAGS.window} "
        f"stride {FLAGS.stride}\n{table}")
  Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
  (Path(FLAGS.workdir) / "training_free_demo.json").write_text(
      json.dumps({"commit": commit, "clip": FLAGS.clip, "rows": rows}, indent=1))


if __name__ == "__main__":
  app.run(main)
