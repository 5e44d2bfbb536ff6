"""Seconds per MAFT+ training step (cdt_vitb, full size), split into its parts, on this machine.

  python benchmarks/train_step.py [--size=640] [--batch=2] [--dtype=bfloat16] [--remat=auto]
                                  [--repeats=2] [--config_arg=] [--backbone_only]

Times (best of --repeats, after compilation) the whole jitted train step and, separately jitted,
its parts: student backbone forward+backward, frozen teacher forward, pyramid + mask head
forward+backward, Hungarian matching (all 10 prediction sets), and the losses. The backbone is also
timed in PyTorch (transformers' CLIPVisionModel, same size, forward+backward) as the reference.
Random weights; parts do not sum exactly to the step (XLA fuses across them).

--remat: 'off' (the config as it is), 'on' (config.model.scan=remat=True: CLIP layers scanned and
recomputed in the backward pass, and the head's pixel decoder too where the method passes `remat`
on), or 'auto': 'off' if the compiled step fits in memory, else 'on'. "Fits" is judged before
running, from XLA's memory_analysis of the compiled step; the numbers are printed.
"""
import argparse
import gc
import os
import sys

# Run as a script, benchmarks/ comes first on sys.path and its input_pipeline.py would shadow the
# package; the repository root (for configs/) takes its place.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
from flax import nnx

from configs.cdt_vitb import get_config
from ovs_jax.heads.mask_former import prediction_sets
from ovs_jax.losses.matching import hungarian_matcher
from ovs_jax import layers
from ovs_jax.methods import maft_plus
from ovs_jax.trainer import Run
from ovs_jax.timing import best_time



def torch_backbone(cfg, size, batch, repeats):
  import torch
  import transformers
  from ovs_jax.models.clip_config import to_hf_dict
  v = to_hf_dict(cfg)["vision_config"]
  model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**v))
  x = torch.randn(batch, 3, size, size)

  def step():
    model.zero_grad()
    out = model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
    out.float().square().mean().backward()
  return best_time(step, repeats)


GiB = 2**30
# Share of RAM the compiled step may need: the benchmark also holds a second copy of the train
# state, the parts' outputs, and afterwards the PyTorch reference.
MEMORY_FRACTION = 0.8


def step_memory(compiled):
  """(temp bytes, bytes of arguments and outputs) the compiled step needs, without running it."""
  m = compiled.memory_analysis()
  return m.temp_size_in_bytes, m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def build(args, remat):
  """Run (model, state, data) for the benchmark settings, one batch and the compiled train step."""
  config = get_config(args.config_arg)
  config.clip.weights = "random"
  config.model.dtype = args.dtype
  if remat:
    config.model.update(scan=True, remat=True)
  config.data.update(train="demo", crop_size=args.size, worker_count=0)
  config.evals = {}
  config.train.batch_size = args.batch
  config.mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  run = Run(config, "/tmp/ovs_jax_bench_train_step")
  batch, _ = next(run.data)
  return run, batch, run.train_step.lower(run.state, batch, run.context).compile()


def choose(args):
  """The first of the --remat settings whose compiled step fits in memory; prints why."""
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  budget = MEMORY_FRACTION * ram
  settings = {"off": [False], "on": [True], "auto": [False, True]}[args.remat]
  lines = []
  for remat in settings:
    run, batch, compiled = build(args, remat)
    temp, io = step_memory(compiled)
    fits = temp + io <= budget
    verdict = "used" if fits else "used anyway (none fits)" if remat == settings[-1] else "rejected"
    lines.append(f"  remat {'on' if remat else 'off'}: temp {temp / GiB:.2f} GiB + state/batch "
                 f"{io / GiB:.2f} GiB = {(temp + io) / GiB:.2f} GiB "
                 f"{'<=' if fits else '>'} {budget / GiB:.1f} GiB -> {verdict}")
    if verdict != "rejected":
      return run, batch, compiled, remat, lines
    del run, batch, compiled
    gc.collect()  # Run holds reference cycles; free its state before building the next


def backbone_loss_fn(merged):
  def loss(p, x):
    m = merged(p)
    trunk = m.clip.trunk_features(x)
    return jnp.mean(trunk.astype(jnp.float32) ** 2) + jnp.mean(m.clip.image_head(trunk).astype(jnp.float32) ** 2)
  return loss


