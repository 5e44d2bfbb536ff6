"""The SimZSS release's checkpoints (tileb1/simzss @2142ac5) <-> our SimZSS model.

The release's `SimZSS` (src/open_clip/model.py L544) is an OpenCLIP `CustomTextCLIP`; its training
saves {"epoch", "name", "state_dict": model.state_dict() (DDP's "module." prefix), "optimizer"}
(src/training/main.py, the README's loading snippet strips "module."). Its state dict:

  visual.vit.model.*            timm vit_base_patch14_reg4_dinov2 (DVT's ViTWrapper)  -> vision (timm layout)
  visual.pos_embed, visual.denoiser.*   DVT's denoiser (when trained with one)          -> vision.denoiser
  text.*                        OpenCLIP TextTransformer (token_embedding, positional_embedding,
                                transformer.resblocks.N.*, ln_final, text_projection (w, Dv))
  logit_scale                   CLIP's
  classification_weights_ema, beta_ema, logit_scale_local   buffers: the EMA prototypes (β = 0 in
                                the release: recomputed every step), 0.0, log(1/0.07); not used
                                at inference, not imported; `to-official` writes them back.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ovs_jax.interchange import clip_keys, torch_state
from ovs_jax.interchange import dinov2 as dinov2_io
from ovs_jax.interchange.errors import CheckpointError

VISION = "visual.vit.model."
DVT_KEYS = ("visual.pos_embed", "visual.denoiser.")
BUFFERS = ("classification_weights_ema", "beta_ema", "logit_scale_local")


def unwrap(obj) -> dict[str, np.ndarray]:
  """A loaded release checkpoint ({"state_dict": ...} or a bare state dict) -> names without
  DDP's "module." prefix."""
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  return {k.removeprefix("module."): np.asarray(v) for k, v in obj.items()}


def architecture(sd: dict[str, np.ndarray], text_heads: int | None = None) -> dict:
  """Our `architecture_record` from the shapes (heads: width / 64 as OpenCLIP's 512-wide tower's 8
  unless given; the ViT is vit_base_patch14_reg4_dinov2 with the file's depth and grid)."""
  from ovs_jax.models import dinov2
  from ovs_jax.models.clip_config import TowerConfig
  if "text.token_embedding.weight" not in sd or VISION + "cls_token" not in sd:
    raise CheckpointError("not a SimZSS release checkpoint: expected 'text.token_embedding.weight' and "
                          f"'{VISION}cls_token' (src/open_clip/model.py SimZSS)")
  width = sd["text.token_embedding.weight"].shape[1]
  layers = len({k.split(".")[3] for k in sd if k.startswith("text.transformer.resblocks.")})
  depth = len({k.split(".")[4] for k in sd if k.startswith(VISION + "blocks.")})
  cfg = dinov2.get_preset("vit_base_patch14_reg4_dinov2")
  grid = int(round(sd[VISION + "pos_embed"].shape[1] ** 0.5))
  cfg = dataclasses.replace(cfg, num_hidden_layers=depth, image_size=grid * cfg.patch_size,
                            dvt_denoiser="visual.pos_embed" in sd)
  text = TowerConfig(width, 4 * width, layers, text_heads or max(width // 64, 1), "gelu")
  return {"vision": {"tower": "dinov2", "config": dataclasses.asdict(cfg)},
          "text": dataclasses.asdict(text)}


def to_ours(model, sd: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
  """Release names -> our PyTorch-layout names for `model` (checked against its shapes)."""
  vision = {k[len(VISION):]: v for k, v in sd.items() if k.startswith(VISION)}
  out = {f"vision.{k}": v for k, v in dinov2_io.backbone_state(model.vision, vision, source=source).items()}
  if "visual.pos_embed" in sd:
    dvt = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith(DVT_KEYS)}
    out.update({f"vision.{k}": v for k, v in dinov2_io.denoiser_state(model.vision, dvt, source=source).items()})
  text = {k.removeprefix("text."): v for k, v in sd.items() if k.startswith("text.")}
  out.update(clip_keys.openclip_to_hf(text))
  out["logit_scale"] = np.asarray(sd["logit_scale"], np.float32).reshape(())
  known = (VISION, "text.", "logit_scale", *DVT_KEYS, *BUFFERS)
  unexpected = sorted(k for k in sd if not k.startswith(known))
  if unexpected:
    raise CheckpointError(f"{source}: keys the SimZSS release does not have: {unexpected[:8]}")
  return out


def load(model, sd: dict[str, np.ndarray], source: str = "checkpoint") -> None:
  """Import a release state dict into our SimZSS `model` in place."""
  torch_state.import_state_dict(model, to_ours(model, sd, source), source=source)


def to_official(model, n_classes: int = 574) -> dict[str, np.ndarray]:
  """Our SimZSS -> the release's state dict (with its buffers at their training values: EMA
  prototypes zero, β 0, local scale log(1/0.07)); `n_classes` as its main.py counts the bank file's
  lines (574)."""
  ours = torch_state.export_state_dict(model)
  out = {f"{VISION}{k}": v for k, v in _timm_vision(model).items()}
  if model.vision.denoiser is not None:
    out.update({f"visual.{k}": v for k, v in dinov2_io.export_denoiser(model.vision).items()})
  text = {k: v for k, v in ours.items() if k.startswith(("text_model.", "text_projection."))}
  out.update({f"text.{k}": v for k, v in clip_keys.hf_to_openclip(text).items()})
  out["logit_scale"] = ours["logit_scale"].reshape(())
  d = ours["text_projection.weight"].shape[0]
  out["classification_weights_ema"] = np.zeros((n_classes + 1, d), np.float32)
  out["beta_ema"] = np.zeros((), np.float32)
  out["logit_scale_local"] = np.full((1,), np.log(1 / 0.07), np.float32)
  return out


def _timm_vision(model) -> dict[str, np.ndarray]:
  """Our DINOv2 tower in timm's layout (the inverse of interchange/dinov2.py's timm import)."""
  hf = dinov2_io.export_hf_state_dict(model.vision)
  out = {}
  for k, v in hf.items():
    if k == "embeddings.mask_token":
      continue  # timm's model has none
    if k == "embeddings.cls_token":
      out["cls_token"] = v + hf["embeddings.position_embeddings"][:, :1]  # timm folds the class slot in
    elif k == "embeddings.register_tokens":
      out["reg_token"] = v
    elif k == "embeddings.position_embeddings":
      out["pos_embed"] = v[:, 1:]
    elif k.startswith("embeddings.patch_embeddings.projection."):
      out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
    elif k.startswith("layernorm."):
      out["norm." + k.rsplit(".", 1)[1]] = v
    else:
      n, rest = k.split(".")[2], ".".join(k.split(".")[3:])
      for a, b in (("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
                   ("attention.o_proj.", "attn.proj."), ("mlp.", "mlp."), ("norm1.", "norm1."),
                   ("norm2.", "norm2.")):
        if rest.startswith(a):
          out[f"blocks.{n}.{b}{rest[len(a):]}"] = v
          break
      else:
        m = rest.startswith("attention.") and rest.split(".")[1]
        if m in ("q_proj", "k_proj", "v_proj"):
          kind = rest.rsplit(".", 1)[1]
          key = f"blocks.{n}.attn.qkv.{kind}"
          if key not in out:
            out[key] = np.concatenate([hf[f"encoder.layer.{n}.attention.{p}_proj.{kind}"] for p in "qkv"], 0)
        else:
          raise CheckpointError(f"no timm name for {k}")
  return out
