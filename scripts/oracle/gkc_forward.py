"""Run the official GKC on random weights (tiny sizes; gkc_official.py says what is stubbed) on two
images with targets, captions and synonym classifiers, and save small fixtures for
tests/test_gkc_official.py.

  PY=~/.cache/ovs-oracle/venv/bin/python
  $PY scripts/oracle/gkc_forward.py tests/data/gkc

Writes OUT/official_tiny.pth ({'model': state_dict} of the release's layout, as a detectron2
checkpoint holds it; gzipped) and OUT/official_forward.npz:
  image (B, H, W, 3) uint8 pixels, NHWC; pixel_mean/pixel_std the release's normalisation (the
  model sees (image - mean) / std);
  per prediction set s (0..S-2 the aux sets, S-1 the final one, the release's order):
  logits_s (B, Q, C+1), embed_s (B, Q, E) the class embedding before L2 (embed_proj output),
  masks_{0,S-1} (B, Q, H/4, W/4); text_plain (C, E), text_syn (B, K, E), text_caption (B, W, E) the
  text encoder's outputs; src_s/tgt_s/img_s the Hungarian matches of set s (flattened over images);
  bn_train_* the final logits/masks with the student's BatchNorms in train mode (batch statistics, as
  the release trains) and the running statistics after that step;
  loss terms: ce_s, syn_s, kd_s, ground_s (unweighted, as the release's methods return them), the
  region-dropout draws (drop_ce_s, drop_syn_s: uniform numbers, dropped where < 0.5, in the matches'
  order), the KD inputs (kd_teacher (N, E), kd_text (N, E)) and syn labels per target.
The student and teacher BatchNorms run in eval mode (running statistics) except for bn_train_*.
"""
import argparse
import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gkc_official  # noqa: E402  (sets up the release's package first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.structures import Instances  # noqa: E402

H, W, B = 64, 96, 2


def tokens(rng, n, ctx, vocab):
  """n random token rows; the end token (vocab - 1, the highest id: argmax pooling) at a random place."""
  t = np.zeros((n, ctx), np.int64)
  for i in range(n):
    length = rng.integers(3, ctx - 1)
    t[i, 0] = vocab - 2  # start token
    t[i, 1:length] = rng.integers(1, vocab - 3, length - 1)
    t[i, length] = vocab - 1
  return torch.from_numpy(t)


