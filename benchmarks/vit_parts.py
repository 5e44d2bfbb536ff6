"""Where a ViT-B encoder layer spends its time at long sequences: each part, ours vs PyTorch, same run.

  python benchmarks/vit_parts.py [--tokens=785,1601] [--batch=2] [--repeats=3] [--attention=auto]

One CLIP ViT-B/16 encoder layer (width 768, 12 heads, MLP 3072, quick GELU), fp32, on (B, L, 768)
activations: LayerNorm, the q/k/v projections, the attention core, the output projection, the MLP,
and the whole layer — forward, and forward+backward (gradients of the input and the parameters).
785 tokens = 448 px, 1,601 = 640 px. The parts are jitted separately, so the whole layer may
be faster than their sum (fusion across parts).
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

from ovs_jax.models import clip, clip_config
from ovs_jax.ops import attention
from ovs_jax.timing import best_time


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", default="785,1601")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--attention", default="auto")
  args = p.parse_args()
  cfg = clip_config.get_preset("vit_b16").vision
  layer = clip.EncoderLayer(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))
  layer.self_attn.attention_impl = args.attention
  graphdef, params = nnx.split(layer)
  g = lambda *path: np.asarray(nnx.to_pure_dict(params)[path[0]][path[1]][path[2]]) if len(path) == 3 else \
      np.asarray(nnx.to_pure_dict(params)[path[0]][path[1]])
  t = lambda a: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)))
  tw = {f"{m}.{n}": t(g("self_attn", m, "kernel").T if n == "weight" else g("self_attn", m, "bias"))
        for m in ("q_proj", "k_proj", "v_proj", "out_proj") for n in ("weight", "bias")}
  tw.update({f"mlp.{m}.{n}": t(g("mlp", m, "kernel").T if n == "weight" else g("mlp", m, "bias"))
             for m in ("fc1", "fc2") for n in ("weight", "bias")})
  tw.update({f"{m}.{n}": t(g(m, "scale" if n == "weight" else "bias")) for m in ("layer_norm1", "layer_norm2")
             for n in ("weight", "bias")})
  heads, d = cfg.num_attention_heads, cfg.hidden_size

  def t_lin(x, name):
    return F.linear(x, tw[f"{name}.weight"], tw[f"{name}.bias"])

  def t_attn_core(q, k, v):
    b, n, _ = q.shape
    s = lambda x: x.reshape(b, n, heads, d // heads).transpose(1, 2)
    return F.scaled_dot_product_attention(s(q), s(k), s(v)).transpose(1, 2).reshape(b, n, d)

  def t_mlp(x):
    h = t_lin(x, "mlp.fc1")
    return t_lin(h * torch.sigmoid(1.702 * h), "mlp.fc2")

  def t_layer(x):
    h = F.layer_norm(x, (d,), tw["layer_norm1.weight"], tw["layer_norm1.bias"], cfg.layer_norm_eps)
    x = x + t_lin(t_attn_core(t_lin(h, "q_proj"), t_lin(h, "k_proj"), t_lin(h, "v_proj")), "out_proj")
    h = F.layer_norm(x, (d,), tw["layer_norm2.weight"], tw["layer_norm2.bias"], cfg.layer_norm_eps)
    return x + t_mlp(h)

  def merged(st):
    return nnx.merge(graphdef, st)
  parts = {
      "LayerNorm": (lambda st, x: merged(st).layer_norm1(x),
                    lambda x: F.layer_norm(x, (d,), tw["layer_norm1.weight"], tw["layer_norm1.bias"])),
      "q/k/v projections": (lambda st, x: sum(getattr(merged(st).self_attn, m)(x) for m in ("q_proj", "k_proj", "v_proj")),
                            lambda x: t_lin(x, "q_proj") + t_lin(x, "k_proj") + t_lin(x, "v_proj")),
      "attention core": (lambda st, x: attention.multi_head_attention(x, x * 0.5, x * 0.25, heads, impl=args.attention),
                         lambda x: t_attn_core(x, x * 0.5, x * 0.25)),
      "output projection": (lambda st, x: merged(st).self_attn.out_proj(x), lambda x: t_lin(x, "out_proj")),
      "MLP (fc1, quick GELU, fc2)": (lambda st, x: merged(st).mlp(x), t_mlp),
      "whole layer": (lambda st, x: merged(st)(x), t_layer),
  }
  rows = []
  for n in map(int, args.tokens.split(",")):
    x = np.random.default_rng(0).standard_normal((args.batch, n, d)).astype(np.float32) * 0.5
    xj, xt = jnp.asarray(x), torch.from_numpy(x).requires_grad_()
    for name, (ours, ref) in parts.items():
      fwd = jax.jit(ours)
      bwd = jax.jit(jax.grad(lambda st, x: jnp.sum(ours(st, x) ** 2), argnums=(0, 1)))
      f = best_time(lambda: fwd(params, xj), args.repeats)
      b = best_time(lambda: bwd(params, xj), args.repeats)
      with torch.inference_mode():
        rf = best_time(lambda: ref(xt.detach()), args.repeats)

      def ref_bwd():
        for v in list(tw.values()) + [xt]:
          v.grad = None
        (ref(xt) ** 2).sum().backward()
      rb = best_time(ref_bwd, args.repeats)
      rows.append((n, name, f, rf, b, rb))
  print(f"\nViT-B/16 encoder layer parts, batch {args.batch}, fp32, attention {args.attention!r}, "
        f"{os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}, jax {jax.__version__} vs torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads)")
  print("| tokens | part | ours fwd ms | PyTorch fwd ms | fwd ours/PyTorch | ours fwd+bwd ms | "
        "PyTorch fwd+bwd ms | fwd+bwd ours/PyTorch |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  for n, name, f, rf, b, rb in rows:
    print(f"| {n} | {name} | {f * 1e3:.1f} | {rf * 1e3:.1f} | {rf / f:.2f} | {b * 1e3:.1f} | {rb * 1e3:.1f} | "
          f"{rb / b:.2f} |")


if __name__ == "__main__":
  main()
