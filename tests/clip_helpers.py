"""Shared test fixtures: randomly initialised HF CLIP models (the independent reference)."""
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers

from ovs_jax.interchange import torch_state
from ovs_jax.interchange.clip_weights import abstract_clip
from ovs_jax.models import clip_config


def small_hf_config(act="quick_gelu", image_size=64, patch=16, layers=2, width=64, proj=32, heads=4):
  tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
               num_attention_heads=heads, hidden_act=act)
  return transformers.CLIPConfig(text_config=dict(tower), projection_dim=proj,
                                 vision_config=dict(tower, image_size=image_size, patch_size=patch))


def random_hf_clip(cfg, seed=0):
  torch.manual_seed(seed)
  model = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():  # break the default init symmetry (zero biases, unit norms)
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.05 * torch.randn_like(p))
  return model


def random_text_tower(width=128, heads=2, layers=2, proj=None, act="gelu", seed=0):
  """A random transformers CLIP text tower with projection (an OpenCLIP text config: mlp_ratio 4,
  eos 49407) and its OpenCLIP-named state dict."""
  torch.manual_seed(seed)
  cfg = transformers.CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                    num_attention_heads=heads, hidden_act=act, projection_dim=proj,
                                    eos_token_id=49407)
  model = transformers.CLIPTextModelWithProjection(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.05 * torch.randn_like(p))
  return model, to_openclip_names(model.state_dict())


def ours_from_hf(hf_model, **model_kw):
  cfg = clip_config.from_hf_dict(hf_model.config.to_dict())
  model = abstract_clip(cfg, **model_kw)
  sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  torch_state.import_state_dict(model, sd, ignore=r".*position_ids")
  return model


def random_inputs(batch=2, size=64, seq=12, seed=0, vocab=49408):
  rng = np.random.RandomState(seed)
  pixels = rng.randn(batch, 3, *((size, size) if isinstance(size, int) else size)).astype(np.float32)
  ids = rng.randint(1, vocab - 2, size=(batch, seq))
  ids[:, 0] = 49406
  for b in range(batch):  # EOT at different positions, zero padding after it
    end = seq - 1 - b
    ids[b, end], ids[b, end + 1:] = 49407, 0
  return pixels, ids


def nhwc(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def to_openclip_names(hf_sd):
  """HF names -> OpenCLIP names, written independently of the library's renaming table."""
  out = {}
  tower_map = {"vision_model.encoder.layers.": "visual.transformer.resblocks.",
               "text_model.encoder.layers.": "transformer.resblocks."}
  for k, v in hf_sd.items():
    v = v.numpy()
    if k.endswith("position_ids"):
      continue
    for hf_prefix, oc_prefix in tower_map.items():
      if k.startswith(hf_prefix):
        i, rest = k[len(hf_prefix):].split(".", 1)
        m = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if m:
          key = f"{oc_prefix}{i}.attn.in_proj_{m[2]}"
          out.setdefault(key, {})[m[1]] = v
          break
        rest = (rest.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
                .replace("self_attn.out_proj", "attn.out_proj").replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj"))
        out[f"{oc_prefix}{i}.{rest}"] = v
        break
    else:
      simple = {"vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
                "vision_model.embeddings.class_embedding": "visual.class_embedding",
                "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
                "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                "text_model.embeddings.position_embedding.weight": "positional_embedding",
                "logit_scale": "logit_scale"}
      if k in simple:
        out[simple[k]] = v
      elif k in ("visual_projection.weight", "text_projection.weight"):
        out["visual.proj" if k.startswith("visual") else "text_projection"] = v.T.copy()
      else:
        k = (k.replace("vision_model.pre_layrnorm", "visual.ln_pre")
             .replace("vision_model.post_layernorm", "visual.ln_post")
             .replace("text_model.final_layer_norm", "ln_final"))
        out[k] = v
  return {k: (np.concatenate([v["q"], v["k"], v["v"]]) if isinstance(v, dict) else v)
          for k, v in out.items()}


def openclip_config_of(hf_config) -> dict:
  """The `open_clip_config.json` content of an HF CLIP config (OpenCLIP's field names)."""
  v, t = hf_config.vision_config, hf_config.text_config
  return {"model_cfg": {
      "embed_dim": hf_config.projection_dim, "quick_gelu": v.hidden_act == "quick_gelu",
      "vision_cfg": {"image_size": v.image_size, "layers": v.num_hidden_layers, "width": v.hidden_size,
                     "head_width": v.hidden_size // v.num_attention_heads, "patch_size": v.patch_size,
                     "mlp_ratio": v.intermediate_size / v.hidden_size},
      "text_cfg": {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size,
                   "width": t.hidden_size, "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
                   "mlp_ratio": t.intermediate_size / t.hidden_size}}}
