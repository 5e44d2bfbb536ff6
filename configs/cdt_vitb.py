"""The MAFT+ ViT-B/16 recipe under its first name: `configs/maft_plus_vitb.py` (same variants)."""
from pathlib import Path

from ovs_jax.config_utils import recipe_config


def get_config(arg: str = ""):
  return recipe_config(Path(__file__).with_name("maft_plus_vitb.py"), arg)
