"""MAFT+ inference in plain PyTorch, for models exported by `python -m ovs_jax.convert to-torch`.

Written from the model description (docs/maft_plus.md) and mirroring `ovs_jax.methods.maft_plus`
module by module, so the exported `model.safetensors` loads with `load_state_dict` one to one:
every torch attribute path is the JAX attribute path, with PyTorch layouts (Linear `[out, in]`,
Conv OIHW, ConvTranspose IOHW, LayerNorm/GroupNorm `weight`).

The CLIP image tower is a small self-contained ViT here (no `transformers` needed at inference);
the text tower is only needed for new vocabularies: the export's `clip/` directory is an HF
`CLIPModel`, and `build_text_classifier` computes classifier embeddings with it. Only torch,
numpy and safetensors are imported, so this file can be copied on its own into a PyTorch project.

  model = MAFTPlusTorch.from_export("export_dir").eval()
  text, synonym_index, names = load_text_classifier("export_dir")   # the training vocabulary
  scores = model.segment(pixels, text, synonym_index)   # pixels (B, 3, H, W), CLIP-normalised
  labels = scores.argmax(1)                              # (B, H, W)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
  from ovs_jax.interchange.errors import CheckpointError
except ImportError:  # used standalone
  class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the model."""

FORMAT = "ovs_jax.maft_plus"
# Keys of the export the inference module does not use (text tower: see `build_text_classifier`).
UNUSED_PREFIXES = ("clip.text_model.", "clip.text_projection.", "teacher.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "gelu": F.gelu}


# ---------------------------------------------------------------- functions

def l2_normalize(x, eps=1e-12):
  return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps * eps))


def resize(x, size):
  """Bilinear NCHW resize, half-pixel centres, no antialiasing."""
  return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def mask_pool(features, mask_logits):
  """features (B, h, w, C), mask logits (B, Q, H, W) -> (B, Q, C): average under mask > 0 (FC-CLIP)."""
  if tuple(mask_logits.shape[2:]) != tuple(features.shape[1:3]):
    mask_logits = resize(mask_logits, features.shape[1:3])
  m = (mask_logits > 0).float()
  m = m / (m.sum((2, 3), keepdim=True) + 1e-8)
  return torch.einsum("bhwc,bqhw->bqc", features, m)


