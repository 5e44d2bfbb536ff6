"""Evaluation throughput: MaskCLIP eval images/s (whole image at 640 short side, sliding window)
and the cost of confusion-matrix accumulation, against PyTorch / numpy on the same inputs.

  python benchmarks/evaluate.py [--arch=vit_b16] [--images=3] [--classes=150] [--hw=512,683]

Ours: the full jitted eval step (normalise, MaskCLIP, upsample, resize to the label size, argmax,
confusion matrix) plus host padding and transfer. Reference: transformers' PyTorch CLIP with the
same weights doing the same MaskCLIP computation (value path in the last block) on the same padded
canvases, torch bilinear resizes and a torch.bincount confusion matrix. Compile time is excluded
(one warm-up pass first). Also prints how far the two confusion matrices differ.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run as a script, this folder comes first on sys.path; benchmarks/input_pipeline.py would shadow
# the package of that name.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path.pop(0)

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from input_pipeline.global_batch import make_global_batch
from ovs_jax import metrics, preprocess
from ovs_jax.inference import batching, engine, windows
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.segmentation_model import SegmentationModel
from ovs_jax.interchange import torch_state
from ovs_jax.interchange.clip_weights import abstract_clip
from ovs_jax.methods.maskclip import maskclip_class_logits
from ovs_jax.models import clip_config
from ovs_jax.timing import best_time


def jax_model(cfg, sd, text_emb):
  clip = abstract_clip(cfg)
  torch_state.import_state_dict(clip, sd, ignore=r".*position_ids")
  graphdef, state = nnx.split(clip)
  index = jnp.arange(text_emb.shape[0])[:, None]

  def apply(params, pixels, valid):
    state, emb = params
    return maskclip_class_logits(nnx.merge(graphdef, state), pixels, emb, index)
  return SegmentationModel("maskclip", apply, (state, jnp.asarray(text_emb)),
                           [str(i) for i in range(text_emb.shape[0])], cfg.vision.patch_size)


def torch_maskclip(hf, pixels, text_emb):
  """(B, 3, H, W) -> (B, C, H, W) logits: MaskCLIP with transformers' CLIP."""
  vm = hf.vision_model
  hidden = vm(pixel_values=pixels, output_hidden_states=True,
              interpolate_pos_encoding=True).hidden_states[-2]
  last = vm.encoder.layers[-1]
  x = hidden + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))
  x = x + last.mlp(last.layer_norm2(x))
  feats = F.normalize(hf.visual_projection(vm.post_layernorm(x[:, 1:])), dim=-1)
  b, (h, w) = pixels.shape[0], (pixels.shape[2] // 16, pixels.shape[3] // 16)
  logits = hf.logit_scale.exp() * feats @ text_emb.T
  logits = logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)
  return F.interpolate(logits, size=pixels.shape[2:], mode="bilinear", align_corners=False)


def torch_eval(hf, batch, text_emb, cfg, num_classes):
  """The reference eval step on one padded batch -> (labels, confusion matrix)."""
  mean, std = torch.tensor(preprocess.CLIP_MEAN), torch.tensor(preprocess.CLIP_STD)
  px = ((torch.from_numpy(batch["image"]).float() / 255 - mean) / std).permute(0, 3, 1, 2)
  for k, (h, w) in enumerate(batch["image_hw"]):  # the padding is the mean colour (0 after
    px[k, :, h:], px[k, :, :, w:] = 0, 0          # normalising), as detectron2's ImageList pads
  if cfg.mode == "whole":
    scores = torch_maskclip(hf, px, text_emb)
  else:
    _, _, hc, wc = px.shape
    scores = torch.zeros(px.shape[0], num_classes, hc, wc)
    count = torch.zeros(1, 1, hc, wc)
    h, w = batch["image_hw"][0]
    ny = windows.num_windows(int(h), cfg.window, cfg.stride)
    nx = windows.num_windows(int(w), cfg.window, cfg.stride)
    for i in range(ny):
      for j in range(nx):
        y = max(min(i * cfg.stride + cfg.window, h) - cfg.window, 0)
        x = max(min(j * cfg.stride + cfg.window, w) - cfg.window, 0)
        crop = px[:, :, y:y + cfg.window, x:x + cfg.window]
        scores[:, :, y:y + cfg.window, x:x + cfg.window] += torch_maskclip(hf, crop, text_emb)
        count[:, :, y:y + cfg.window, x:x + cfg.window] += 1
    scores = scores / count.clamp(min=1)
  labels, cm = [], torch.zeros(num_classes * num_classes, dtype=torch.int64)
  for k in range(px.shape[0]):
    (h, w), (ho, wo) = batch["image_hw"][k], batch["orig_hw"][k]
    s = F.interpolate(scores[k:k + 1, :, :h, :w], size=(int(ho), int(wo)), mode="bilinear",
                      align_corners=False)
    pred = s[0].argmax(0)
    lab = torch.from_numpy(batch["label"][k, :ho, :wo].astype(np.int64))
    keep = lab != 255
    cm += torch.bincount(lab[keep] * num_classes + pred[keep], minlength=num_classes ** 2)
    labels.append(pred.numpy())
  return labels, cm



