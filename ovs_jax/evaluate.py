"""Evaluate segmentation models on benchmarks: a paper-style mIoU table, per-class tables, JSON.

  python -m ovs_jax.evaluate --clip=PATH --datasets=ade20k_150,ade20k_847,pc_59,pc_459,voc_20 \
      --workdir=eval/ [--mode=slide --window=448 --stride=224] [--root=datasets]
  python -m ovs_jax.evaluate --checkpoint=WORKDIR --datasets=ade20k_150 --workdir=eval/
  python -m ovs_jax.evaluate --demo --workdir=eval/     # demo CLIP on the demo set, offline

--clip (training-free: MaskCLIP, or --method=sclip|clearclip|naclip|proxyclip) and --checkpoint (any method of ovs_jax/methods/registry.py) take
comma-separated lists: one table row per model. Writes <workdir>/results.json, results.md and
per-class tables (`ovs_jax.evaluation`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
from absl import app, flags, logging

from ovs_jax import metrics
from ovs_jax.cli import ConfigError, run
from ovs_jax.config_check import inference_flags, integer, validate_flags
from ovs_jax.evaluation import ZERO_SHOT, check_request, evaluate, model_factories, results_table
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.methods.training_free import clip_method, parse_options
from ovs_jax.templates import get_templates

FLAGS = flags.FLAGS


def define_flags():
  """Called only when run as a program, so importing `evaluate()` as a library adds no flags."""
  flags.DEFINE_list("clip", [], "CLIP weights (HF dir, OpenCLIP file, converted dir, random:<arch>, demo:<arch>): "
                    "training-free MaskCLIP rows")
  flags.DEFINE_list("checkpoint", [], "ovs_jax checkpoints/workdirs of a registered method")
  flags.DEFINE_string("method", "maskclip", "the training-free method of the --clip rows: maskclip, sclip, "
                      "clearclip, naclip, proxyclip (docs/training_free.md)")
  flags.DEFINE_list("method_options", [], "key=value options of --method, e.g. prob_thd=0.1,logit_scale=65 "
                    "or vfm=DINOV2_WEIGHTS for proxyclip (docs/training_free.md)")
  flags.DEFINE_list("names", [], "row names, one per --clip then --checkpoint")
  flags.DEFINE_string("hidden_act", None, "activation for OpenCLIP files: quick_gelu (OpenAI) or gelu")
  flags.DEFINE_list("datasets", [], "benchmarks, e.g. ade20k_150,ade20k_847,pc_59,pc_459,voc_20")
  flags.DEFINE_string("split", "val", "split to evaluate")
  flags.DEFINE_string("root", None, "data root (default $OVS_JAX_DATA, $DETECTRON2_DATASETS, ./datasets)")
  flags.DEFINE_string("vocab", None, "vocabulary for every dataset instead of its own: shipped name, "
                      "file, or inline 'a, b; c' (must have the dataset's class count)")
  flags.DEFINE_string("workdir", "eval", "output folder for results.json/.md and per-class tables")
  flags.DEFINE_enum("mode", "whole", ["whole", "slide"], "whole image or sliding window")
  flags.DEFINE_integer("short_side", InferenceConfig.short_side, "inference short side in pixels "
                       "(default: MAFT+'s test protocol, detectron2 MIN_SIZE_TEST)")
  flags.DEFINE_integer("max_size", InferenceConfig.max_size, "cap on the longer side (MAX_SIZE_TEST)")
  flags.DEFINE_integer("window", 448, "sliding window side")
  flags.DEFINE_integer("stride", 224, "sliding window stride")
  flags.DEFINE_integer("bucket", 0, "canvas sides round up to multiples of this (0: the model's input multiple, as detectron2; "
                       "larger: fewer compilations, more padding, slightly different predictions)")
  flags.DEFINE_integer("batch_size", 0, "global batch (0: one image per device)")
  flags.DEFINE_string("templates", "vild", "prompt templates: vild, imagenet or plain")
  flags.DEFINE_integer("max_images", 0, "evaluate only the first N images of each split (0: all)")
  flags.DEFINE_integer("workers", 0, "grain worker processes for decoding")
  flags.DEFINE_bool("skip_bad", False, "skip unreadable records instead of stopping")
  flags.DEFINE_enum("miou_convention", metrics.DEFAULT_MIOU_CONVENTION, list(metrics.MIOU_CONVENTIONS),
                    "maft_plus: MAFT+'s evaluator (a class predicted but absent from the ground truth "
                    "counts 0 in the mean); detectron2: current detectron2 (mean over classes with "
                    "ground truth)")
  flags.DEFINE_enum("protocol", "", ["", "zero_shot"], "zero_shot: also report mIoU over each dataset's "
                    "seen and unseen classes and hIoU (splits: voc_20, coco_stuff_171, pc_59, demo)")
  flags.DEFINE_enum("precision", "auto", ["auto", "float32", "bfloat16"], "--checkpoint compute dtype; "
                    "auto: float32 for an imported official checkpoint (as its own evaluation), else the run's")
  flags.DEFINE_bool("demo", False, "the demo dataset (and the demo:tiny CLIP unless --clip is given)")


def main(argv):
  del argv
  clips, datasets = list(FLAGS.clip), list(FLAGS.datasets)
  if FLAGS.demo:
    datasets = datasets or ["demo"]
    clips = clips or ([] if FLAGS.checkpoint else ["demo:tiny"])
  if not (clips or FLAGS.checkpoint) or not datasets:
    raise app.UsageError("give --clip and/or --checkpoint, and --datasets (or use --demo)")
  n = jax.device_count()
  validate_flags({
      **inference_flags(FLAGS), "--bucket": (FLAGS.bucket, integer(0, note="0: the model's input multiple")),
      "--batch_size": (FLAGS.batch_size, (lambda v: v >= 0 and v % n == 0,
                                          f"0 (one image per device) or a multiple of the {n} devices")),
      "--max_images": (FLAGS.max_images, integer(0, note="0: all")),
      "--workers": (FLAGS.workers, integer(0))})
  check_request(datasets, FLAGS.split, FLAGS.vocab)
  try:
    method_options = parse_options(FLAGS.method_options)
    clip_method(FLAGS.method, method_options)
  except ValueError as e:
    raise ConfigError(f"--method/--method_options: {e}") from None
  if any(s.startswith("random:") for s in clips):
    logging.warning("RANDOM CLIP weights: the pipeline runs, the numbers are meaningless.")
  cfg = InferenceConfig(FLAGS.mode, FLAGS.short_side, FLAGS.max_size, FLAGS.window, FLAGS.stride,
                        FLAGS.bucket)
  factories = model_factories(clips, FLAGS.checkpoint, FLAGS.names,
                              templates=get_templates(FLAGS.templates), hidden_act=FLAGS.hidden_act,
                              precision=FLAGS.precision, method=FLAGS.method,
                              method_options=method_options)
  results = evaluate(factories, datasets, cfg, FLAGS.workdir, split=FLAGS.split, root=FLAGS.root,
                     vocabulary=FLAGS.vocab, batch_size=FLAGS.batch_size or None,
                     max_images=FLAGS.max_images or None, workers=FLAGS.workers,
                     skip_bad=FLAGS.skip_bad, miou_convention=FLAGS.miou_convention,
                     protocol=FLAGS.protocol)
  print(results_table(results, datasets))
  for key in ZERO_SHOT if FLAGS.protocol else ():
    print("\n" + results_table(results, datasets, key))
  for name, row in results.items():
    for d, r in row.items():
      print(f"{name} on {d}: {r['num_images']} images scored, {r['num_skipped']} skipped"
            + (" (unreadable; see the warnings above)" if r["num_skipped"] else ""))
  print(f"results: {Path(FLAGS.workdir) / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  run(main)
