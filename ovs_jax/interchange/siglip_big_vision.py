"""SigLIP weights in big_vision's layout <-> transformers' `SiglipModel` names (ours), both ways.

big_vision's two-tower checkpoints (`.npz`, keys "params/img/...", "params/txt/...", "params/t",
"params/b"; `big_vision/models/proj/image_text/two_towers.py:76-86`) hold the image ViT
(`big_vision/models/vit.py`: `embedding` conv, `pos_embedding` (1, N, D), `Transformer/encoderblock_i`
or a scanned `Transformer/encoderblock` with a leading layer axis, `encoder_norm`, `MAPHead_0`) and
the text transformer (`text_transformer.py:55-99`: `Embed_0`, `pos_embedding`, `Encoder_0`, `head`).
Attention kernels are Flax `MultiHeadDotProductAttention`'s: query/key/value (D, heads, hd), out
(heads, hd, D); Dense kernels (in, out). The architecture is read off the shapes (heads included).
"""
from __future__ import annotations

import re

import numpy as np

from ovs_jax.interchange.errors import CheckpointError

_LN = {"scale": "weight", "bias": "bias"}


def _block_to_hf(prefix: str, p: dict, out: dict):
  """One encoder block's big_vision leaves {relative name: array} -> HF names under `prefix`."""
  for i, ln in ((0, "layer_norm1"), (1, "layer_norm2")):
    for k, v in _LN.items():
      out[f"{prefix}.{ln}.{v}"] = p[f"LayerNorm_{i}/{k}"]
  att = "MultiHeadDotProductAttention_0"
  for bv, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    k = p[f"{att}/{bv}/kernel"]
    out[f"{prefix}.self_attn.{hf}.weight"] = k.reshape(k.shape[0], -1).T
    out[f"{prefix}.self_attn.{hf}.bias"] = p[f"{att}/{bv}/bias"].reshape(-1)
  k = p[f"{att}/out/kernel"]
  out[f"{prefix}.self_attn.out_proj.weight"] = k.reshape(-1, k.shape[-1]).T
  out[f"{prefix}.self_attn.out_proj.bias"] = p[f"{att}/out/bias"]
  for i, fc in ((0, "fc1"), (1, "fc2")):
    out[f"{prefix}.mlp.{fc}.weight"] = p[f"MlpBlock_0/Dense_{i}/kernel"].T
    out[f"{prefix}.mlp.{fc}.bias"] = p[f"MlpBlock_0/Dense_{i}/bias"]


def _blocks(params: dict, tower: str) -> list[dict]:
  """The encoder blocks of `tower` ("img/Transformer" or "txt/Encoder_0") as relative-name dicts,
  unstacking a scanned `encoderblock`."""
  stacked = {k[len(f"{tower}/encoderblock/"):]: v for k, v in params.items()
             if k.startswith(f"{tower}/encoderblock/")}
  if stacked:
    n = next(iter(stacked.values())).shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]
  ids = sorted({int(m[1]) for k in params if (m := re.match(rf"{re.escape(tower)}/encoderblock_(\d+)/", k))})
  return [{k[len(f"{tower}/encoderblock_{i}/"):]: v for k, v in params.items()
           if k.startswith(f"{tower}/encoderblock_{i}/")} for i in ids]


