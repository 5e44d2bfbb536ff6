"""Oracle: the last-block changes of SCLIP, ClearCLIP, NACLIP and ProxyCLIP and their PAMR, run from
the official code on random weights, for tests/test_training_free_oracle.py.

  O=~/.cache/ovs-oracle/training_free
  git --git-dir=/work/.mirror/wangf3014+SCLIP/repo archive HEAD clip/model.py pamr.py | tar -x -C $O/sclip
  git --git-dir=/work/.mirror/sinahmr+NACLIP/repo archive HEAD clip/model.py pamr.py | tar -x -C $O/naclip
  git --git-dir=/work/.mirror/mc-lan+ClearCLIP/repo archive HEAD open_clip/transformer.py \
      open_clip/utils.py open_clip/pos_embed.py | tar -x -C $O/clearclip
  git --git-dir=/work/.mirror/mc-lan+ProxyCLIP/repo archive HEAD open_clip/transformer.py \
      open_clip/utils.py open_clip/pos_embed.py | tar -x -C $O/proxyclip
  ~/.cache/ovs-oracle/venv/bin/python scripts/oracle/training_free_forward.py --root $O \
      --out tests/data/training_free/forward.npz

Only the files holding the change are imported, each unmodified: SCLIP's and NACLIP's OpenAI-CLIP
`clip/model.py` (their `VisionTransformer`), ClearCLIP's and ProxyCLIP's `open_clip/transformer.py`
(their `VisionTransformer`; imported as a package `open_clip` holding only that file, `utils.py` and
`pos_embed.py`, so the package `__init__` with its model factory and downloads is not run). No
mmseg/mmcv is needed for these files: nothing is stubbed. The segmentors' own scoring lines (cosine
with the text, `clip_segmentor.py:63-66` alike) are written out here, text embeddings being random.

One set of random OpenAI-layout ViT weights (biases and norms perturbed off their init) is loaded
into all four towers. Native input size (no position-embedding resampling: the official code
resamples with a scale factor (n + 0.1)/N, ours with the exact size ratio).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

WIDTH, LAYERS, HEADS, PATCH, SIZE, PROJ, TEXTS = 32, 2, 4, 6, 48, 16, 6


def load_module(name: str, path: Path, package: str | None = None):
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  if package:
    mod.__package__ = package
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod


def open_clip_transformer(root: Path, tag: str):
  """`<root>/open_clip/transformer.py` as `open_clip_<tag>.transformer` (its package holds only the
  files it imports relatively)."""
  pkg = f"open_clip_{tag}"
  m = types.ModuleType(pkg)
  m.__path__ = [str(root / "open_clip")]
  sys.modules[pkg] = m
  for dep in ("utils", "pos_embed"):
    load_module(f"{pkg}.{dep}", root / "open_clip" / f"{dep}.py", pkg)
  return load_module(f"{pkg}.transformer", root / "open_clip" / "transformer.py", pkg)


def random_state(g):
  """OpenAI `visual.*` names (without the prefix): a ViT of WIDTH x LAYERS, patch PATCH at SIZE."""
  n = lambda *s, std=0.02: std * torch.randn(*s, generator=g)
  sd = {"conv1.weight": n(WIDTH, 3, PATCH, PATCH, std=0.1), "class_embedding": n(WIDTH, std=0.5),
        "positional_embedding": n((SIZE // PATCH) ** 2 + 1, WIDTH, std=0.5),
        "ln_pre.weight": 1 + n(WIDTH, std=0.1), "ln_pre.bias": n(WIDTH, std=0.1),
        "ln_post.weight": 1 + n(WIDTH, std=0.1), "ln_post.bias": n(WIDTH, std=0.1),
        "proj": n(WIDTH, PROJ, std=WIDTH ** -0.5)}
  for i in range(LAYERS):
    p = f"transformer.resblocks.{i}."
    sd.update({p + "attn.in_proj_weight": n(3 * WIDTH, WIDTH, std=0.3),
               p + "attn.in_proj_bias": n(3 * WIDTH, std=0.1),
               p + "attn.out_proj.weight": n(WIDTH, WIDTH, std=0.2), p + "attn.out_proj.bias": n(WIDTH, std=0.1),
               p + "ln_1.weight": 1 + n(WIDTH, std=0.1), p + "ln_1.bias": n(WIDTH, std=0.1),
               p + "ln_2.weight": 1 + n(WIDTH, std=0.1), p + "ln_2.bias": n(WIDTH, std=0.1),
               p + "mlp.c_fc.weight": n(4 * WIDTH, WIDTH, std=0.15), p + "mlp.c_fc.bias": n(4 * WIDTH, std=0.1),
               p + "mlp.c_proj.weight": n(WIDTH, 4 * WIDTH, std=0.1), p + "mlp.c_proj.bias": n(WIDTH, std=0.1)})
  return sd


def cosines(features, text):
  """(B, 1 + hw or hw, P) official features -> (B, S, h, w) cosines with the text (segmentor lines)."""
  f = features / features.norm(dim=-1, keepdim=True)
  logits = f @ text.T
  side = int(round(logits.shape[1] ** 0.5))
  return logits.permute(0, 2, 1).reshape(logits.shape[0], -1, side, side)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--root", type=Path, required=True)
  ap.add_argument("--out", type=Path, required=True)
  args = ap.parse_args()
  torch.set_grad_enabled(False)
  g = torch.Generator().manual_seed(0)
  sd = random_state(g)
  image = torch.randn(2, 3, SIZE, SIZE, generator=g)
  text = torch.randn(TEXTS, PROJ, generator=g)
  text = text / text.norm(dim=-1, keepdim=True)
  out = {"image": image.numpy(), "text": text.numpy(), **{f"visual.{k}": v.numpy() for k, v in sd.items()}}

  sclip = load_module("sclip_model", args.root / "sclip/clip/model.py")
  vit = sclip.VisionTransformer(SIZE, PATCH, WIDTH, LAYERS, HEADS, PROJ).eval()
  vit.load_state_dict(sd)
  # clip_segmentor.py:63-66: encode_image(return_all=True, csa=True), normalise, drop the class token
  feats = vit(image, return_all=True, csa=True)
  out["sclip"] = cosines(feats[:, 1:], text).numpy()

  naclip = load_module("naclip_model", args.root / "naclip/clip/model.py")
  vit = naclip.VisionTransformer(SIZE, PATCH, WIDTH, LAYERS, HEADS, PROJ).eval()
  vit.load_state_dict(sd)
  for std in (5.0, 2.0):  # the default, and one whose window varies inside the 8x8 grid
    vit.set_params("reduced", "naclip", std)
    vit.addition_cache = {}  # its window is cached per grid, not per std
    out[f"naclip_std{std:g}"] = cosines(vit(image, return_all=True)[:, 1:], text).numpy()

  quick_gelu = None
  for tag in ("clearclip", "proxyclip"):
    tr = open_clip_transformer(args.root / tag, tag)
    quick_gelu = tr.QuickGELU
    vit = tr.VisionTransformer(image_size=SIZE, patch_size=PATCH, width=WIDTH, layers=LAYERS, heads=HEADS,
                               mlp_ratio=4.0, output_dim=PROJ, act_layer=quick_gelu).eval()
    vit.load_state_dict(sd)
    if tag == "clearclip":
      for model_type in ("ClearCLIP", "vanilla"):
        out[f"clearclip_{model_type}"] = cosines(vit(image, model_type, True), text).numpy()
    else:
      # A VFM grid other than CLIP's (10x10 vs 8x8), so the value resize acts; one image per call as
      # the segmentor's sliding window (its mean(S) runs over the batch).
      proxy = torch.randn(2, 24, 10, 10, generator=g)
      proxy = proxy + 2.0 * proxy.mean(1, keepdim=True)  # correlated features: not all S' < 0
      out["proxyclip_feats"] = proxy.numpy()
      out["proxyclip"] = np.concatenate(
          [cosines(vit(image[i:i + 1], proxy[i:i + 1], 1.2, 3.0), text).numpy() for i in range(2)])

  # PAMR (SCLIP's and NACLIP's pamr.py): 10 steps at dilations (8, 16), and 3 steps at (1, 2).
  pamr = load_module("naclip_pamr", args.root / "naclip/pamr.py")
  pamr_sclip = load_module("sclip_pamr", args.root / "sclip/pamr.py")
  img = torch.randn(1, 3, 24, 32, generator=g)
  mask = torch.randn(1, 4, 24, 32, generator=g)
  out["pamr_image"], out["pamr_mask"] = img.numpy(), mask.numpy()
  for steps, dil in ((10, (8, 16)), (3, (1, 2))):
    got = pamr.PAMR(steps, dilations=list(dil))(img, mask)
    same = pamr_sclip.PAMR(steps, dilations=list(dil))(img, mask)
    assert torch.allclose(got, same, atol=1e-6), "SCLIP's and NACLIP's PAMR differ"
    out[f"pamr_{steps}_{'_'.join(map(str, dil))}"] = got.numpy()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, **{k: np.asarray(v, np.float32) for k, v in out.items()})
  print(f"wrote {args.out}: {sorted(out)}")


if __name__ == "__main__":
  main()
