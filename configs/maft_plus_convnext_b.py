r"""MAFT+ Base as the official code trains it: OpenCLIP ConvNeXt-B (`convnext_base_w_320`, LAION
`laion_aesthetic_s13b_b82k_augreg`), official `configs/semantic/train_semantic_base.yaml`.

  python -m ovs_jax.train --config=configs/maft_plus_convnext_b.py --workdir=runs/maftp_b \
      --config.clip.weights=/path/to/open_clip_pytorch_model.bin   # or an OpenCLIP hub directory
  python -m ovs_jax.train --config=configs/maft_plus_convnext_b.py:demo --workdir=runs/demo_cnx

Everything not listed here is the official protocol of `configs/maft_plus_vitb.py` (table in
docs/maft_plus.md); the pyramid comes from the ConvNeXt stages (no simple feature pyramid).
Variants: `:demo` (tiny ConvNeXt CLIP pre-trained on the demo data, CPU minutes), `:panoptic`.
"""
from pathlib import Path

from ovs_jax.config_utils import parse_variants, recipe_config


def convnext_recipe(arg: str, name: str, *, arch: str, steps: int):
  """The ViT recipe's official protocol with an OpenCLIP ConvNeXt CLIP (`arch`) and `steps`."""
  variants = parse_variants(arg, {"demo", "panoptic"}, name, combine=[{"demo", "panoptic"}])
  c = recipe_config(Path(__file__).with_name("maft_plus_vitb.py"), ",".join(sorted(variants)))
  if "demo" in variants:
    # A tiny ConvNeXt CLIP pre-trained on the demo data; stride-32 maps need >= 128 px crops
    # (the RC pyramid pools a 4-wide map at scale 4).
    c.clip.update(arch="convnext_tiny")
    return c
  # The OpenCLIP model name picks the architecture of the weights file (--arch of convert).
  c.clip.update(arch=arch, hidden_act="gelu")  # LAION ConvNeXt text towers use exact GELU
  c.train.steps = steps  # SOLVER.MAX_ITER
  return c


def get_config(arg: str = ""):
  return convnext_recipe(arg, "configs/maft_plus_convnext_b.py", arch="convnext_base_w_320",
                         steps=60000)
