r"""MAFT+ Large as the official code trains it: OpenCLIP ConvNeXt-L (`convnext_large_d_320`, LAION
`laion2b_s29b_b131k_ft_soup`), official `configs/semantic/train_semantic_large.yaml` (55k steps;
CDT at the default `cdt_params` [768, 8] of `maft/config.py`).

  python -m ovs_jax.train --config=configs/maft_plus_convnext_l.py --workdir=runs/maftp_l \
      --config.clip.weights=/path/to/open_clip_pytorch_model.bin

Variants: `:demo`, `:panoptic` (as `configs/maft_plus_convnext_b.py`).
"""
from pathlib import Path

from ovs_jax.config_utils import recipe_module


def get_config(arg: str = ""):
  base = recipe_module(Path(__file__).with_name("maft_plus_convnext_b.py"))
  return base.convnext_recipe(arg, "configs/maft_plus_convnext_l.py", arch="convnext_large_d_320",
                              steps=55000)
