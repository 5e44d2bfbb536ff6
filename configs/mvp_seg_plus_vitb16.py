r"""MVP-SEG+ (transductive zero-shot): MaskCLIP+'s knowledge-transfer stage (configs/maskclip_plus_r101.py,
every value from MaskCLIP's zero-shot configs) with a trained MVP-SEG (configs/mvp_seg_vitb16.py) as
the frozen teacher instead of training-free MaskCLIP.

  python -m ovs_jax.train --config=configs/mvp_seg_vitb16.py:voc --workdir=runs/mvp_voc --config.clip.weights=CLIP
  python -m ovs_jax.train --config=configs/mvp_seg_plus_vitb16.py:voc --workdir=runs/mvp_plus_voc \
      --config.clip.weights=CLIP --config.teacher.checkpoint=runs/mvp_voc --config.model.backbone_weights=r101_v1c/
  # COCO-Stuff (default) and PASCAL Context (:context) likewise
  python -m ovs_jax.train --config=configs/mvp_seg_plus_vitb16.py:demo --workdir=runs/mvp_plus_demo  # offline

`config.clip` must be the teacher's CLIP (its text tower embeds the student's classes). The
`:demo` teacher is the `mvp_seg_vitb16.py:demo` run, trained into the cache on first use.
"""
from pathlib import Path

from ovs_jax.config_utils import recipe_module


def get_config(arg: str = ""):
  base = recipe_module(Path(__file__).with_name("maskclip_plus_r101.py"))
  c = base.get_config(arg)
  c.method = "mvp_seg_plus"
  c.clip.update(arch="vit_b16")  # MVP-SEG's CLIP (configs/mvp_seg_vitb16.py)
  c.teacher = dict(checkpoint="")
  if "demo" in set(filter(None, (arg or "").split(","))):
    c.clip.update(weights="demo", arch="tiny")
    c.teacher.checkpoint = "demo"
  return c