def backbone_only(args):
  """The student backbone fwd+bwd row and the PyTorch reference, without building the train step."""
  config = get_config(args.config_arg)
  config.clip.weights = "random"
  config.model.dtype = args.dtype
  config.model.scan = args.scan
  model = maft_plus.METHOD.build_model(config)
  layers.set_attention(model, config.model.attention)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pixels = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3))
  grad = jax.jit(jax.grad(backbone_loss_fn(lambda p: nnx.merge(graphdef, p, rest))))
  ours = best_time(lambda: grad(params, pixels), args.repeats)
  ref = torch_backbone(model.clip.config, args.size, args.batch, args.repeats)
  print(f"\nCLIP backbone of MAFT+ {args.config_arg or 'cdt_vitb'}, fwd+bwd, {args.size}x{args.size}, "
        f"batch {args.batch}, {args.dtype} compute, attention {config.model.attention!r}, "
        f"{'layers scanned' if args.scan else 'layers unrolled'}, "
        f"{os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}, jax {jax.__version__}")
  print("| part | seconds | images/s |")
  print("|---|---:|---:|")
  print(f"| student backbone fwd+bwd | {ours:.2f} | {args.batch / ours:.2f} |")
  print(f"| reference: PyTorch CLIP ViT backbone fwd+bwd (fp32) | {ref:.2f} | {args.batch / ref:.2f} |")
  print(f"backbone fwd+bwd ours/PyTorch: {ref / ours:.2f}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", type=int, default=640)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--config_arg", default="")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--remat", default="auto", choices=("auto", "off", "on"))
  p.add_argument("--scan", action="store_true",
                 help="with --backbone_only: CLIP layers under one lax.scan (config.model.scan)")
  p.add_argument("--backbone_only", action="store_true",
                 help="only the student backbone fwd+bwd and its PyTorch reference (no train step built)")
  args = p.parse_args()
  if args.backbone_only:
    return backbone_only(args)

  run, batch, step, remat, memory_lines = choose(args)
  text, index = run.context
  model = nnx.merge(run.graphdef, run.state["params"], run.state["frozen"])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  merged = lambda p: nnx.merge(graphdef, p, rest)
  pixels = batch["image"]
  targets = maft_plus.targets_from_batch(batch)
  rng = jax.random.PRNGKey(0)
  c = run.config.loss
  rows = []

  def timed(name, f, *f_args):
    """Times a part jitted on its inputs as arguments (closed-over arrays would be folded as
    constants at compile time); records its XLA temp memory."""
    compiled = jax.jit(f).lower(*f_args).compile()
    seconds = best_time(lambda: compiled(*f_args), args.repeats)
    rows.append((name, seconds, compiled.memory_analysis().temp_size_in_bytes))

  state = jax.tree.map(jnp.copy, run.state)  # the step donates its input

  def whole():
    nonlocal state
    state, m = step(state, batch, run.context)
    return m["loss"]
  rows.append(("whole train step", best_time(whole, args.repeats), step_memory(step)[0]))

  timed("student backbone fwd+bwd", jax.grad(backbone_loss_fn(merged)), params, pixels)

  teacher_fn = lambda p, x: merged(p).teacher_trunk(x)
  timed("teacher fwd (frozen)", teacher_fn, params, pixels)

  grid = jax.jit(lambda p, x: merged(p).clip.trunk_features(x))(params, pixels)

  def head_loss(p, grid, text, index):
    m = merged(p)
    out = m.head(m.pyramid(grid), lambda s, f: m.in_vocab_logits(s, f, text, index))
    return sum(jnp.mean(s["pred_masks"].astype(jnp.float32) ** 2) + jnp.mean(s["pred_logits"] ** 2)
               for s in prediction_sets(out))
  timed("pyramid + mask head fwd+bwd", jax.grad(head_loss), params, grid, text, index)

  out = jax.jit(lambda p, x, t, i: merged(p)(x, t, i))(params, pixels, text, index)
  sets = prediction_sets(out)

  def match(sets, targets, rng):
    return [hungarian_matcher(rng, s["pred_logits"], s["pred_masks"], targets, c.num_points,
                              c.class_weight, c.mask_weight, c.dice_weight) for s in sets]
  timed(f"Hungarian matching ({len(sets)} sets)", match, sets, targets, rng)

  teacher = jax.jit(teacher_fn)(params, pixels)

  def losses(o, targets, teacher, rng):
    return maft_plus.loss_terms(o, targets, teacher, rng, c)[0]
  timed("losses fwd+bwd (incl. matching)", jax.grad(losses), out, targets, teacher, rng)

  ref = torch_backbone(model.clip.config, args.size, args.batch, args.repeats)
  m = run.config.model
  print(f"\nMAFT+ {args.config_arg or 'cdt_vitb'} train step, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.dtype} compute, remat {'on' if remat else 'off'} (model.scan={m.scan}, "
        f"model.remat={m.remat}), {os.cpu_count()} CPU cores, jax {jax.__version__}")
  # Other processes on the cores slow every row; the load (ours ≈ cores) shows if there were any.
  print("load average 1/5/15 min at the end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
  print(f"Peak memory of the compiled step (XLA memory_analysis), against {MEMORY_FRACTION:.0%} of RAM:")
  print("\n".join(memory_lines))
  print("| part | seconds | images/s | XLA temp GiB |")
  print("|---|---:|---:|---:|")
  for name, s, temp in rows:
    print(f"| {name} | {s:.2f} | {args.batch / s:.2f} | {temp / GiB:.2f} |")
  print(f"| reference: PyTorch CLIP ViT backbone fwd+bwd (fp32) | {ref:.2f} | {args.batch / ref:.2f} | – |")


if __name__ == "__main__":
  main()