def big_vision_to_hf(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{"params/img/...": array, ...} (the `params/` prefix optional) -> HF `SiglipModel` names."""
  p = {k.removeprefix("params/"): np.asarray(v) for k, v in params.items()}
  missing = [k for k in ("img/embedding/kernel", "txt/Embed_0/embedding", "t") if k not in p]
  if missing:
    raise CheckpointError(f"not a big_vision SigLIP two-tower checkpoint: no {', '.join(missing)} "
                          f"(keys start {sorted(p)[:4]})")
  out = {}
  v, t = "vision_model", "text_model"
  k = p["img/embedding/kernel"]
  out[f"{v}.embeddings.patch_embedding.weight"] = k.transpose(3, 2, 0, 1)
  out[f"{v}.embeddings.patch_embedding.bias"] = p["img/embedding/bias"]
  out[f"{v}.embeddings.position_embedding.weight"] = p["img/pos_embedding"].reshape(-1, k.shape[-1])
  for i, blk in enumerate(_blocks(p, "img/Transformer")):
    _block_to_hf(f"{v}.encoder.layers.{i}", blk, out)
  for a, b in _LN.items():
    out[f"{v}.post_layernorm.{b}"] = p[f"img/Transformer/encoder_norm/{a}"]
  m = "img/MAPHead_0"
  out[f"{v}.head.probe"] = p[f"{m}/probe"]
  att = f"{m}/MultiHeadDotProductAttention_0"
  out[f"{v}.head.attention.in_proj_weight"] = np.concatenate(
      [p[f"{att}/{n}/kernel"].reshape(p[f"{att}/{n}/kernel"].shape[0], -1).T for n in ("query", "key", "value")])
  out[f"{v}.head.attention.in_proj_bias"] = np.concatenate(
      [p[f"{att}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")])
  ko = p[f"{att}/out/kernel"]
  out[f"{v}.head.attention.out_proj.weight"] = ko.reshape(-1, ko.shape[-1]).T
  out[f"{v}.head.attention.out_proj.bias"] = p[f"{att}/out/bias"]
  for a, b in _LN.items():
    out[f"{v}.head.layernorm.{b}"] = p[f"{m}/LayerNorm_0/{a}"]
  for i, fc in ((0, "fc1"), (1, "fc2")):
    out[f"{v}.head.mlp.{fc}.weight"] = p[f"{m}/MlpBlock_0/Dense_{i}/kernel"].T
    out[f"{v}.head.mlp.{fc}.bias"] = p[f"{m}/MlpBlock_0/Dense_{i}/bias"]
  emb = p["txt/Embed_0/embedding"]
  out[f"{t}.embeddings.token_embedding.weight"] = emb
  out[f"{t}.embeddings.position_embedding.weight"] = p["txt/pos_embedding"].reshape(-1, emb.shape[-1])
  for i, blk in enumerate(_blocks(p, "txt/Encoder_0")):
    _block_to_hf(f"{t}.encoder.layers.{i}", blk, out)
  for a, b in _LN.items():
    out[f"{t}.final_layer_norm.{b}"] = p[f"txt/Encoder_0/encoder_norm/{a}"]
  out[f"{t}.head.weight"] = p["txt/head/kernel"].T
  out[f"{t}.head.bias"] = p["txt/head/bias"]
  out["logit_scale"] = p["t"].reshape(1)
  out["logit_bias"] = p["b"].reshape(1) if "b" in p else np.zeros(1, np.float32)
  return out


def _block_from_hf(prefix: str, sd: dict, heads: int, out: dict, dst: str):
  for i, ln in ((0, "layer_norm1"), (1, "layer_norm2")):
    for k, v in _LN.items():
      out[f"{dst}/LayerNorm_{i}/{k}"] = sd[f"{prefix}.{ln}.{v}"]
  att = f"{dst}/MultiHeadDotProductAttention_0"
  for bv, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    w = sd[f"{prefix}.self_attn.{hf}.weight"]
    out[f"{att}/{bv}/kernel"] = w.T.reshape(w.shape[1], heads, -1)
    out[f"{att}/{bv}/bias"] = sd[f"{prefix}.self_attn.{hf}.bias"].reshape(heads, -1)
  w = sd[f"{prefix}.self_attn.out_proj.weight"]
  out[f"{att}/out/kernel"] = w.T.reshape(heads, -1, w.shape[0])
  out[f"{att}/out/bias"] = sd[f"{prefix}.self_attn.out_proj.bias"]
  for i, fc in ((0, "fc1"), (1, "fc2")):
    out[f"{dst}/MlpBlock_0/Dense_{i}/kernel"] = sd[f"{prefix}.mlp.{fc}.weight"].T
    out[f"{dst}/MlpBlock_0/Dense_{i}/bias"] = sd[f"{prefix}.mlp.{fc}.bias"]


def hf_to_big_vision(sd: dict[str, np.ndarray], vision_heads: int, text_heads: int) -> dict[str, np.ndarray]:
  """Inverse of `big_vision_to_hf` (keys with the "params/" prefix, unscanned blocks); the head
  counts are not in the HF tensors' shapes."""
  sd = {k: np.asarray(v) for k, v in sd.items()}
  out = {}
  v, t = "vision_model", "text_model"
  w = sd[f"{v}.embeddings.patch_embedding.weight"]
  out["img/embedding/kernel"] = w.transpose(2, 3, 1, 0)
  out["img/embedding/bias"] = sd[f"{v}.embeddings.patch_embedding.bias"]
  out["img/pos_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"][None]
  n = lambda tower: len({k.split(".")[3] for k in sd if k.startswith(f"{tower}.encoder.layers.")})
  for i in range(n(v)):
    _block_from_hf(f"{v}.encoder.layers.{i}", sd, vision_heads, out, f"img/Transformer/encoderblock_{i}")
  for a, b in _LN.items():
    out[f"img/Transformer/encoder_norm/{a}"] = sd[f"{v}.post_layernorm.{b}"]
  m = "img/MAPHead_0"
  out[f"{m}/probe"] = sd[f"{v}.head.probe"]
  att = f"{m}/MultiHeadDotProductAttention_0"
  w, bias = sd[f"{v}.head.attention.in_proj_weight"], sd[f"{v}.head.attention.in_proj_bias"]
  for n_, wi, bi in zip(("query", "key", "value"), np.split(w, 3), np.split(bias, 3)):
    out[f"{att}/{n_}/kernel"] = wi.T.reshape(wi.shape[1], vision_heads, -1)
    out[f"{att}/{n_}/bias"] = bi.reshape(vision_heads, -1)
  w = sd[f"{v}.head.attention.out_proj.weight"]
  out[f"{att}/out/kernel"] = w.T.reshape(vision_heads, -1, w.shape[0])
  out[f"{att}/out/bias"] = sd[f"{v}.head.attention.out_proj.bias"]
  for a, b in _LN.items():
    out[f"{m}/LayerNorm_0/{a}"] = sd[f"{v}.head.layernorm.{b}"]
  for i, fc in ((0, "fc1"), (1, "fc2")):
    out[f"{m}/MlpBlock_0/Dense_{i}/kernel"] = sd[f"{v}.head.mlp.{fc}.weight"].T
    out[f"{m}/MlpBlock_0/Dense_{i}/bias"] = sd[f"{v}.head.mlp.{fc}.bias"]
  out["txt/Embed_0/embedding"] = sd[f"{t}.embeddings.token_embedding.weight"]
  out["txt/pos_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"][None]
  for i in range(n(t)):
    _block_from_hf(f"{t}.encoder.layers.{i}", sd, text_heads, out, f"txt/Encoder_0/encoderblock_{i}")
  for a, b in _LN.items():
    out[f"txt/Encoder_0/encoder_norm/{a}"] = sd[f"{t}.final_layer_norm.{b}"]
  out["txt/head/kernel"] = sd[f"{t}.head.weight"].T
  out["txt/head/bias"] = sd[f"{t}.head.bias"]
  out["t"], out["b"] = sd["logit_scale"].reshape(1), sd["logit_bias"].reshape(1)
  return {f"params/{k}": v for k, v in out.items()}


def config_from_big_vision(params: dict[str, np.ndarray]):
  """The `SiglipConfig` a big_vision checkpoint's shapes describe (heads from the attention kernels)."""
  from ovs_jax.models.clip_config import TowerConfig
  from ovs_jax.models.siglip import SiglipConfig
  sd = big_vision_to_hf(params)
  p = {k.removeprefix("params/"): np.asarray(v) for k, v in params.items()}

  def tower(blocks, **kw):
    b = _blocks(p, blocks)
    q = b[0]["MultiHeadDotProductAttention_0/query/kernel"]
    return TowerConfig(hidden_size=q.shape[0], num_attention_heads=q.shape[1], num_hidden_layers=len(b),
                       intermediate_size=b[0]["MlpBlock_0/Dense_0/kernel"].shape[1],
                       hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, **kw)
  patch = sd["vision_model.embeddings.patch_embedding.weight"].shape[-1]
  grid = int(round(sd["vision_model.embeddings.position_embedding.weight"].shape[0] ** 0.5))
  vocab, _ = sd["text_model.embeddings.token_embedding.weight"].shape
  ctx = sd["text_model.embeddings.position_embedding.weight"].shape[0]
  return SiglipConfig(vision=tower("img/Transformer", patch_size=patch, image_size=grid * patch),
                      text=tower("txt/Encoder_0", vocab_size=vocab, max_position_embeddings=ctx))


def load_big_vision_siglip(path, **model_kw):
  """A big_vision SigLIP `.npz` -> our `Siglip` with its weights."""
  from ovs_jax.interchange import torch_state
  from ovs_jax.models.siglip import abstract_siglip
  with np.load(path, allow_pickle=False) as f:
    params = dict(f)
  model = abstract_siglip(config_from_big_vision(params), **model_kw)
  torch_state.import_state_dict(model, big_vision_to_hf(params), source=str(path))
  return model