def sine_position_encoding(height, width, dim, offset=0.0, temperature=10000.0):
  """(H, W, dim): [sin/cos of y, sin/cos of x], coordinates (i − offset)/size·2π for i = 1..size.

  MAFT+ uses offset 0 (DETR's normalize=True: last row/column at 2π) in the mask head and CDT.
  """
  feats, eps = dim // 2, 1e-6
  y = (torch.arange(1, height + 1, dtype=torch.float32) - offset) / (height + eps) * 2 * math.pi
  x = (torch.arange(1, width + 1, dtype=torch.float32) - offset) / (width + eps) * 2 * math.pi
  dim_t = temperature ** (2 * (torch.arange(feats) // 2) / feats)
  even = torch.arange(feats) % 2 == 0

  def encode(t):
    a = t[:, None] / dim_t
    return torch.where(even, a.sin(), a.cos())
  py = encode(y)[:, None].expand(height, width, feats)
  px = encode(x)[None].expand(height, width, feats)
  return torch.cat([py, px], -1)


def max_over_synonyms(logits, synonym_index):
  """(..., S) synonym logits -> (..., C): max over each class's rows (index -1 = padding)."""
  gathered = logits[..., synonym_index.clamp(min=0)]  # (..., C, K)
  return gathered.masked_fill(synonym_index < 0, float("-inf")).amax(-1)


def multi_scale_deformable_attention(value, shapes, locations, weights):
  """Deformable DETR's sampling core through `grid_sample` (align_corners=False, zero padding).

  value (B, S, nH, Dh); locations (B, Lq, nH, nL, nP, 2) normalised (x, y) in [0, 1];
  weights (B, Lq, nH, nL, nP) -> (B, Lq, nH·Dh).
  """
  b, _, nh, dh = value.shape
  _, lq, _, nl, npt, _ = locations.shape
  levels = value.split([h * w for h, w in shapes], dim=1)
  samples = []
  for lvl, (h, w) in enumerate(shapes):
    v = levels[lvl].permute(0, 2, 3, 1).reshape(b * nh, dh, h, w)
    grid = 2 * locations[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(b * nh, lq, npt, 2) - 1
    samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
  sampled = torch.stack(samples, dim=-2).flatten(-2)  # (B·nH, Dh, Lq, nL·nP)
  w = weights.permute(0, 2, 1, 3, 4).reshape(b * nh, 1, lq, nl * npt)
  return (sampled * w).sum(-1).reshape(b, nh * dh, lq).transpose(1, 2)


def _attention(mod, q, k, v, num_heads, mask=None):
  """Multi-head attention with `mod.{q,k,v,out}_proj`; mask (B, 1, Lq, Lk) bool, True = attend."""
  b, lq, c = q.shape
  split = lambda t: t.reshape(b, t.shape[1], num_heads, c // num_heads).transpose(1, 2)
  o = F.scaled_dot_product_attention(split(mod.q_proj(q)), split(mod.k_proj(k)), split(mod.v_proj(v)),
                                     attn_mask=mask)
  return mod.out_proj(o.transpose(1, 2).reshape(b, lq, c))


def _channels_last(norm, x):
  """A LayerNorm over the channels of an NCHW map."""
  return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- shared layers

class Attention(nn.Module):

  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

  def forward(self, q, k, v, mask=None):
    return _attention(self, q, k, v, self.num_heads, mask)


class MLP(nn.Module):
  """`num_layers` Linear layers with ReLU between them."""

  def __init__(self, din, dhidden, dout, num_layers):
    super().__init__()
    dims = [din] + [dhidden] * (num_layers - 1) + [dout]
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = F.relu(x)
    return x


class Sequential(nn.Module):
  """Like nn.Sequential, but named `layers.{i}` as Flax NNX names it."""

  def __init__(self, *layers):
    super().__init__()
    self.layers = nn.ModuleList(layers)

  def forward(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


# ---------------------------------------------------------------- CLIP image tower

class ClipEncoderLayer(nn.Module):

  def __init__(self, c):
    super().__init__()
    d = c["hidden_size"]
    self.num_heads, self.act = c["num_attention_heads"], ACTIVATIONS[c["hidden_act"]]
    self.layer_norm1 = nn.LayerNorm(d, eps=c["layer_norm_eps"])
    self.self_attn = Attention(d, self.num_heads)
    self.layer_norm2 = nn.LayerNorm(d, eps=c["layer_norm_eps"])
    self.mlp = nn.Module()
    self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, c["intermediate_size"]), nn.Linear(c["intermediate_size"], d)

  def forward(self, x):
    h = self.layer_norm1(x)
    x = x + self.self_attn(h, h, h)
    return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class ClipVisionEmbeddings(nn.Module):

  def __init__(self, c):
    super().__init__()
    d, p = c["hidden_size"], c["patch_size"]
    self.patch_embedding = nn.Conv2d(3, d, p, stride=p, bias=False)
    self.class_embedding = nn.Parameter(torch.zeros(d))
    self.position_embedding = nn.Embedding((c["image_size"] // p) ** 2 + 1, d)

  def forward(self, pixels):
    """(B, 3, H, W) -> tokens (B, 1 + h·w, D), grid (h, w)."""
    x = self.patch_embedding(pixels)
    b, d, h, w = x.shape
    pos = self.position_embedding.weight
    g = int(round((pos.shape[0] - 1) ** 0.5))
    patches = pos[1:]
    if (h, w) != (g, g):  # bicubic, a=-0.75, align_corners=False: as HF interpolate_pos_encoding
      grid = patches.reshape(1, g, g, d).permute(0, 3, 1, 2)
      patches = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
      patches = patches.permute(0, 2, 3, 1).reshape(h * w, d)
    tokens = torch.cat([self.class_embedding.expand(b, 1, d), x.flatten(2).transpose(1, 2)], 1)
    return tokens + torch.cat([pos[:1], patches])[None], (h, w)


class ClipVisionTransformer(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.embeddings = ClipVisionEmbeddings(c)
    self.pre_layrnorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
    self.encoder = nn.Module()
    self.encoder.layers = nn.ModuleList(ClipEncoderLayer(c) for _ in range(c["num_hidden_layers"]))
    self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

  def forward(self, pixels):
    """Last hidden state (B, 1 + h·w, D) (no post-LN) and the grid (h, w)."""
    x, grid = self.embeddings(pixels)
    x = self.pre_layrnorm(x)
    for layer in self.encoder.layers:
      x = layer(x)
    return x, grid


class ClipImageTower(nn.Module):
  """The `clip.*` parameters MAFT+ inference uses: image tower, its projection, the logit scale."""

  def __init__(self, clip_config):
    super().__init__()
    v = clip_config["vision_config"]
    self.vision_model = ClipVisionTransformer(v)
    self.visual_projection = nn.Linear(v["hidden_size"], clip_config["projection_dim"], bias=False)
    self.logit_scale = nn.Parameter(torch.tensor(2.6592))

  def forward(self, pixels):
    """-> trunk patch tokens (B, h, w, width), before the CLIP head."""
    tokens, (h, w) = self.vision_model(pixels)
    return tokens[:, 1:].reshape(tokens.shape[0], h, w, -1)

  def image_head(self, tokens):
    """CLIP head (post-LN, projection) on any tokens (..., width) -> (..., D)."""
    return self.visual_projection(self.vision_model.post_layernorm(tokens))


# ---------------------------------------------------------------- mask head

class SimpleFeaturePyramid(nn.Module):
  """Stride-16 map (B, D, h, w) -> {'res2': 4×, 'res3': 2×, 'res4': 1×, 'res5': ½×}, C channels each."""

  LEVELS = ("res2", "res3", "res4", "res5")

  def __init__(self, d, c):
    super().__init__()
    self.up4_1 = nn.ConvTranspose2d(d, d // 2, 2, stride=2)
    self.up4_norm = nn.LayerNorm(d // 2, eps=1e-6)
    self.up4_2 = nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2)
    self.up2 = nn.ConvTranspose2d(d, d // 2, 2, stride=2)
    self.lateral = nn.ModuleList(nn.Conv2d(i, c, 1, bias=False) for i in (d // 4, d // 2, d, d))
    self.lateral_norm = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for _ in range(4))
    self.output = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, bias=False) for _ in range(4))
    self.output_norm = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for _ in range(4))

  def forward(self, x):
    scaled = (self.up4_2(F.gelu(_channels_last(self.up4_norm, self.up4_1(x)))), self.up2(x), x,
              F.max_pool2d(x, 2, 2))
    out = {}
    for i, (name, y) in enumerate(zip(self.LEVELS, scaled)):
      y = _channels_last(self.lateral_norm[i], self.lateral[i](y))
      out[name] = _channels_last(self.output_norm[i], self.output[i](y))
    return out


class MSDeformAttn(nn.Module):

  def __init__(self, dim, num_heads, num_levels, num_points):
    super().__init__()
    self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
    n = num_heads * num_levels * num_points
    self.sampling_offsets = nn.Linear(dim, n * 2)
    self.attention_weights = nn.Linear(dim, n)
    self.value_proj, self.output_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

  def forward(self, query, reference_points, value, shapes):
    """query (B, Lq, C); reference_points (B, Lq, nL, 2); value (B, S, C) -> (B, Lq, C)."""
    b, lq, c = query.shape
    nh, nl, npt = self.num_heads, self.num_levels, self.num_points
    v = self.value_proj(value).reshape(b, value.shape[1], nh, c // nh)
    offsets = self.sampling_offsets(query).reshape(b, lq, nh, nl, npt, 2)
    weights = self.attention_weights(query).reshape(b, lq, nh, nl * npt).softmax(-1)
    normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype)  # pixels -> [0, 1]
    locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[:, None, :]
    out = multi_scale_deformable_attention(v, shapes, locations, weights.reshape(b, lq, nh, nl, npt))
    return self.output_proj(out)


class DeformableEncoderLayer(nn.Module):

  def __init__(self, dim, ffn_dim, num_heads, num_levels, num_points):
    super().__init__()
    self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
    self.norm1 = nn.LayerNorm(dim)
    self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
    self.norm2 = nn.LayerNorm(dim)

  def forward(self, src, pos, reference_points, shapes):
    src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes))
    return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class PixelDecoder(nn.Module):
  """Deformable encoder over res5/res4/res3 plus an FPN step to res2 -> mask features."""

  LEVELS = ("res5", "res4", "res3")

  def __init__(self, c, num_layers, ffn_dim, num_heads, num_points):
    super().__init__()
    self.dim = c
    self.input_proj = nn.ModuleList(Sequential(nn.Conv2d(c, c, 1), nn.GroupNorm(32, c)) for _ in range(3))
    self.level_embed = nn.Parameter(torch.zeros(3, c))
    self.layers = nn.ModuleList(DeformableEncoderLayer(c, ffn_dim, num_heads, 3, num_points)
                                for _ in range(num_layers))
    self.lateral_conv = nn.Conv2d(c, c, 1, bias=False)
    self.lateral_norm = nn.GroupNorm(32, c)
    self.output_conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    self.output_norm = nn.GroupNorm(32, c)
    self.mask_features = nn.Conv2d(c, c, 1)

  def forward(self, features):
    """-> mask features (B, C, H/4, W/4), encoder maps [res5, res4, res3] (B, C, h, w)."""
    b = features["res5"].shape[0]
    shapes = [tuple(features[k].shape[2:]) for k in self.LEVELS]
    srcs, pos, centres = [], [], []
    for i, (k, (h, w)) in enumerate(zip(self.LEVELS, shapes)):
      srcs.append(self.input_proj[i](features[k]).flatten(2).transpose(1, 2))
      pos.append(sine_position_encoding(h, w, self.dim).reshape(h * w, -1) + self.level_embed[i])
      ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
      centres.append(torch.stack([xs, ys], -1).reshape(h * w, 2))
    src, pos = torch.cat(srcs, 1), torch.cat(pos)[None]
    reference_points = torch.cat(centres)[None, :, None].expand(b, src.shape[1], 3, 2)
    for layer in self.layers:
      src = layer(src, pos, reference_points, shapes)
    outs = [s.transpose(1, 2).reshape(b, self.dim, h, w)
            for s, (h, w) in zip(src.split([h * w for h, w in shapes], 1), shapes)]
    y = self.lateral_norm(self.lateral_conv(features["res2"]))
    y = y + resize(outs[-1], y.shape[2:])
    y = F.relu(self.output_norm(self.output_conv(y)))
    return self.mask_features(y), outs


class DecoderLayer(nn.Module):
  """Post-norm: masked cross-attention -> self-attention -> FFN."""

  def __init__(self, dim, num_heads, ffn_dim):
    super().__init__()
    self.cross_attn, self.cross_norm = Attention(dim, num_heads), nn.LayerNorm(dim)
    self.self_attn, self.self_norm = Attention(dim, num_heads), nn.LayerNorm(dim)
    self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
    self.ffn_norm = nn.LayerNorm(dim)

  def forward(self, x, query_pos, memory, memory_pos, attend):
    x = self.cross_norm(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, attend))
    qk = x + query_pos
    x = self.self_norm(x + self.self_attn(qk, qk, x))
    return self.ffn_norm(x + self.linear2(F.relu(self.linear1(x))))


class MaskedAttentionDecoder(nn.Module):

  def __init__(self, dim, num_queries, num_layers, num_heads, ffn_dim):
    super().__init__()
    self.query_feat = nn.Parameter(torch.zeros(num_queries, dim))
    self.query_embed = nn.Parameter(torch.zeros(num_queries, dim))
    self.level_embed = nn.Parameter(torch.zeros(3, dim))
    self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))
    self.decoder_norm = nn.LayerNorm(dim)
    self.mask_embed = MLP(dim, dim, dim, 3)

  def predict(self, x, mask_features):
    x = self.decoder_norm(x)
    return x, torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)

  def forward(self, multi_scale, mask_features):
    """multi_scale [(B, C, h, w)] coarse to fine -> final class features (B, Q, C), masks (B, Q, H/4, W/4)
    (in-vocabulary logits of the final set only are needed at inference)."""
    b, dim = mask_features.shape[:2]
    memory, memory_pos = [], []
    for i, f in enumerate(multi_scale):
      h, w = f.shape[2:]
      memory.append(f.flatten(2).transpose(1, 2) + self.level_embed[i])
      memory_pos.append(sine_position_encoding(h, w, dim).reshape(1, h * w, dim))
    x = self.query_feat[None].expand(b, -1, -1)
    query_pos = self.query_embed[None].expand(b, -1, -1)
    feats, masks = self.predict(x, mask_features)
    for i, layer in enumerate(self.layers):
      level = i % len(multi_scale)
      # Each query attends where its previous mask has σ ≥ 0.5; an empty mask attends everywhere.
      small = resize(masks, multi_scale[level].shape[2:]).flatten(2) >= 0  # (B, Q, h·w)
      attend = (small | ~small.any(-1, keepdim=True))[:, None]
      x = layer(x, query_pos, memory[level], memory_pos[level], attend)
      feats, masks = self.predict(x, mask_features)
    return feats, masks


class MaskFormerHead(nn.Module):

  def __init__(self, m):
    super().__init__()
    c = m["hidden_dim"]
    self.pixel_decoder = PixelDecoder(c, m["enc_layers"], m["enc_ffn_dim"], m["num_heads"], m["deform_points"])
    self.predictor = MaskedAttentionDecoder(c, m["num_queries"], m["dec_layers"], m["num_heads"], m["dec_ffn_dim"])

  def forward(self, features):
    """-> final class features (B, Q, C), masks (B, Q, H/4, W/4), mask features (B, C, H/4, W/4)."""
    mask_features, multi_scale = self.pixel_decoder(features)
    return (*self.predictor(multi_scale, mask_features), mask_features)


# ---------------------------------------------------------------- classifiers

class CosineClassifier(nn.Module):
  """In-vocabulary classifier: MLP -> unit vector; cosine with [text; void] × min(exp(s), 100)."""

  def __init__(self, in_dim, embed_dim):
    super().__init__()
    self.mlp = MLP(in_dim, in_dim, embed_dim, 3)
    self.void_embedding = nn.Parameter(torch.zeros(1, embed_dim))
    self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

  def forward(self, features, text):
    classes = torch.cat([text, l2_normalize(self.void_embedding)])
    scale = self.logit_scale.exp().clamp(max=100.0)
    return scale * torch.einsum("bqe,ke->bqk", l2_normalize(self.mlp(features)), classes)


class ContentDependentTransfer(nn.Module):
  """Text classifier rows cross-attend to the dense CLIP map (keys + sine encoding, offset 0).

  semantic: T' = LN(T + Linear(Attn)); panoptic: T' = T + LN(Linear(Attn)).
  """

  def __init__(self, dim, num_heads, mode):
    super().__init__()
    self.num_heads, self.mode = num_heads, mode
    self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.mlp = nn.Linear(dim, dim)
    self.norm = nn.LayerNorm(dim)

  def forward(self, text, dense):
    """text (S, D); dense (B, h, w, D) -> (B, S, D)."""
    b, h, w, d = dense.shape
    text = text[None].expand(b, -1, -1)
    memory = dense.reshape(b, h * w, d)
    pos = sine_position_encoding(h, w, d, offset=0.0).reshape(1, h * w, d)
    attn = _attention(self, text, memory + pos, memory, self.num_heads)
    if self.mode == "panoptic":
      return text + self.norm(self.mlp(attn))
    return self.norm(text + self.mlp(attn))


# ---------------------------------------------------------------- the model

class MAFTPlusTorch(nn.Module):
  """MAFT+ inference: pixels -> per-class score maps (as `ovs_jax.methods.maft_plus`)."""

  def __init__(self, config: dict):
    super().__init__()
    m, clip = config["model"], config["clip"]
    width, dim = clip["vision_config"]["hidden_size"], clip["projection_dim"]
    self.config = config
    self.clip = ClipImageTower(clip)
    self.pyramid = SimpleFeaturePyramid(width, m["hidden_dim"])
    self.head = MaskFormerHead(m)
    self.mask_pooling_norm = nn.LayerNorm(m["hidden_dim"])
    self.mask_pooling_proj = nn.Linear(m["hidden_dim"], m["hidden_dim"])
    self.in_vocab = CosineClassifier(m["hidden_dim"], dim)
    self.cdt = ContentDependentTransfer(dim, m["cdt_heads"], m["cdt_mode"])
    self.cdt_dense = m.get("cdt_dense", "per_pixel")

  @classmethod
  def from_export(cls, directory, map_location="cpu") -> "MAFTPlusTorch":
    """The model in an export directory (`config.json` + `model.safetensors`), float32."""
    directory = Path(directory)
    config = read_export_config(directory)
    model = cls(config)
    model.load_export_state(load_safetensors(directory / "model.safetensors", map_location),
                            source=str(directory / "model.safetensors"))
    return model

  def load_export_state(self, state_dict, source="state dict"):
    """Load an exported state dict; key or shape mismatches raise CheckpointError naming `source`."""
    own = self.state_dict()
    problems = [f"missing key {k!r} (expected shape {tuple(v.shape)})" for k, v in own.items()
                if k not in state_dict]
    problems += [f"unexpected key {k!r}" for k in state_dict
                 if k not in own and not k.startswith(UNUSED_PREFIXES)]
    problems += [f"key {k!r} has shape {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if problems:
      more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
      raise CheckpointError(f"{source} does not match the MAFT+ model: " + "; ".join(problems[:8]) + more)
    self.load_state_dict({k: state_dict[k].float() for k in own})

  def forward(self, pixels, text, synonym_index):
    """pixels (B, 3, H, W) CLIP-normalised; text (S, D) unit rows; synonym_index (C, K) long.

    -> {'pred_logits' (B, Q, C+1) in-vocab with void last, 'pred_masks' (B, Q, H/4, W/4),
        'out_vocab_logits' (B, Q, C), 'trunk' (B, h, w, width)}.
    """
    trunk = self.clip(pixels)
    class_features, masks, mask_features = self.head(self.pyramid(trunk.permute(0, 3, 1, 2)))
    # FC-CLIP's in-vocabulary class path: decoder output + Linear(LN(mask-pooled mask features)).
    pooled = mask_pool(mask_features.permute(0, 2, 3, 1), masks)
    syn = self.in_vocab(class_features + self.mask_pooling_proj(self.mask_pooling_norm(pooled)), text)
    pred_logits = torch.cat([max_over_synonyms(syn[..., :-1], synonym_index), syn[..., -1:]], -1)
    return {"pred_logits": pred_logits, "pred_masks": masks,
            "out_vocab_logits": self.out_of_vocab_logits(trunk, masks, text, synonym_index),
            "trunk": trunk}

  def out_of_vocab_logits(self, trunk, masks, text, synonym_index):
    """Binarised masks pool the trunk features, then the CLIP head; cosine with the CDT classifier."""
    pooled = self.clip.image_head(mask_pool(trunk, masks))
    dense = trunk
    if self.cdt_dense == "official":  # the official code reads its NCHW map as (B*h*w, C) rows
      b, h, w, c = trunk.shape
      dense = trunk.permute(0, 3, 1, 2).reshape(b, h, w, c)
    transferred = self.cdt(text, self.clip.image_head(dense))
    scale = self.clip.logit_scale.exp().clamp(max=100.0)
    logits = scale * torch.einsum("bqd,bsd->bqs", l2_normalize(pooled), transferred)
    return max_over_synonyms(logits, synonym_index)

  @staticmethod
  def semantic_scores(out, image_hw, seen=None, alpha=0.4, beta=0.8):
    """Per-class scores (B, C, H, W) = Σ_q p_q[c]·σ(m_q), p = softmax_C(out-vocab)·(1 − p_void).

    With `seen` (C,) bool: FC-CLIP's geometric ensemble (void dropped from the in-vocab logits,
    softmax over C, in^(1−w)·out^w renormalised, w = α seen / β unseen). As the official code, the
    probabilities pass through log(p + 1e-8) and a softmax over C+1 before void is dropped.
    """
    p_void = out["pred_logits"].softmax(-1)[..., -1:]
    probs = out["out_vocab_logits"].softmax(-1)
    if seen is not None:
      w = torch.where(seen, alpha, beta)
      probs = ((1 - w) * out["pred_logits"][..., :-1].log_softmax(-1)
               + w * out["out_vocab_logits"].log_softmax(-1)).softmax(-1)
    probs = torch.cat([probs * (1 - p_void), p_void], -1)
    probs = torch.log(probs + 1e-8).softmax(-1)[..., :-1]
    masks = torch.sigmoid(resize(out["pred_masks"], image_hw))
    return torch.einsum("bqc,bqhw->bchw", probs, masks)

  def segment(self, pixels, text, synonym_index, **ensemble):
    """pixels (B, 3, H, W) with H, W multiples of 32 -> scores (B, C, H, W)."""
    return self.semantic_scores(self(pixels, text, synonym_index), pixels.shape[2:], **ensemble)


# ---------------------------------------------------------------- files

def load_safetensors(path, map_location="cpu") -> dict:
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: file not found")
  try:
    from safetensors.torch import load_file
    return load_file(str(path), device=str(map_location))
  except Exception as e:  # truncated or not a safetensors file
    raise CheckpointError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from e


def read_export_config(directory) -> dict:
  path = Path(directory) / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{directory}: no config.json; expected a directory written by "
                          "`python -m ovs_jax.convert to-torch`")
  try:
    config = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
  if config.get("format") != FORMAT:
    what = f"model_type {config['model_type']!r}" if "model_type" in config else f"format {config.get('format')!r}"
    raise CheckpointError(f"{path}: {what} is not an exported MAFT+ model (format {FORMAT!r}); "
                          "a CLIP directory is read with `ovs_jax.convert clip` or transformers")
  return config


def load_text_classifier(directory):
  """The precomputed training-vocabulary classifier: (text (S, D), synonym_index (C, K), class names)."""
  directory = Path(directory)
  sd = load_safetensors(directory / "text_classifier.safetensors")
  names = read_export_config(directory).get("text_classifier", {}).get("class_names", [])
  return sd["embeddings"].float(), sd["synonym_index"].long(), names


@torch.no_grad()
def build_text_classifier(hf_clip, vocabulary, templates, tokenize, batch_size=256):
  """Classifier rows for a new vocabulary with the exported HF text tower (`clip/` directory).

  hf_clip: `transformers.CLIPModel`; vocabulary: [[name, synonym, ...], ...]; tokenize: texts ->
  (N, 77) int ids (SOT ... EOT, zero padding), e.g. `ovs_jax.tokenizer.tokenize`. Each synonym is
  put through every template; embeddings are L2-normalised, averaged, re-normalised.
  -> (text (S, D), synonym_index (C, K)).
  """
  flat, index = [], []
  for names in vocabulary:
    names = [n.strip() for n in names if n.strip()]
    index.append(list(range(len(flat), len(flat) + len(names))))
    flat += names
  k = max(map(len, index))
  synonym_index = torch.tensor([row + [-1] * (k - len(row)) for row in index])
  sentences = [t.format(name) for name in flat for t in templates]
  out = []
  for i in range(0, len(sentences), batch_size):
    ids = torch.as_tensor(tokenize(sentences[i:i + batch_size]), dtype=torch.long)
    pooled = hf_clip.text_model(input_ids=ids).pooler_output
    out.append(l2_normalize(hf_clip.text_projection(pooled).float()))
  emb = torch.cat(out).reshape(len(flat), len(templates), -1).mean(1)
  return l2_normalize(emb), synonym_index
