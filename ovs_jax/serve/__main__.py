"""A local web page to segment any image with any class names (docs/serve.md).

  python -m ovs_jax.serve --demo                        # the demo CLIP, offline; open http://127.0.0.1:8000
  python -m ovs_jax.serve --clip=clip-vit-b16/ --port=8080
  python -m ovs_jax.serve --checkpoint=runs/maft_plus_vitb --host=0.0.0.0

Needs the `serve` extra: pip install -c constraints.txt -e '.[serve]'.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import flags, logging

from ovs_jax.cli import ConfigError, run
from ovs_jax.config_check import inference_flags, integer, number, validate_flags
from ovs_jax.templates import TEMPLATE_SETS, get_templates

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("checkpoint", None, "a trained checkpoint (workdir) of a registered method")
  flags.DEFINE_string("clip", None, "CLIP weights for MaskCLIP: HF dir, OpenCLIP file, converted dir, "
                      "random:<arch> or demo:<arch>")
  flags.DEFINE_bool("demo", False, "the demo CLIP (demo:tiny, pre-trained on first use) and the demo "
                    "vocabulary preselected; offline")
  flags.DEFINE_string("hidden_act", None, "activation for OpenCLIP files: quick_gelu (OpenAI) or gelu")
  flags.DEFINE_enum("templates", "vild", sorted(TEMPLATE_SETS), "prompt templates")
  flags.DEFINE_string("vocab", None, "vocabulary preselected on the page (a shipped name, e.g. ade20k_150)")
  flags.DEFINE_integer("short_side", 448, "inference short side in pixels")
  flags.DEFINE_integer("max_size", 2560, "cap on the longer side")
  flags.DEFINE_enum("mode", "whole", ["whole", "slide"], "whole image or sliding window")
  flags.DEFINE_integer("window", 448, "sliding window side")
  flags.DEFINE_integer("stride", 224, "sliding window stride")
  flags.DEFINE_string("host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)")
  flags.DEFINE_integer("port", 8000, "port to listen on")
  flags.DEFINE_float("max_upload_mb", 20, "largest upload in MB")
  flags.DEFINE_float("max_megapixels", 16.8, "largest image in megapixels (16.8: 4096 x 4096)")
  flags.DEFINE_integer("max_classes", 1500, "most classes in one request")
  flags.DEFINE_integer("max_waiting", 8, "requests that may wait for the model; more are refused (503)")


def main(argv):
  del argv
  validate_flags({**inference_flags(FLAGS), "--port": (FLAGS.port, integer(0, 65535)),
                  "--max_upload_mb": (FLAGS.max_upload_mb, number(0, lo_open=True)),
                  "--max_megapixels": (FLAGS.max_megapixels, number(0, lo_open=True)),
                  "--max_classes": (FLAGS.max_classes, integer(1)),
                  "--max_waiting": (FLAGS.max_waiting, integer(0))})
  if not (FLAGS.checkpoint and not (FLAGS.clip or FLAGS.demo)
          or not FLAGS.checkpoint and (FLAGS.clip or FLAGS.demo)):
    raise ConfigError("give one model: --checkpoint=WORKDIR, --clip=WEIGHTS or --demo (with --demo, "
                      "--clip replaces the demo CLIP)")
  try:
    import uvicorn
    from ovs_jax.serve.app import create_app
  except ImportError as e:
    raise ConfigError(f"the web app needs the serve extra ({e.name} is missing): "
                      "pip install -c constraints.txt -e '.[serve]'") from None
  import jax
  from input_pipeline.vocab import vocabulary_names
  from ovs_jax.inference.batching import InferenceConfig
  from ovs_jax.inference.segmenter import DEFAULT_CACHE
  from ovs_jax.serve.service import Limits, SegmentService, load_model
  vocab = FLAGS.vocab or ("demo" if FLAGS.demo else "")
  if vocab and vocab not in vocabulary_names():
    raise ConfigError(f"--vocab={vocab!r}: expected one of {', '.join(vocabulary_names())}")
  InferenceConfig(FLAGS.mode, FLAGS.short_side, FLAGS.max_size, FLAGS.window, FLAGS.stride)  # before loading
  if not jax.config.jax_compilation_cache_dir:  # unless set (JAX_COMPILATION_CACHE_DIR)
    # Compiled programs persist across restarts (and serve class lists of the same sizes).
    jax.config.update("jax_compilation_cache_dir", str(DEFAULT_CACHE / "xla"))
  name, make_model = load_model(checkpoint=FLAGS.checkpoint,
                                clip=None if FLAGS.checkpoint else FLAGS.clip or "demo:tiny",
                                hidden_act=FLAGS.hidden_act, templates=get_templates(FLAGS.templates),
                                cache_dir=DEFAULT_CACHE / "text")
  limits = Limits(max_upload_bytes=int(FLAGS.max_upload_mb * 2**20),
                  max_pixels=int(FLAGS.max_megapixels * 1e6), max_classes=FLAGS.max_classes,
                  max_waiting=FLAGS.max_waiting)
  inference = dict(short_side=FLAGS.short_side, max_size=FLAGS.max_size, mode=FLAGS.mode,
                   window=FLAGS.window, stride=FLAGS.stride)
  service = SegmentService(name, make_model, inference, limits, default_vocabulary=vocab)
  service.check_settings()
  logging.info("serving %s on http://%s:%d", name, FLAGS.host, FLAGS.port)
  uvicorn.run(create_app(service), host=FLAGS.host, port=FLAGS.port, log_level="info")


if __name__ == "__main__":
  define_flags()
  run(main)
