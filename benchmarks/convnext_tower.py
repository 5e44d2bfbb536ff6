"""OpenCLIP ConvNeXt image tower: ours vs PyTorch, forward and forward+backward, same CPU, same inputs.

  python benchmarks/convnext_tower.py [--arch=convnext_base_w_320] [--size=640] [--batch=2] [--repeats=2]

The PyTorch side is open_clip's own model when `open_clip` (and timm) import, else `TimmConvNeXt` below:
the same operations in the same order as timm's ConvNeXt (depthwise 7×7 conv, channels-last
LayerNorm + Linear MLP, layer scale; LayerNorm2d + 2×2 stride-2 conv downsampling; stem 4×4 conv)
and OpenCLIP's head. Both sides hold the same random weights; their outputs are compared first.
Backward: gradients of sum(embedding²) with respect to every tower parameter. Prints a table with
ours/PyTorch (>1 = we are faster).
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

from ovs_jax.interchange import torch_state
from ovs_jax.models import convnext
from ovs_jax.timing import best_time


class TimmConvNeXt(torch.nn.Module):
  """timm ConvNeXt(num_classes=0) + OpenCLIP head, parameters named as `visual.*` without the prefix."""

  def __init__(self, sd, cfg):
    super().__init__()
    self.cfg = cfg
    self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(torch.tensor(v))
                                     for k, v in sd.items()})

  def w(self, name):
    return self.p[name.replace(".", "__")]

  def ln(self, x, name):  # channels-last LayerNorm
    return F.layer_norm(x, x.shape[-1:], self.w(f"{name}.weight"), self.w(f"{name}.bias"), self.cfg.eps)

  def ln2d(self, x, name):
    return self.ln(x.permute(0, 2, 3, 1), name).permute(0, 3, 1, 2)

  def mlp(self, x, name):
    x = F.gelu(F.linear(x, self.w(f"{name}.fc1.weight"), self.w(f"{name}.fc1.bias")))
    bias = f"{name}.fc2.bias".replace(".", "__")
    return F.linear(x, self.w(f"{name}.fc2.weight"), self.p[bias] if bias in self.p else None)

  def forward(self, x):
    c = self.cfg
    x = self.ln2d(F.conv2d(x, self.w("trunk.stem.0.weight"), self.w("trunk.stem.0.bias"), stride=4), "trunk.stem.1")
    for i, dim in enumerate(c.dims):
      s = f"trunk.stages.{i}"
      if i:
        x = self.ln2d(x, f"{s}.downsample.0")
        x = F.conv2d(x, self.w(f"{s}.downsample.1.weight"), self.w(f"{s}.downsample.1.bias"), stride=2)
      for j in range(c.depths[i]):
        b = f"{s}.blocks.{j}"
        h = F.conv2d(x, self.w(f"{b}.conv_dw.weight"), self.w(f"{b}.conv_dw.bias"), padding=3, groups=dim)
        h = self.mlp(self.ln(h.permute(0, 2, 3, 1), f"{b}.norm"), f"{b}.mlp") * self.w(f"{b}.gamma")
        x = x + h.permute(0, 3, 1, 2)
    v = self.ln(x.mean(dim=(2, 3)), "trunk.head.norm")
    return F.linear(v, self.w("head.proj.weight")) if c.head == "linear" else self.mlp(v, "head.mlp")


def torch_reference(arch, sd, cfg):
  try:
    import open_clip
    model = open_clip.create_model(arch).visual.eval()
    model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    return model, "open_clip"
  except ImportError:
    return TimmConvNeXt(sd, cfg).eval(), "timm-equivalent torch module"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="convnext_base_w_320")
  p.add_argument("--size", type=int, default=640)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args()

  cfg = convnext.get_preset(args.arch)
  model = convnext.ConvNeXtImageTower(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  # Layer scale away from its 1e-6 init so every block contributes.
  for blocks in (s.blocks for s in model.trunk.stages):
    for b in blocks:
      b.gamma[...] = jnp.asarray(rng.uniform(0.1, 0.3, b.gamma.shape), jnp.float32)
  sd = torch_state.export_state_dict(model)
  ref, ref_name = torch_reference(args.arch, sd, cfg)
  px = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
  px_t, px_j = torch.from_numpy(px), jnp.asarray(px.transpose(0, 2, 3, 1))

  rows = []
  for dtype_name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
    m = nnx.eval_shape(lambda: convnext.ConvNeXtImageTower(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    torch_state.import_state_dict(m, sd)
    graphdef, params = nnx.split(m)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x).astype(jnp.float32))
    loss = lambda st, x: jnp.sum(fwd(st, x) ** 2)
    bwd = jax.jit(jax.grad(loss))
    if dtype_name == "fp32":
      with torch.no_grad():
        want = ref(px_t).numpy()
      got = np.asarray(fwd(params, px_j))
      print(f"outputs agree: max |ours - {ref_name}| = {np.abs(got - want).max():.2e} "
            f"(scale {np.abs(want).max():.2e})")
    t_fwd = best_time(lambda: fwd(params, px_j).block_until_ready(), args.repeats)
    t_bwd = best_time(lambda: jax.block_until_ready(bwd(params, px_j)), args.repeats)
    rows.append((dtype_name, t_fwd, t_bwd))
  with torch.inference_mode():
    t_torch_fwd = best_time(lambda: ref(px_t), args.repeats)

  def torch_bwd():
    ref.zero_grad(set_to_none=True)
    (ref(px_t) ** 2).sum().backward()
  t_torch_bwd = best_time(torch_bwd, args.repeats)

  print(f"\n{args.arch} image tower, {args.size}², batch {args.batch}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__} vs torch {torch.__version__} fp32 ({ref_name}, {torch.get_num_threads()} threads)")
  print("| ours dtype | ours fwd s | PyTorch fwd s | fwd ours/PyTorch | ours fwd+bwd s | PyTorch fwd+bwd s | fwd+bwd ours/PyTorch |")
  print("|------------|------------|---------------|------------------|----------------|-------------------|----------------------|")
  for name, f, b in rows:
    print(f"| {name:<10} | {f:10.2f} | {t_torch_fwd:13.2f} | {t_torch_fwd / f:16.2f} | {b:14.2f} | "
          f"{t_torch_bwd:17.2f} | {t_torch_bwd / b:20.2f} |")


if __name__ == "__main__":
  main()