def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="vit_b16")
  p.add_argument("--images", type=int, default=3)
  p.add_argument("--classes", type=int, default=150)
  p.add_argument("--hw", default="512,683", help="original image size (ADE20K-typical)")
  p.add_argument("--short_side", type=int, default=640)
  p.add_argument("--window", type=int, default=448)
  p.add_argument("--stride", type=int, default=224)
  args = p.parse_args()
  hw = tuple(map(int, args.hw.split(",")))
  torch.set_grad_enabled(False)

  cfg = clip_config.get_preset(args.arch)
  hf_cfg = transformers.CLIPConfig(**{k: v for k, v in clip_config.to_hf_dict(cfg).items()
                                      if k != "architectures"})
  torch.manual_seed(0)
  hf = transformers.CLIPModel(hf_cfg).eval()
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  rng = np.random.default_rng(0)
  text = rng.normal(size=(args.classes, cfg.projection_dim)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  model = jax_model(cfg, sd, text)
  mesh = engine.data_mesh(jax.devices()[:1])
  sharded, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = jax.device_put(model.params, rep)

  records = [{"image": rng.integers(0, 256, (*hw, 3), np.uint8),
              "label": rng.integers(0, args.classes, hw).astype(np.uint8)} for _ in range(args.images)]
  rows = []
  for mode in ("whole", "slide"):
    icfg = InferenceConfig(mode, args.short_side, window=args.window, stride=args.stride).for_model(16)
    resize = batching.ResizeForEval(icfg.short_side, icfg.max_size)
    batches = [batching.pad_batch({k: [v] for k, v in resize.map(r).items()}, icfg, 255)
               for r in records]
    step = engine.make_eval_step(model, icfg, 255, mesh)

    def ours():
      counts = jax.device_put(metrics.zero_counts(args.classes), rep)
      for b in batches:
        counts = step(params, counts, make_global_batch(b, sharded)[0])
      return metrics.counts_to_numpy(counts)

    counts = ours()  # compile + warm-up
    t = time.perf_counter()
    counts = ours()
    t_ours = time.perf_counter() - t
    emb_t = torch.from_numpy(text)
    torch_eval(hf, batches[0], emb_t, icfg, args.classes)  # warm-up
    t = time.perf_counter()
    ref = [torch_eval(hf, b, emb_t, icfg, args.classes) for b in batches]
    t_ref = time.perf_counter() - t
    ref_counts = sum(cm for _, cm in ref).reshape(args.classes, args.classes).numpy()
    differ = float(np.abs(counts - ref_counts).sum()) / (2 * counts.sum())  # ≥ share of pixels that moved
    canvas = "x".join(map(str, batches[0]["image"].shape[1:3]))
    what = f"whole image, short side {args.short_side} (canvas {canvas})" if mode == "whole" else \
        f"sliding {args.window}/{args.stride}, short side {args.short_side}"
    rows.append((f"eval images/s: {what}", args.images / t_ours, args.images / t_ref, "images/s",
                 f"confusion matrices differ by {100 * differ:.2f}% of pixels"))

  for c in (150, 847):
    lab = rng.integers(0, c, (1, *hw)).astype(np.uint16)
    lab[:, ::7] = 255 if c < 255 else 65535
    pred = rng.integers(0, c, (1, *hw)).astype(np.int32)
    ignore = 255 if c < 255 else 65535
    acc_fn = jax.jit(lambda a, p, l, c=c, ignore=ignore: metrics.add_counts(
        a, metrics.confusion_matrix(p, l, c, ignore)), donate_argnums=0)
    lab_j, pred_j = jnp.asarray(lab), jnp.asarray(pred)
    acc = [metrics.zero_counts(c)]

    def jax_step():
      acc[0] = acc_fn(acc[0], pred_j, lab_j)
      jax.block_until_ready(acc[0])

    def np_step():
      keep = lab != ignore
      return np.bincount(lab[keep].astype(np.int64) * c + pred[keep], minlength=c * c)

    lab_t, pred_t = torch.from_numpy(lab.astype(np.int64)), torch.from_numpy(pred.astype(np.int64))

    def torch_step():
      keep = lab_t != ignore
      return torch.bincount(lab_t[keep] * c + pred_t[keep], minlength=c * c)

    t_j, t_np, t_t = best_time(jax_step), best_time(np_step), best_time(torch_step)
    rows.append((f"confusion matrix, {c} classes, {hw[0]}x{hw[1]} px", 1e3 * t_j, 1e3 * t_np,
                 "ms/image", f"torch.bincount {1e3 * t_t:.1f} ms"))

  print(f"\n{args.arch}, {args.classes} classes, {args.images} images of {hw[0]}x{hw[1]}, "
        f"{jax.devices()[0].platform} ({os.cpu_count()} cores), fp32\n")
  print("| measurement | ours (JAX) | reference | unit | ours/ref speed | note |")
  print("| --- | ---: | ---: | --- | ---: | --- |")
  for name, ours_v, ref_v, unit, note in rows:
    speed = ours_v / ref_v if unit == "images/s" else ref_v / ours_v
    print(f"| {name} | {ours_v:.3g} | {ref_v:.3g} | {unit} | {speed:.2f}x | {note} |")


if __name__ == "__main__":
  main()
