"""Segment images with a list of class names and write the results as pictures.

  python -m ovs_jax.predict --clip=PATH --images=photo.jpg --classes="sofa, couch; lamp; cat" --out=out/
  python -m ovs_jax.predict --demo --out=out/     # embedded demo images, offline

  python -m ovs_jax.predict --checkpoint=WORKDIR --images=DIR --vocab=ade20k_150 --mode=slide

--clip takes an HF CLIP directory, an OpenCLIP ViT state dict, our converted directory, or
`random:<arch>` (random weights, to check the pipeline without downloads: the masks are then noise)
or `demo:<arch>` (pre-trained on the demo dataset, the `--demo` default)
and uses training-free MaskCLIP; --checkpoint takes a trained model of any registered method.
--mode=slide scores --window crops every --stride pixels and averages the overlaps. Per image it
writes `<name>_overlay.png` (colour overlay + legend), `<name>_label.png` (raw class ids) and,
with --gt, `<name>_compare.png`; `<name>` is the file stem, or the file name / its path where
stems collide (`segmenter.output_names`). `<out>/summary.json` lists inputs, outputs and the
images `--skip_bad` skipped.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from ovs_jax.cli import ConfigError, run
from ovs_jax.config_check import inference_flags, integer, validate_flags
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.segmentation_model import build_from_checkpoint, read_vocabulary
from ovs_jax.inference.segmenter import (DEFAULT_CACHE, Segmenter, check_outputs, demo_inputs,
                                         list_images, output_names, readable_path,
                                         write_prediction)
from ovs_jax.methods.maskclip import clip_from_spec
from ovs_jax.methods.training_free import clip_method, parse_options
from ovs_jax.templates import get_templates

FLAGS = flags.FLAGS


def define_flags():
  """Called only when run as a program, so importing this module defines no flags."""
  flags.DEFINE_string("clip", None, "CLIP weights: HF dir, OpenCLIP file, converted dir, random:<arch> or demo:<arch>")
  flags.DEFINE_string("checkpoint", None, "a trained checkpoint of a registered method instead of --clip")
  flags.DEFINE_string("method", "maskclip", "the training-free method run on --clip: maskclip, sclip, "
                      "clearclip, naclip, proxyclip (docs/training_free.md)")
  flags.DEFINE_list("method_options", [], "key=value options of --method (docs/training_free.md)")
  flags.DEFINE_string("hidden_act", None, "activation for OpenCLIP files: quick_gelu (OpenAI) or gelu")
  flags.DEFINE_multi_string("images", None, "image files and/or folders, comma-separated or repeated (a name "
                            "holding a comma is found when the file exists)")
  flags.DEFINE_string("classes", None, "inline vocabulary: classes separated by ';', synonyms by ','")
  flags.DEFINE_string("vocab", None, "a registered dataset's vocabulary (e.g. ade20k_150) or a vocabulary "
                      "file, instead of --classes")
  flags.DEFINE_string("gt", None, "folder of ground-truth label PNGs (same file stems) for side-by-side")
  flags.DEFINE_string("templates", "vild", "prompt templates: vild, imagenet or plain")
  flags.DEFINE_integer("short_side", 448, "inference short side in pixels")
  flags.DEFINE_integer("max_size", 2560, "cap on the longer side")
  flags.DEFINE_enum("mode", "whole", ["whole", "slide"], "whole image or sliding window")
  flags.DEFINE_integer("window", 448, "sliding window side")
  flags.DEFINE_integer("stride", 224, "sliding window stride")
  flags.DEFINE_enum("precision", "auto", ["auto", "float32", "bfloat16"], "--checkpoint compute dtype; "
                    "auto: float32 for an imported official checkpoint (as its own evaluation), else the run's")
  flags.DEFINE_bool("demo", False, "segment the embedded demo images with its vocabulary (offline)")
  flags.DEFINE_integer("num_demo", 4, "how many demo images with --demo")
  flags.DEFINE_string("out", "predictions", "output folder")
  flags.DEFINE_bool("skip_bad", False, "skip images (or --gt label maps) that cannot be read, list them "
                    "at the end and in <out>/summary.json, instead of stopping")


def main(argv):
  del argv
  from input_pipeline import files
  from input_pipeline.vocab import parse_vocabulary
  validate_flags({**inference_flags(FLAGS), "--num_demo": (FLAGS.num_demo, integer(1))})
  InferenceConfig(FLAGS.mode, FLAGS.short_side, FLAGS.max_size, FLAGS.window, FLAGS.stride)  # before loading
  try:
    make = clip_method(FLAGS.method, parse_options(FLAGS.method_options))
  except ValueError as e:
    raise ConfigError(f"--method/--method_options: {e}") from None
  gts = {}
  if FLAGS.demo:
    records, vocabulary = demo_inputs(FLAGS.num_demo)
    inputs = [r["image"] for r in records]
    names = [Path(r["file_name"]).stem for r in records]
    gts = {name: r["label"] for name, r in zip(names, records)}
    spec = FLAGS.clip or "demo:tiny"
  else:
    if not (FLAGS.clip or FLAGS.checkpoint) or not FLAGS.images or not (FLAGS.classes or FLAGS.vocab):
      raise app.UsageError("give --clip (or --checkpoint), --images and --classes (or --vocab), "
                           "or use --demo")
    vocabulary = parse_vocabulary(FLAGS.classes) if FLAGS.classes else read_vocabulary(FLAGS.vocab)
    inputs = list_images(FLAGS.images)
    names = output_names(inputs)
    spec = FLAGS.clip
  out = Path(FLAGS.out)
  check_outputs(out, names, inputs, with_gt=bool(FLAGS.gt or gts))  # before any model loads
  templates = get_templates(FLAGS.templates)
  if FLAGS.checkpoint:
    model = build_from_checkpoint(FLAGS.checkpoint, vocabulary, templates=templates,
                                  cache_dir=DEFAULT_CACHE / "text", precision=FLAGS.precision)
  else:
    if spec.startswith("random:"):
      logging.warning("Using RANDOM CLIP weights (%s): the pipeline runs, the masks are meaningless.",
                      spec)
    model = clip_from_spec(spec, FLAGS.hidden_act)
    model = make(model, vocabulary, templates=templates, cache_dir=DEFAULT_CACHE / "text")
  segment = Segmenter(model, vocabulary, templates, FLAGS.short_side, mode=FLAGS.mode,
                      window=FLAGS.window, stride=FLAGS.stride, max_size=FLAGS.max_size)
  done, skipped = [], []
  for name, item in tqdm(list(zip(names, inputs)), desc="segmenting", unit="img"):
    where = readable_path(str(item) if isinstance(item, Path) else name)
    try:
      image, orientation = files.decode_image(str(item)) if isinstance(item, Path) else (item, 1)
      gt = gts.get(name)
      if FLAGS.gt and gt is None:
        gt_path = str(Path(FLAGS.gt) / f"{Path(item).stem}.png")
        gt = files.read_label(gt_path)
        files.check_size("ground-truth label map", gt.shape, image.shape[:2], gt_path, orientation)
    except files.DataError as e:
      if not FLAGS.skip_bad:
        raise files.DataError(f"{e} (--skip_bad skips such images and continues)") from None
      skipped.append({"input": where, "reason": str(e)})
      tqdm.write(f"skipped: {e}")
      continue
    label = segment(image)
    paths = write_prediction(out, name, image, label, segment.names, gt)
    present = ", ".join(segment.names[c] for c in np.unique(label))
    tqdm.write(f"{name}: {present}  -> {paths[0]}")
    done.append({"input": where, "outputs": [readable_path(str(p)) for p in paths]})
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps({"predicted": done, "skipped": skipped}, indent=1))
  print(f"wrote {len(done)} predictions to {out}/ (list: {out / 'summary.json'})", file=sys.stderr)
  if skipped:
    print(f"skipped {len(skipped)} of {len(inputs)} images:\n" + "\n".join(
        f"  {s['reason']}" for s in skipped), file=sys.stderr)  # each reason names its file
  if not done:
    raise files.DataError(f"none of the {len(inputs)} images could be segmented")


if __name__ == "__main__":
  define_flags()
  run(main)
