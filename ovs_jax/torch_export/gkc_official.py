"""Official GKC checkpoints (detectron2 `{'model': state_dict}` of yongliu20/GKC) <-> our workdirs.

  from_official: checkpoint -> a new workdir (evaluate, predict, convert, fine-tune); the CLIP
                 architecture is read off the state dict's shapes, the head sizes too, the rest is
                 configs/gkc_r50.py.
  to_official:   a ResNet GKC workdir -> `{'model': state dict}` that the official
                 `OpenSegMaskFormerDenseTextKDSyn` loads with `strict=True`.

Names: `interchange/gkc_official.py`.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flax import nnx

from ovs_jax.interchange import gkc_official, torch_state
from ovs_jax.interchange.errors import CheckpointError

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
RECIPE = "gkc_r50.py"


def _count(sd, prefix) -> int:
  return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def clip_record(sd: dict[str, np.ndarray]) -> dict:
  """Our CLIP architecture record (`clip_family.to_record`) of the checkpoint's towers: a CLIP
  ModifiedResNet with the release's 32 attention-pool heads (clip_models.py:236, kd_clip.py:289)
  and an OpenAI text tower (QuickGELU, heads = width / 64 as CLIP's; clip_models.py:385-388)."""
  from ovs_jax.models import clip_family
  from ovs_jax.models.clip_config import openclip_text_tower
  from ovs_jax.models.modified_resnet import ModifiedResNetConfig
  from ovs_jax.models.resnet_clip import ResNetCLIPConfig
  width = sd["backbone.conv3.weight"].shape[0]
  layers = tuple(_count(sd, f"backbone.layer{i}.") for i in range(1, 5))
  pool = sd["vision_clip.attnpool.positional_embedding"].shape[0]
  embed = sd["vision_clip.attnpool.c_proj.weight"].shape[0]
  vision = ModifiedResNetConfig(layers, width, embed, 32 * math.isqrt(pool - 1), head_width=width)
  text_width = sd["text_encoder.ln_final.weight"].shape[0]
  vocab, context = (sd["text_encoder.token_embedding.weight"].shape[0],
                    sd["text_encoder.positional_embedding"].shape[0])
  text = openclip_text_tower(text_width, max(1, text_width // 64),
                             _count(sd, "text_encoder.transformer.resblocks."), "quick_gelu",
                             context=context, vocab=vocab)
  if sd["text_encoder.text_projection"].shape[1] != embed:
    raise CheckpointError(f"text embedding width {sd['text_encoder.text_projection'].shape[1]} != "
                          f"image embedding width {embed}")
  return clip_family.to_record(ResNetCLIPConfig(vision, text, embed))


def model_sizes(sd) -> dict:
  """Head sizes the state dict fixes. Heads: MASK_FORMER.NHEADS serves the decoder and the
  deformable encoder, whose attention weights are heads × 3 levels × 4 points
  (msdeformattn.py:27-36, the release fixes the points)."""
  p = "sem_seg_head.predictor."
  e = "sem_seg_head.pixel_decoder.transformer.encoder.layers.0."
  queries, hidden = sd[p + "query_feat.weight"].shape
  return dict(num_queries=queries, hidden_dim=hidden, deform_points=4,
              num_heads=sd[e + "self_attn.attention_weights.weight"].shape[0] // 12,
              dec_layers=_count(sd, p + "transformer_ffn_layers."),
              enc_layers=_count(sd, "sem_seg_head.pixel_decoder.transformer.encoder.layers."),
              dec_ffn_dim=sd[p + "transformer_ffn_layers.0.linear1.weight"].shape[0],
              enc_ffn_dim=sd["sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight"].shape[0])


def imported_config(sd, recipe: str | None = None):
  """The recipe (default configs/gkc_r50.py) with the checkpoint's head sizes."""
  from ovs_jax.config_utils import recipe_config
  name, _, variant = (recipe or RECIPE).partition(":")
  config = recipe_config(CONFIGS_DIR / name, variant)
  config.model.update(model_sizes(sd))
  config.model.dtype = "float32"
  config.clip.weights = "random"  # every weight comes from the checkpoint
  config.model.pixel_stats = "imagenet"  # the release's PIXEL_MEAN/STD (Base-COCO yaml 6-7)
  return config


def load_official(model, official, source: str) -> None:
  """Fill our GKC `model` from an official state dict, in place."""
  torch_state.import_state_dict(model, gkc_official.from_official(official, source), source=source)


def from_official(src, workdir, *, recipe: str | None = None, step: int = 0) -> Path:
  """An official GKC checkpoint -> a new workdir (see module docstring)."""
  from ovs_jax.torch_export.checkpoint import write_imported_workdir
  src = Path(src).absolute()
  official = gkc_official.read_official_checkpoint(src)
  config = imported_config(official, recipe)
  architecture = {"clip": clip_record(official)}
  return write_imported_workdir(workdir, config, architecture, step=step, source=str(src),
                                precision="float32",  # the release evaluates without AMP
                                load=lambda model: load_official(model, official, str(src)))


def to_official(checkpoint, out) -> Path:
  """A ResNet GKC workdir's checkpoint (newest, or WORKDIR/STEP) -> `out` (.pth), atomically."""
  import jax
  import torch

  from input_pipeline.datasets import dataset_meta
  from input_pipeline.vocab import load_vocabulary
  from ovs_jax import sharding
  from ovs_jax.models.resnet_clip import ResNetCLIP
  from ovs_jax.restore import restore_workdir
  from ovs_jax.torch_export.checkpoint import parse_checkpoint
  workdir, step = parse_checkpoint(checkpoint)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  config, graphdef, state, step = restore_workdir(workdir, step, mesh)
  if config.method != "gkc":
    raise CheckpointError(f"{workdir}: method {config.method!r}; `--method=gkc` converts GKC workdirs")
  model = nnx.merge(graphdef, state["params"], state["frozen"])
  if not isinstance(model.clip, ResNetCLIP):
    raise CheckpointError(f"{workdir}: a ViT GKC; the release's checkpoints hold CLIP ResNet "
                          "students (docs/gkc.md); use `convert to-torch`")
  stats = config.model.get("pixel_stats", "clip")
  if stats != "imagenet":
    raise CheckpointError(f"{workdir}: trained with model.pixel_stats={stats!r}; the release "
                          "normalises with ImageNet statistics (PIXEL_MEAN/STD), so its outputs "
                          "would differ")
  num_classes = len(load_vocabulary(dataset_meta(config.data.train, "train").vocabulary))
  sd = gkc_official.to_official(torch_state.export_state_dict(model), num_classes=num_classes,
                                void_weight=config.loss.void_weight)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  model_sd = OrderedDict((k, torch.from_numpy(np.array(v, order="C"))) for k, v in sd.items())
  model_sd._metadata = OrderedDict((k, {"version": v}) for k, v in gkc_official.MODULE_VERSIONS.items())
  torch.save({"model": model_sd, "iteration": int(step)}, tmp)
  tmp.replace(out)
  return out
