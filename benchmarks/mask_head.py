"""Mask head and matcher timing on this machine, with PyTorch / scipy references in the same run.

  python benchmarks/mask_head.py [--image 640] [--batch 2] [--targets 16] [--repeats 3] [--bf16]

Rows: the full training step of the head (ViT-B/16 map, D=512 -> simple feature pyramid -> pixel
decoder -> 9-layer masked-attention decoder -> cosine classifier -> set loss over 10 prediction
sets, forward+backward); the matching inside it (costs on 12,544 points + Hungarian, 10 sets);
the Hungarian solver alone against scipy; and multi-scale deformable attention forward+backward
at the pixel decoder's size against a PyTorch grid_sample formulation.
"""
import argparse
import os
import sys
import time

# Run as a script, benchmarks/ comes first on sys.path; the repository root (for configs/) replaces it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from flax import nnx

from configs.cdt_vitb import get_config
from ovs_jax.heads.cosine_classifier import CosineClassifier
from ovs_jax.heads.feature_pyramid import SimpleFeaturePyramid
from ovs_jax.heads.mask_former import MaskFormerHead, prediction_sets
from ovs_jax.losses.matching import hungarian_matcher
from ovs_jax.losses.set_criterion import MaskLossConfig, mask_classification_loss
from ovs_jax.ops.deformable_attention import multi_scale_deformable_attention
from ovs_jax.ops.hungarian import hungarian_match