def inputs(rng, cfg):
  t = gkc_official.TINY
  num_classes, ctx, vocab = t["num_classes"], t["context"], t["vocab"]
  plain = tokens(rng, num_classes, ctx, vocab)
  batch = []
  segments = [[(0, 0, 32, 48, 1), (28, 40, 64, 96, 3), (8, 60, 40, 90, 1)],
              [(0, 0, 64, 44, 0), (20, 50, 60, 96, 4), (4, 4, 20, 30, 2), (40, 0, 64, 20, 3)]]
  for b in range(B):
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8).astype(np.float32)
    img[12:40, 20:60] = (200, 30, 30)
    masks, classes = [], []
    for (y0, x0, y1, x1, c) in segments[b]:
      m = np.zeros((H, W), bool)
      m[y0:y1, x0:x1] = True
      masks.append(m)
      classes.append(c)
    inst = Instances((H, W))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.gt_masks = torch.from_numpy(np.stack(masks))
    # The per-image synonym classifier (mapper: the class names, this image's first draws in place,
    # further synonyms appended): here C rows plus b + 1 extra rows; the targets point into it.
    syn = torch.cat([plain, tokens(rng, b + 1, ctx, vocab)])
    syn_labels = torch.tensor([c if i % 2 == 0 else num_classes + (i // 2) % (b + 1)
                               for i, c in enumerate(classes)], dtype=torch.int64)
    caption = tokens(rng, 3, ctx, vocab)
    batch.append({"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(), "instances": inst,
                  "height": H, "width": W, "all_caption": plain, "syn_class": syn,
                  "syn_classes": syn_labels, "caption": caption,
                  "caption_mask": torch.tensor([1, 1, b == 0], dtype=torch.int64)})
  return batch


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  model = gkc_official.build_official(tiny=True, quantize=True)
  # As DetectionCheckpointer saves it: the OrderedDict with its `_metadata` (module versions; the
  # release's head renames keys on load without them, mask_former_head.py:23-45).
  with gzip.open(os.path.join(a.out, "official_tiny.pth.gz"), "wb") as f:
    torch.save({"model": model.state_dict()}, f)
  rng = np.random.default_rng(0)
  batch = inputs(rng, None)
  out = {}
  text = []
  orig_text = model.text_encoder.forward
  model.text_encoder.forward = lambda x: text.append(orig_text(x)) or text[-1]
  embeds = {}
  n_sets = len(model.sem_seg_head.predictor.transformer_ffn_layers) + 1
  projs = [getattr(model, f"aux_embed_porj_{i}") for i in range(n_sets - 1)] + [model.embed_proj]
  for s, proj in enumerate(projs):
    proj.register_forward_hook(lambda m, i, o, s=s: embeds.setdefault(s, o.detach().clone()))
  captured = {}
  orig_criterion = model.criterion.forward

  def criterion(outputs, targets, **kw):
    losses, main, aux = orig_criterion(outputs, targets, **kw)
    captured["outputs"] = outputs
    captured["matches"] = [*aux, main]
    return losses, main, aux
  model.criterion.forward = criterion
  terms = {}
  for name in ("loss_labels", "loss_syn_label", "loss_text_kd", "loss_ground"):
    fn = getattr(model, name)

    def wrapped(*args, fn=fn, name=name, **kw):
      value = fn(*args, **kw)
      # A copy: the release scales its loss tensors in place by their weights (model 667-669).
      terms.setdefault(name, []).append((args, value.detach().clone()))
      return value
    setattr(model, name, wrapped)
  draws = []
  np_rand = np.random.rand

  def rand(*shape):
    x = np_rand(*shape)
    draws.append(x.copy())
    return x
  np.random.rand = rand
  np.random.seed(0)
  torch.manual_seed(0)
  model.train()
  model.backbone.eval()
  model.vision_clip.eval()
  with torch.no_grad():
    losses = model(batch)
  outputs = captured["outputs"]
  sets = [*outputs["aux_outputs"], {"pred_logits": outputs["pred_logits"],
                                    "pred_masks": outputs["pred_masks"]}]
  mean = model.pixel_mean.numpy()[:, 0, 0]
  std = model.pixel_std.numpy()[:, 0, 0]
  out["image"] = np.stack([x["image"].permute(1, 2, 0).numpy() for x in batch]).astype(np.uint8)
  out["pixel_mean"], out["pixel_std"] = mean, std
  for s, st in enumerate(sets):
    out[f"logits_{s}"] = st["pred_logits"].numpy()
    out[f"embed_{s}"] = embeds[s].numpy()
    if s in (0, len(sets) - 1):
      out[f"masks_{s}"] = st["pred_masks"].numpy()
    m = captured["matches"][s]
    out[f"img_{s}"] = np.concatenate([np.full(len(src), b) for b, (src, _) in enumerate(m)])
    out[f"src_{s}"] = np.concatenate([src.numpy() for src, _ in m])
    out[f"tgt_{s}"] = np.concatenate([tgt.numpy() for _, tgt in m])
  out["text_caption"], out["text_plain"], out["text_syn"] = (t.numpy() for t in text[:3])
  out["text_plain"] = out["text_plain"][0]
  # Loss terms in call order: loss_labels (final, aux...), loss_syn_label (final, aux...), kd, ground.
  order = [n_sets - 1, *range(n_sets - 1)]
  for name, key in (("loss_labels", "ce"), ("loss_syn_label", "syn"), ("loss_text_kd", "kd"),
                    ("loss_ground", "ground")):
    for s, (_, value) in zip(order, terms[name]):
      out[f"{key}_{s}"] = value.numpy()
  # Region dropout: np.random.rand(matched count) per class CE call, then per synonym CE call.
  for i, s in enumerate(order):
    out[f"drop_ce_{s}"] = draws[i]
    out[f"drop_syn_{s}"] = draws[n_sets + i]
  assert len(draws) == 2 * n_sets, len(draws)
  kd_args = terms["loss_text_kd"][0][0]
  out["kd_teacher"] = kd_args[1].numpy()
  out["kd_text"] = kd_args[2].numpy()
  out["kd_student_final"] = kd_args[0].numpy()
  out["syn_labels"] = np.concatenate([x["syn_classes"].numpy() for x in batch])
  out["labels"] = np.concatenate([x["instances"].gt_classes.numpy() for x in batch])
  out["num_targets"] = np.array([len(x["syn_classes"]) for x in batch])
  out["caption_mask"] = np.stack([x["caption_mask"].numpy() for x in batch])
  out["weighted_total"] = np.float32(sum(v.item() for v in losses.values()))
  # The same forward with the student's BatchNorms in train mode (the release's training mode).
  model.backbone.train()
  with torch.no_grad():
    model(batch)
  outputs = captured["outputs"]
  out["bn_train_logits"] = outputs["pred_logits"].numpy()
  out["bn_train_masks"] = outputs["pred_masks"].numpy()
  stats = {k: v for k, v in model.backbone.state_dict().items() if "running" in k}
  out["bn_train_running_mean_bn1"] = stats["bn1.running_mean"].numpy()
  out["bn_train_running_var_bn1"] = stats["bn1.running_var"].numpy()
  out["bn_train_running_mean_last"] = stats["layer4.0.bn3.running_mean"].numpy()
  out["bn_train_running_var_last"] = stats["layer4.0.bn3.running_var"].numpy()
  np.savez_compressed(os.path.join(a.out, "official_forward.npz"),
                      **{k: np.asarray(v) for k, v in out.items()})
  print("official GKC (tiny):", {k: getattr(v, "shape", v) for k, v in out.items() if "logits" in k})


if __name__ == "__main__":
  main()
