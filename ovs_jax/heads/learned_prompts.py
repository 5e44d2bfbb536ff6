"""Learned prompt contexts in CLIP's text tower (CoOp, Zhou et al. 2022; MVP-SEG's multi-view prompts).

Each class-name synonym is tokenised once as "X X ... X {name}." (n placeholder words, one BPE
token each: CLIP's BPE encodes a word at a time); inside the jitted step the placeholders' token
embeddings are replaced by a learned context (n, D), the sentence goes through the frozen text
tower and is pooled at its end-of-text token as usual. With V contexts every synonym gets V text
features; gradients reach only the contexts.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ovs_jax.models.clip import eot_position, l2_normalize
from ovs_jax.tokenizer import tokenize

PLACEHOLDER = "X"


def prompt_token_ids(names: list[str], length: int, context_length: int, eos_token_id: int):
  """-> ids (S, L) of "X × length {name}." and each sentence's pooled position (S,), trimmed
  to the shortest L holding every sentence: the tower is causal, so the padding after the EOT
  token never changes the pooled state."""
  prefix = " ".join([PLACEHOLDER] * length)
  ids = tokenize([f"{prefix} {name}." for name in names], context_length)
  eot = np.asarray(eot_position(jnp.asarray(ids), eos_token_id))
  return ids[:, :int(eot.max()) + 1], eot.astype(np.int32)


def prompted_text_features(clip, contexts, ids, eot):
  """contexts (V, n, D) learned token embeddings, ids (S, L), eot (S,) -> (V, S, P) unit-norm text
  features: token embeddings 1..n of every sentence replaced by each context (position 0 = SOT)."""
  v, n, _ = contexts.shape
  tokens = clip.text_model.embeddings.token_embedding(ids)                 # (S, L, D)
  tokens = jnp.broadcast_to(tokens, (v, *tokens.shape))
  tokens = tokens.at[:, :, 1:1 + n].set(contexts[:, None].astype(tokens.dtype))
  feats = clip.text_features_from_embeddings(tokens.reshape(-1, *tokens.shape[2:]), jnp.tile(eot, v))
  return l2_normalize(feats.astype(jnp.float32)).reshape(v, ids.shape[0], -1)


def template_contexts(clip, template: str, views: int):
  """(views, n, D) contexts equal to the token embeddings of `template`'s words (e.g. "a photo of
  a"): CoOp's initialisation from a handcrafted prompt."""
  ids = tokenize(template, clip.config.text.max_position_embeddings)[0]
  n = int(np.argmax(ids == ids.max())) - 1  # words between SOT and EOT (EOT has the highest id)
  emb = clip.text_model.embeddings.token_embedding(jnp.asarray(ids[1:1 + n]))
  return jnp.broadcast_to(emb.astype(jnp.float32), (views, n, emb.shape[-1]))