def timed(fn, repeats):
  """Median seconds of `fn()` after one warm-up (compile) call; returns (median, first)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), first


class Model(nnx.Module):
  def __init__(self, dtype, rngs):
    self.pyramid = SimpleFeaturePyramid(512, 256, dtype=dtype, rngs=rngs)
    self.head = MaskFormerHead(self.pyramid.channels(256), dtype=dtype, rngs=rngs)
    self.classifier = CosineClassifier(256, 512, dtype=dtype, rngs=rngs)

  def __call__(self, vit_map, text):
    return self.head(self.pyramid(vit_map), classify=lambda s, _: self.classifier(s['class_features'], text))


def torch_msda(value, shapes, loc, weights):
  b, _, nh, dh = value.shape
  _, lq, _, nl, npt, _ = loc.shape
  out = 0
  for l, (v, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], 1), shapes)):
    v = v.permute(0, 2, 3, 1).reshape(b * nh, dh, h, w)
    grid = 2 * loc[:, :, :, l].permute(0, 2, 1, 3, 4).reshape(b * nh, lq, npt, 2) - 1
    s = F.grid_sample(v, grid, align_corners=False)  # (b·nh, dh, lq, npt)
    out = out + (s * weights[:, :, :, l].permute(0, 2, 1, 3).reshape(b * nh, 1, lq, npt)).sum(-1)
  return out.reshape(b, nh * dh, lq).transpose(1, 2)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--image', type=int, default=640)
  ap.add_argument('--batch', type=int, default=2)
  ap.add_argument('--targets', type=int, default=16, help='padded targets per image')
  ap.add_argument('--classes', type=int, default=171)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--bf16', action='store_true', help='bfloat16 compute, float32 params')
  args = ap.parse_args()
  b, s, t = args.batch, args.image, args.targets
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  rng = np.random.default_rng(0)
  rows = []

  model = Model(dtype, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  vit_map = rng.normal(size=(b, s // 16, s // 16, 512)).astype(np.float32)
  text = rng.normal(size=(args.classes, 512)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  n_valid = rng.integers(t // 2, t + 1, b)
  targets = {'labels': rng.integers(0, args.classes, (b, t)).astype(np.int32),
             'masks': (rng.random((b, t, s // 4, s // 4)) > 0.5).repeat(4, 2).repeat(4, 3)
                      .astype(np.float32),
             'valid': np.arange(t)[None] < n_valid[:, None]}
  cfg = MaskLossConfig.from_config(get_config().loss)

  # Data enter as arguments: closed-over arrays would be constant-folded by XLA.
  def loss_fn(params, key, vit_map, text, targets):
    out = nnx.merge(graphdef, params)(vit_map, text)
    return mask_classification_loss(key, prediction_sets(out), targets, config=cfg)[0]

  step = jax.jit(jax.value_and_grad(loss_fn))
  key = jax.random.key(0)
  t_step, c_step = timed(lambda: step(params, key, vit_map, text, targets), args.repeats)
  rows.append(('head + loss, forward+backward', t_step, None, c_step))

  outputs = jax.jit(lambda p, x, e: nnx.merge(graphdef, p)(x, e))(params, vit_map, text)
  sets = prediction_sets(outputs)
  match_all = jax.jit(lambda k, sets, tg: [
      hungarian_matcher(kk, st['pred_logits'], st['pred_masks'], tg, cfg.num_points)
      for kk, st in zip(jax.random.split(k, len(sets)), sets)])
  t_match, c_match = timed(lambda: match_all(key, sets, targets), args.repeats)
  rows.append((f'matching, {len(sets)} sets (costs + Hungarian)', t_match, None, c_match))

  q = outputs['pred_masks'].shape[1]
  costs = rng.random((len(sets) * b, q, t)).astype(np.float32)
  valid = np.repeat(targets['valid'], len(sets), 0)
  solve = jax.jit(jax.vmap(hungarian_match))
  t_solve, c_solve = timed(lambda: solve(costs, valid), args.repeats)
  t0 = time.perf_counter()
  for _ in range(args.repeats):
    for c, v in zip(costs, valid):
      scipy.optimize.linear_sum_assignment(c[:, v])
  t_scipy = (time.perf_counter() - t0) / args.repeats
  rows.append((f'Hungarian only, {len(costs)} x ({q}, <={t}) vs scipy', t_solve, t_scipy, c_solve))

  shapes = ((s // 32, s // 32), (s // 16, s // 16), (s // 8, s // 8))
  n = sum(h * w for h, w in shapes)
  value = rng.normal(size=(b, n, 8, 32)).astype(np.float32)
  loc = rng.random((b, n, 8, 3, 4, 2)).astype(np.float32)
  w = rng.random((b, n, 8, 3, 4)).astype(np.float32)
  cot = rng.normal(size=(b, n, 256)).astype(np.float32)
  msda = jax.jit(jax.grad(lambda v, l, a, c: jnp.vdot(multi_scale_deformable_attention(
      v.astype(dtype), shapes, l, a), c.astype(dtype)).astype(jnp.float32), argnums=(0, 1, 2)))
  t_msda, c_msda = timed(lambda: msda(value, loc, w, cot), args.repeats)
  tv, tl, tw = (torch.tensor(a, requires_grad=True) for a in (value, loc, w))
  tc = torch.from_numpy(cot)

  def torch_step():
    for x in (tv, tl, tw):
      x.grad = None
    (torch_msda(tv, shapes, tl, tw) * tc).sum().backward()

  torch_step()
  t0 = time.perf_counter()
  for _ in range(args.repeats):
    torch_step()
  t_torch = (time.perf_counter() - t0) / args.repeats
  rows.append((f'deformable attention fwd+bwd, {n} queries', t_msda, t_torch, c_msda))

  print(f'\nmask head at {s}x{s}, batch {b}, {t} padded targets, {jnp.dtype(dtype).name} compute, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s), torch threads '
        f'{torch.get_num_threads()}')
  print(f'{"":52s} {"JAX ms":>10s} {"ref ms":>10s} {"compile+1st s":>14s}')
  for name, tj, tr, c in rows:
    ref = f'{tr * 1e3:10.1f}' if tr is not None else f'{"-":>10s}'
    print(f'{name:52s} {tj * 1e3:10.1f} {ref} {c:14.1f}')
  print(f'matcher share of the training step: {100 * t_match / t_step:.1f}% '
        f'(Hungarian solver alone: {100 * t_solve / t_step:.1f}%)')


if __name__ == '__main__':
  main()
