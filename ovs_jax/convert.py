"""Checkpoint conversion between PyTorch formats and ours.

  # HF directory / OpenCLIP ViT or ConvNeXt state dict or hub directory / our directory  ->  HF CLIP directory
  python -m ovs_jax.convert clip --src=open_clip_model.safetensors --hidden_act=gelu --out=clip_hf/
  # OpenAI's RN50 / RN101 as OpenCLIP state dicts (no HF layout: --to=openclip or --to=ours)
  python -m ovs_jax.convert clip --src=RN50.pt --arch=RN50-quickgelu --to=ours --out=rn50/
  # an OpenCLIP model whose heads a state dict cannot tell: name it (or give its open_clip_config.json)
  python -m ovs_jax.convert clip --src=vit_h14.bin --arch=ViT-H-14 --to=openclip --out=vit_h14/
  # ... -> our format (config.json + orbax params/), read by every config's `clip.weights`
  python -m ovs_jax.convert clip --src=clip_hf/ --to=ours --out=clip_ours/
  # a trained MAFT+ workdir (newest checkpoint, or WORKDIR/STEP) -> PyTorch export directory
  python -m ovs_jax.convert to-torch --checkpoint=runs/cdt_vitb --out=export/ [--dtype=bfloat16]
  # ... and back, into a new workdir that evaluate/predict/to-torch read
  python -m ovs_jax.convert from-torch --src=export/ --workdir=runs/imported
  # the official MAFT+ checkpoints (detectron2 .pth) -> a workdir (evaluate, predict, fine-tune) ...
  python -m ovs_jax.convert from-official --src=maftp_b.pth --workdir=runs/maftp_b
  # ... and a ConvNeXt MAFT+ workdir -> the official layout (loads with strict=True)
  python -m ovs_jax.convert to-official --checkpoint=runs/maftp_b --out=maftp_b_finetuned.pth
  # the official GKC checkpoints (CLIP ResNet students), both ways (docs/gkc.md)
  python -m ovs_jax.convert from-official --method=gkc --src=gkc_r50.pth --workdir=runs/gkc_r50
  python -m ovs_jax.convert to-official --method=gkc --checkpoint=runs/gkc_r50 --out=gkc_ours.pth
  # a SimZSS release checkpoint (ViT-B/14, COCO or LAION) -> a workdir, and back
  python -m ovs_jax.convert from-official --method=simzss --src=simzss_coco.pt --workdir=runs/simzss_coco
  python -m ovs_jax.convert to-official --method=simzss --checkpoint=runs/simzss_coco --out=simzss.pt
  # an ImageNet ResNet (mmseg open-mmlab://resnet101_v1c or torchvision) for MaskCLIP+'s students
  python -m ovs_jax.convert resnet --src=resnet101_v1c-e67eebb6.pth --out=r101_v1c/

The weights pass through our model, so every conversion also checks keys and shapes; the output is
written atomically and verified by loading it back.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from absl import app, flags

from ovs_jax.cli import run
from ovs_jax.interchange import torch_state
from ovs_jax.interchange.clip_weights import load_clip, save_hf_clip, save_openclip, save_orbax_clip
from ovs_jax.models.clip_family import describe

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "source: HF CLIP dir, OpenCLIP state dict or hub dir, or our dir")
flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_enum("to", "hf", ["hf", "ours", "openclip"], "output format")
flags.DEFINE_string("arch", None, "OpenCLIP sources: model name (ViT-H-14, convnext_base_w_320, "
                    "RN50-quickgelu, ...) or open_clip_config.json; needed where the shapes do not "
                    "identify the model")
flags.DEFINE_string("hidden_act", None, "activation for OpenCLIP files: quick_gelu (OpenAI) or gelu")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "output dtype")
flags.DEFINE_string("checkpoint", None, "to-torch: training workdir, WORKDIR/STEP or WORKDIR/checkpoints/STEP")
flags.DEFINE_bool("include_teacher", False, "to-torch: also export the frozen RC teacher (training only)")
flags.DEFINE_bool("text_classifier", True, "to-torch: also write the training vocabulary's text classifier")
flags.DEFINE_string("workdir", None, "from-torch/from-official: the new workdir (or --out)")
flags.DEFINE_string("recipe", None, "from-official: recipe file name in configs/ (default: by CLIP width)")
flags.DEFINE_enum("method", "maft_plus", ["maft_plus", "gkc", "simzss"],
                  "from-official/to-official: whose official layout")

COMMANDS = ("clip", "to-torch", "from-torch", "from-official", "to-official", "resnet")
USAGE = """usage:
  python -m ovs_jax.convert clip --src=... --out=... [--to=hf|ours|openclip] [--arch=NAME|CONFIG]
  python -m ovs_jax.convert to-torch --checkpoint=WORKDIR[/STEP] --out=DIR [--dtype=float32|bfloat16]
  python -m ovs_jax.convert from-torch --src=DIR --workdir=NEW_WORKDIR
  python -m ovs_jax.convert from-official [--method=maft_plus|gkc] --src=FILE.pth --workdir=NEW_WORKDIR [--recipe=FILE]
  python -m ovs_jax.convert to-official [--method=maft_plus|gkc] --checkpoint=WORKDIR[/STEP] --out=FILE.pth
  python -m ovs_jax.convert resnet --src=resnet101_v1c.pth --out=DIR"""


def convert_clip(src: str, out: str, to: str = "hf", hidden_act: str | None = None,
                 dtype: str = "float32", arch: str | None = None) -> str:
  """Convert CLIP weights; returns the output directory after checking it loads back identically."""
  model = load_clip(src, hidden_act=hidden_act, arch=arch)
  import ml_dtypes
  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  if to == "hf":
    save_hf_clip(model, out, np_dtype)
  elif to == "openclip":
    save_openclip(model, out, np_dtype)
  else:
    save_orbax_clip(model, out)
  # Reload the output and compare: exact in float32, to the output dtype's precision otherwise.
  back = torch_state.export_state_dict(load_clip(out, hidden_act=hidden_act))
  exact = to == "ours" or dtype == "float32"
  ours = torch_state.export_state_dict(model)
  for name, value in ours.items():
    if not (np.array_equal(back[name], value) if exact else np.allclose(back[name], value, 1e-2, 1e-2)):
      raise RuntimeError(f"{out}: {name} did not survive the round trip")
  print(f"wrote {out} ({to}, {sum(v.size for v in ours.values()) / 1e6:.1f}M parameters, "
        f"{describe(model.config)})")
  return out


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(USAGE)
  command = argv[1]
  if command == "to-torch":
    if not FLAGS.checkpoint or not FLAGS.out:
      raise app.UsageError("to-torch needs --checkpoint and --out\n" + USAGE)
    from ovs_jax.torch_export.checkpoint import to_torch
    out = to_torch(FLAGS.checkpoint, FLAGS.out, dtype=FLAGS.dtype, include_teacher=FLAGS.include_teacher,
                   text_classifier=FLAGS.text_classifier)
    print(f"wrote {out}: model.safetensors, key_map.json, config.json, clip/"
          + (", text_classifier.safetensors" if FLAGS.text_classifier else ""))
    return
  if command in ("from-torch", "from-official"):  # source file/dir -> a new workdir
    workdir = FLAGS.workdir or FLAGS.out
    if not FLAGS.src or not workdir:
      raise app.UsageError(f"{command} needs --src and --workdir\n" + USAGE)
    if command == "from-torch":
      from ovs_jax.torch_export.checkpoint import from_torch
      print(f"wrote {from_torch(FLAGS.src, workdir)}")
    else:
      if FLAGS.method == "gkc":
        from ovs_jax.torch_export.gkc_official import from_official
      elif FLAGS.method == "simzss":
        from ovs_jax.torch_export.simzss_official import from_official
      else:
        from ovs_jax.torch_export.official import from_official
      print(f"wrote {from_official(FLAGS.src, workdir, recipe=FLAGS.recipe)}")
    return
  if command == "to-official":
    if not FLAGS.checkpoint or not FLAGS.out:
      raise app.UsageError("to-official needs --checkpoint and --out\n" + USAGE)
    if FLAGS.method == "gkc":
      from ovs_jax.torch_export.gkc_official import to_official
    elif FLAGS.method == "simzss":
      from ovs_jax.torch_export.simzss_official import to_official
    else:
      from ovs_jax.torch_export.official import to_official
    print(f"wrote {to_official(FLAGS.checkpoint, FLAGS.out)}")
    return
  if not FLAGS.src or not FLAGS.out:
    raise app.UsageError("--src and --out are required")
  if command == "resnet":
    from ovs_jax.interchange.dilated_resnet import convert_resnet
    convert_resnet(FLAGS.src, FLAGS.out)
    return
  convert_clip(FLAGS.src, FLAGS.out, FLAGS.to, FLAGS.hidden_act, FLAGS.dtype, FLAGS.arch)


if __name__ == "__main__":
  run(main)
