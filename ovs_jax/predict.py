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
with --gt, `<name>_compare.png`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from ovs_jax import preprocess
from ovs_jax.inference.segmentation_model import build_from_checkpoint, read_vocabulary
from ovs_jax.inference.segmenter import (DEFAULT_CACHE, Segmenter, demo_inputs, list_images,
                                         write_prediction)
from ovs_jax.methods.maskclip import clip_from_spec
from ovs_jax.templates import get_templates

FLAGS = flags.FLAGS


def define_flags():
  """Called only when run as a program, so importing this module defines no flags."""
  flags.DEFINE_string("clip", None, "CLIP weights: HF dir, OpenCLIP file, converted dir, random:<arch> or demo:<arch>")
  flags.DEFINE_string("checkpoint", None, "a trained checkpoint of a registered method instead of --clip")
  flags.DEFINE_string("hidden_act", None, "activation for OpenCLIP files: quick_gelu (OpenAI) or gelu")
  flags.DEFINE_string("images", None, "image files and/or folders, comma-separated")
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
  flags.DEFINE_bool("demo", False, "segment the embedded demo images with its vocabulary (offline)")
  flags.DEFINE_integer("num_demo", 4, "how many demo images with --demo")
  flags.DEFINE_string("out", "predictions", "output folder")


def main(argv):
  del argv
  from input_pipeline.vocab import parse_vocabulary
  gts = {}
  if FLAGS.demo:
    records, vocabulary = demo_inputs(FLAGS.num_demo)
    items = [(Path(r["file_name"]).stem, r["image"]) for r in records]
    gts = {stem: r["label"] for (stem, _), r in zip(items, records)}
    spec = FLAGS.clip or "demo:tiny"
  else:
    if not (FLAGS.clip or FLAGS.checkpoint) or not FLAGS.images or not (FLAGS.classes or FLAGS.vocab):
      raise app.UsageError("give --clip (or --checkpoint), --images and --classes (or --vocab), "
                           "or use --demo")
    vocabulary = parse_vocabulary(FLAGS.classes) if FLAGS.classes else read_vocabulary(FLAGS.vocab)
    items = [(p.stem, p) for p in list_images(FLAGS.images)]
    spec = FLAGS.clip
  templates = get_templates(FLAGS.templates)
  if FLAGS.checkpoint:
    model = build_from_checkpoint(FLAGS.checkpoint, vocabulary, templates=templates,
                                  cache_dir=DEFAULT_CACHE / "text")
  else:
    if spec.startswith("random:"):
      logging.warning("Using RANDOM CLIP weights (%s): the pipeline runs, the masks are meaningless.",
                      spec)
    model = clip_from_spec(spec, FLAGS.hidden_act)
  segment = Segmenter(model, vocabulary, templates, FLAGS.short_side, mode=FLAGS.mode,
                      window=FLAGS.window, stride=FLAGS.stride, max_size=FLAGS.max_size)
  out = Path(FLAGS.out)
  for stem, image in tqdm(items, desc="segmenting", unit="img"):
    image = preprocess.load_rgb(image) if isinstance(image, Path) else image
    gt = gts.get(stem)
    if FLAGS.gt and gt is None:
      from input_pipeline.files import read_label
      gt = read_label(str(Path(FLAGS.gt) / f"{stem}.png"))
    label = segment(image)
    paths = write_prediction(out, stem, image, label, segment.names, gt)
    present = ", ".join(segment.names[c] for c in np.unique(label))
    tqdm.write(f"{stem}: {present}  -> {paths[0]}")
  print(f"wrote {len(items)} predictions to {out}/", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main)
