"""Attention alone: our implementations (ops/attention.py) vs PyTorch's fused CPU SDPA, per length.

  python benchmarks/attention.py [--lengths=197,401,785,1601,2241] [--batch=2] [--heads=12] [--dim=64]
                                 [--chunks=128,256,512] [--repeats=3]

One ViT-B attention (12 heads of 64) over L tokens, batch 2, fp32: forward, and forward+backward
(gradients of q, k, v); same inputs on both sides. The lengths are ViT-B/16's at 224, 320, 448 and
640 px and the whole-image canvas 640×896. The row where "chunked" first beats "xla" is the
crossover `ops.attention.CPU_CHUNKED_MIN_LOGITS` encodes.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from ovs_jax.ops import attention
from ovs_jax.timing import best_time


def time_ours(impl, q, k, v, chunk=None):
  def f(q, k, v):
    if impl == "chunked":
      t = lambda x: x.transpose(0, 2, 1, 3)
      return t(attention.chunked_attention(t(q), t(k), t(v), chunk=chunk))
    return attention.dot_product_attention(q, k, v, impl=impl)
  fwd = jax.jit(f)
  bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))
  return fwd, bwd


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--lengths", default="197,401,785,1601,2241")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--chunks", default="128,256,512")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  rows = []
  for length in map(int, args.lengths.split(",")):
    r = np.random.default_rng(0)
    qkv = [r.standard_normal((args.batch, length, args.heads, args.dim)).astype(np.float32) for _ in range(3)]
    tq, tk, tv = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).requires_grad_() for x in qkv)
    with torch.inference_mode():
      t_fwd = best_time(lambda: F.scaled_dot_product_attention(tq.detach(), tk.detach(), tv.detach()),
                        args.repeats)

    def torch_bwd():
      for x in (tq, tk, tv):
        x.grad = None
      (F.scaled_dot_product_attention(tq, tk, tv) ** 2).sum().backward()
    t_bwd = best_time(torch_bwd, args.repeats)
    jq, jk, jv = map(jnp.asarray, qkv)
    variants = [("xla", None)] + [("chunked", int(c)) for c in args.chunks.split(",")]
    for impl, chunk in variants:
      fwd, bwd = time_ours(impl, jq, jk, jv, chunk)
      f = best_time(lambda: fwd(jq, jk, jv), args.repeats)
      b = best_time(lambda: bwd(jq, jk, jv), args.repeats)
      name = impl if chunk is None else f"chunked/{chunk}"
      rows.append((length, name, f, t_fwd, b, t_bwd))
  print(f"\nattention, batch {args.batch}, {args.heads} heads x {args.dim}, fp32, {os.cpu_count()} CPU cores, "
        f"load {os.getloadavg()[0]:.1f}, jax {jax.__version__} vs torch {torch.__version__} SDPA "
        f"({torch.get_num_threads()} threads)")
  print("| tokens | ours | ours fwd ms | PyTorch fwd ms | fwd ours/PyTorch | ours fwd+bwd ms | "
        "PyTorch fwd+bwd ms | fwd+bwd ours/PyTorch |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  for length, name, f, tf, b, tb in rows:
    print(f"| {length} | {name} | {f * 1e3:.1f} | {tf * 1e3:.1f} | {tf / f:.2f} | {b * 1e3:.1f} | "
          f"{tb * 1e3:.1f} | {tb / b:.2f} |")


if __name__ == "__main__":
  main()
