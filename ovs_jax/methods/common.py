"""Pieces methods share: CLIP from config, compute dtype, frozen copies, mask targets of a batch."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.interchange import openclip
from ovs_jax.interchange.clip_weights import load_clip
from ovs_jax.models import clip_family
from ovs_jax.models.clip import CLIPBase

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"model.dtype={name!r}: expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def clip_from_config(config, architecture: dict | None = None) -> CLIPBase:
  """CLIP for a method's `build_model`. With an `architecture` record ({'clip': record of
  `models/clip_family`}): random weights in those shapes (restore fills them). Otherwise
  `config.clip.weights`: a weights path, 'random' (random `config.clip.arch`, tests) or 'demo'
  (`config.clip.arch` pre-trained on the demo dataset, built and cached on first use). For OpenCLIP
  files, `config.clip.arch` names the model when it is an OpenCLIP name (or a config JSON)."""
  c, m = config.clip, config.model
  kw = dict(dtype=compute_dtype(m.dtype), scan=m.get("scan", False), remat=m.get("remat", False))
  if architecture is not None:
    return clip_family.build_clip(clip_family.from_record(dict(architecture["clip"])),
                                  rngs=nnx.Rngs(config.seed), **kw)
  if c.weights == "demo":
    from ovs_jax.demo_clip import demo_clip_dir
    return load_clip(demo_clip_dir(arch=c.arch, seed=config.seed), **kw)
  if c.weights == "random":
    return clip_family.build_clip(clip_family.get_arch(c.arch), rngs=nnx.Rngs(config.seed), **kw)
  if not c.weights:
    raise ValueError(
        "config.clip.weights is not set: give CLIP weights with --config.clip.weights=PATH (an HF "
        "CLIP directory such as a local copy of openai/clip-vit-base-patch16, an OpenCLIP ViT "
        "state dict, or a directory written by `python -m ovs_jax.convert clip`); see docs/interchange.md, 'CLIP weights'")
  if not Path(c.weights).exists():
    raise FileNotFoundError(
        f"config.clip.weights={c.weights}: not found. Download CLIP weights on a machine with "
        "internet (e.g. `huggingface-cli download openai/clip-vit-base-patch16 --local-dir DIR`) "
        "or convert OpenCLIP weights with `python -m ovs_jax.convert clip --src=FILE --out=DIR`")
  arch = c.arch if (c.arch in openclip.known_configs() or c.arch in clip_family.OPENCLIP_PRESETS
                    or str(c.arch).endswith(".json")) else None
  return load_clip(c.weights, hidden_act=c.get("hidden_act") or None, arch=arch, **kw)


def frozen_copy(module: nnx.Module) -> nnx.Module:
  """A copy of `module` in its own buffers (a teacher: jit donates the student's), e.g. the frozen
  initial CLIP image tower of MAFT+'s RC and GKC's distillation."""
  copy = nnx.clone(module)
  nnx.update(copy, jax.tree.map(lambda x: jnp.array(x, copy=True), nnx.state(copy)))
  return copy


def mask_targets(batch, num_classes: int | None = None):
  """Loader batch -> {'labels', 'masks', 'valid'} targets; masks rebuilt on device if not shipped.

  With `num_classes` also 'pixel_valid' (B, H, W): pixels labelled with one of the classes, so the
  mask losses leave the unlabelled ones (void, padding, unseen classes) out
  (`loss.ignore_unlabelled_pixels`)."""
  classes = batch["mask_classes"]
  masks = batch.get("masks")
  if masks is None:
    masks = batch["label"][:, None].astype(jnp.int32) == classes[..., None, None]
  targets = {"labels": jnp.maximum(classes, 0), "masks": masks,
             "valid": batch["mask_valid"] & (classes >= 0)}
  if num_classes is not None:
    targets["pixel_valid"] = (batch["label"] >= 0) & (batch["label"] < num_classes)
  return targets
