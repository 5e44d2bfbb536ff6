"""Oracle: MaskCLIP's own `MaskClipHead` (github.com/chongzhou96/MaskCLIP, mmseg-based) on random
weights, for tests/test_maskclip_oracle.py.

  git --git-dir=/work/.mirror/chongzhou96+MaskCLIP/repo archive HEAD mmseg/models/decode_heads \
      | tar -x -C ~/.cache/ovs-oracle/maskclip
  ~/.cache/ovs-oracle/venv/bin/python scripts/oracle/maskclip_forward.py \
      --maskclip ~/.cache/ovs-oracle/maskclip --out tests/data/maskclip/head.npz

mmcv/mmseg are not installed; the head file runs unmodified with these STUBS of the names it
imports (nothing numerical is stubbed):
  mmcv.utils.print_log, mmseg.utils.get_root_logger  -> no-ops (logging);
  mmseg.models.builder.HEADS                         -> a registry whose register_module() returns the class;
  mmseg.models.decode_heads.decode_head.BaseDecodeHead -> nn.Module keeping in_channels and
      `_transform_inputs(inputs) = inputs[in_index]` (mmseg's behaviour for input_transform=None);
  torch.load(map_location='cuda')                    -> map_location='cpu' (the head loads its text
      embeddings and projections from files; we write them as random tensors).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn


def install_stubs():
  def module(name, **attrs):
    m = types.ModuleType(name)
    m.__path__ = []  # a package, so relative imports resolve
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m

  class Registry:
    def register_module(self, *a, **k):
      return lambda cls: cls

  class BaseDecodeHead(nn.Module):
    def __init__(self, in_channels, channels, *, num_classes, in_index=-1, input_transform=None,
                 **kwargs):
      super().__init__()
      self.in_channels, self.channels, self.in_index = in_channels, channels, in_index
      self.align_corners = kwargs.get("align_corners", False)

    def _transform_inputs(self, inputs):
      return inputs[self.in_index]

    def init_weights(self):
      pass

  module("mmcv")
  module("mmcv.utils", print_log=lambda *a, **k: None)
  module("mmseg")
  module("mmseg.utils", get_root_logger=lambda *a, **k: None)
  module("mmseg.models")
  module("mmseg.models.builder", HEADS=Registry())
  module("mmseg.models.decode_heads")
  module("mmseg.models.decode_heads.decode_head", BaseDecodeHead=BaseDecodeHead)
  load = torch.load
  torch.load = lambda f, map_location=None, **k: load(f, map_location="cpu", weights_only=True)


def import_head(root: Path):
  name = "mmseg.models.decode_heads.maskclip_head"
  spec = importlib.util.spec_from_file_location(name, root / "mmseg/models/decode_heads/maskclip_head.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod.MaskClipHead


SETTINGS = {"plain": (0.0, 0.0), "pd": (0.5, 0.0), "ks": (0.0, 1.0), "ks09": (0.0, 0.9),
            "kspd": (0.5, 1.0)}  # name -> (pd_thresh, ks_thresh); 0.5 / 1.0 as MaskCLIP's configs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--maskclip", type=Path, required=True)
  ap.add_argument("--out", type=Path, required=True)
  args = ap.parse_args()
  install_stubs()
  head_cls = import_head(args.maskclip)
  g = torch.Generator().manual_seed(0)
  b, d, h, w, p, c, dk = 2, 32, 4, 5, 16, 24, 32  # more classes than some win: denoising acts
  text = torch.randn(c, p, generator=g)
  text = text / text.norm(dim=-1, keepdim=True)
  out = {"text": text.numpy()}
  with tempfile.TemporaryDirectory() as tmp:
    tpath = Path(tmp) / "text.pth"
    torch.save(text, tpath)
    # ViT: the backbone gives [x, q, k, v] (MaskCLIP vit.py:449-461): v (B, D, h, w) after ln_post,
    # k (B, h*w, D); the head projects v (`proj`, no bias) and smooths with k.
    proj = torch.randn(p, d, generator=g) / d ** 0.5
    v = torch.randn(b, d, h, w, generator=g)
    k = torch.randn(b, h * w, dk, generator=g)
    vpath = Path(tmp) / "vit_proj.pth"
    torch.save({"proj": {"weight": proj.clone()}}, vpath)
    out.update(vit_proj=proj.numpy(), vit_v=v.numpy(), vit_k=k.numpy())
    for name, (pd, ks) in SETTINGS.items():
      head = head_cls(text_categories=c, text_channels=p, text_embeddings_path=str(tpath),
                      visual_projs_path=str(vpath), vit=True, ks_thresh=ks, pd_thresh=pd,
                      in_channels=d, channels=0, num_classes=c, in_index=-1).eval()
      with torch.no_grad():
        out[f"vit_{name}"] = head([[None, None, k.clone(), v.clone()]]).numpy()
    # CLIP ResNet: res5 x (B, C, h, w) through the attention pool's q/k/v/c projections as 1x1 convs.
    ws = {n: (torch.randn(o, d, generator=g) / d ** 0.5, 0.1 * torch.randn(o, generator=g))
          for n, o in (("q_proj", d), ("k_proj", d), ("v_proj", d), ("c_proj", p))}
    rpath = Path(tmp) / "rn_proj.pth"
    torch.save({n: {"weight": wb[0].clone(), "bias": wb[1].clone()} for n, wb in ws.items()}, rpath)
    x = torch.randn(b, d, h, w, generator=g)
    out["rn_x"] = x.numpy()
    for n, (wt, bias) in ws.items():
      out[f"rn_{n}_weight"], out[f"rn_{n}_bias"] = wt.numpy(), bias.numpy()
    for name, (pd, ks) in SETTINGS.items():
      head = head_cls(text_categories=c, text_channels=p, text_embeddings_path=str(tpath),
                      visual_projs_path=str(rpath), vit=False, ks_thresh=ks, pd_thresh=pd,
                      in_channels=d, channels=0, num_classes=c, in_index=-1).eval()
      with torch.no_grad():
        out[f"rn_{name}"] = head([x.clone()]).numpy()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out}: {sorted(out)}")


if __name__ == "__main__":
  main()
