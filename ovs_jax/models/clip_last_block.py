"""A CLIP ViT whose last block is rebuilt: the one change of the training-free family (SCLIP,
ClearCLIP, NACLIP, ProxyCLIP).

Blocks 1..N-1 run as CLIP runs them; the last block's attention weights come from a rule of the
method (`weights(q, k)` per head), optionally without the residual and the FFN, and its tokens go
through the CLIP head (post-LN, projection). A convolutional CLIP has no such block: only ViTs.

The weights are built explicitly (B, heads, L, L): the rules sum two softmaxes or add a dense bias,
which the shared `ops.attention` kernel (boolean masks only) does not take. One (L, L) plane per head
is small at the methods' crop sizes (785 tokens at 448 px, ViT-B/16).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def last_block_input(clip, pixels):
  """(B, H, W, 3) -> (tokens entering the last block (B, 1 + h*w, D), grid (h, w), that block)."""
  if not hasattr(clip, "vision_model"):
    raise ValueError(f"the training-free methods rebuild a ViT's last block; {type(clip).__name__} "
                     "has none (use a CLIP ViT, e.g. vit_b16, or MaskCLIP for a ResNet)")
  tower = clip.vision_model
  x, grid = tower.embeddings(pixels)
  n = clip.config.vision.num_hidden_layers
  x = tower.encoder.run_blocks(tower.pre_layrnorm(x), 0, n - 1)
  return x, grid, layer(tower.encoder, n - 1)


def layer(encoder, i: int):
  """Block `i` of an encoder, its parameters sliced out of the scanned stack if stacked."""
  if not encoder.scan:
    return encoder.layers[i]
  graphdef, state = nnx.split(encoder.layers)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def split_heads(x, num_heads: int):
  """(B, L, C) -> (B, heads, L, C / heads)."""
  b, l, c = x.shape
  return x.reshape(b, l, num_heads, c // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
  """(B, heads, L, Dh) -> (B, L, heads * Dh)."""
  b, h, l, d = x.shape
  return x.transpose(0, 2, 1, 3).reshape(b, l, h * d)


def scaled_similarity(a, b):
  """a (B, heads, L, Dh), b (B, heads, M, Dh) -> a bᵀ / √Dh (B, heads, L, M) in float32."""
  s = jnp.einsum("bhld,bhmd->bhlm", a, b, preferred_element_type=jnp.float32)
  return s * (a.shape[-1] ** -0.5)


def rebuilt_last_block(block, x, weights, *, residual: bool, ffn: bool):
  """x (B, L, D) through `block` with attention weights `weights(q, k) -> (B, heads, L, L)`:
  y = W v through out_proj; then + x if `residual`, then + FFN(LN2 y) if `ffn`."""
  attn = block.self_attn
  h = block.layer_norm1(x)
  q, k, v = (split_heads(p(h), attn.num_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
  w = weights(q, k)
  y = attn.out_proj(merge_heads(jnp.einsum("bhlm,bhmd->bhld", w.astype(v.dtype), v)))
  if residual:
    y = x + y
  if ffn:
    y = y + block.mlp(block.layer_norm2(y))
  return y


def rebuilt_dense_features(clip, pixels, weights, *, residual: bool, ffn: bool):
  """(B, H, W, 3) -> (B, h, w, P): patch tokens of the rebuilt last block through the CLIP head."""
  x, (h, w), block = last_block_input(clip, pixels)
  y = rebuilt_last_block(block, x, weights, residual=residual, ffn=ffn)
  return clip.image_head(y[:, 1:]).reshape(x.shape[0], h, w, -1)
