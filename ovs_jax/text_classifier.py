"""Text classifiers: one CLIP embedding per class-name synonym, and max over synonyms per class.

For a vocabulary [[name, synonym, ...], ...] every synonym is written into every template, each
sentence embedding is L2-normalised, averaged over templates and re-normalised. A class's logit is
the max over its synonyms' logits. Embeddings are cached on disk keyed by (text-tower weights,
vocabulary, templates), written atomically; an unreadable or foreign cache file is discarded with a
warning and recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from input_pipeline.vocab import VocabularyError
from ovs_jax.models.clip import l2_normalize
from ovs_jax.templates import VILD_TEMPLATES
from ovs_jax.tokenizer import tokenize, truncated


@dataclasses.dataclass(frozen=True)
class TextClassifier:
  """embeddings (S, D) L2-normalised per synonym; synonym_index (C, K) into rows, -1 = padding."""
  embeddings: np.ndarray
  synonym_index: np.ndarray

  @property
  def num_classes(self) -> int:
    return self.synonym_index.shape[0]

  @property
  def synonym_to_class(self) -> np.ndarray:
    """(S,) class id of each embedding row."""
    out = np.empty(self.embeddings.shape[0], np.int32)
    for c, row in enumerate(self.synonym_index):
      out[row[row >= 0]] = c
    return out


def max_over_synonyms(logits: jnp.ndarray, synonym_index: jnp.ndarray) -> jnp.ndarray:
  """(..., S) synonym logits -> (..., C) class logits, the max over each class's synonyms."""
  gathered = jnp.take(logits, jnp.maximum(synonym_index, 0), axis=-1)  # (..., C, K)
  return jnp.where(synonym_index >= 0, gathered, -jnp.inf).max(-1)


def synonym_layout(vocabulary: list[list[str]]) -> tuple[list[str], np.ndarray]:
  """Flat synonym list and the (C, K) index of each class's rows."""
  if not vocabulary:
    raise ValueError("the vocabulary is empty: give at least one class name")
  flat, index = [], []
  for c, names in enumerate(vocabulary):
    names = [n.strip() for n in names if n.strip()]
    if not names:
      raise ValueError(f"class {c} of the vocabulary has no name")
    index.append(list(range(len(flat), len(flat) + len(names))))
    flat += names
  k = max(map(len, index))
  return flat, np.asarray([row + [-1] * (k - len(row)) for row in index], np.int32)


def text_tower_fingerprint(model) -> str:
  """Hash of what produces text embeddings: text-tower config (pooling depends on its eos id), the
  compute dtypes, and the parameters of the text tower and text projection."""
  h = hashlib.sha256(repr(model.config.text).encode())
  for part in (model.text_model, model.text_projection):
    # compute dtypes change the embeddings too (bfloat16 vs float32: ~1% of the score range)
    h.update(repr(sorted({(str(path), str(m.dtype)) for path, m in nnx.iter_graph(part)
                          if isinstance(m, nnx.Module) and getattr(m, "dtype", None) is not None})).encode())
    for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(part, nnx.Param))):
      h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()[:20]


def _encode_fn(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def encode(state, ids):
    return l2_normalize(nnx.merge(graphdef, state).get_text_features(ids).astype(jnp.float32))
  return lambda ids: encode(state, ids)


def encode_sentences(model, sentences: list[str], batch_size: int = 256) -> np.ndarray:
  """(N,) sentences -> (N, D) normalised text embeddings, in fixed-size jitted batches."""
  encode = _encode_fn(model)
  ctx = model.config.text.max_position_embeddings
  out = []
  for i in range(0, len(sentences), batch_size):
    ids = tokenize(sentences[i:i + batch_size], ctx)
    n = ids.shape[0]
    ids = np.pad(ids, ((0, batch_size - n), (0, 0)))  # one compiled shape for every batch
    out.append(np.asarray(encode(jnp.asarray(ids)))[:n])
  return np.concatenate(out)


def check_context(vocabulary, flat, index, sentences, num_templates, context_length) -> None:
  """Names whose prompts exceed the text tower's context are cut (as CLIP does): a warning names
  them; classes left with identical token ids (they would share one embedding, so one of them
  could never be predicted) are a VocabularyError naming both."""
  cut = np.asarray(truncated(sentences, context_length)).reshape(len(flat), num_templates)
  if not cut.any():
    return
  classes = sorted({c for c, row in enumerate(index) for s in row if s >= 0 and cut[s].any()})
  logging.warning("class names longer than the text tower's %d tokens are cut at the end: %s",
                  context_length, "; ".join(f"{c} ({vocabulary[c][0][:40]!r}...)" for c in classes))
  ids = tokenize(sentences, context_length).reshape(len(flat), num_templates, -1)
  seen = {}
  for c in classes:
    key = b"".join(sorted(ids[s].tobytes() for s in index[c] if s >= 0))
    if key in seen:
      raise VocabularyError(
          f"classes {seen[key]} ({vocabulary[seen[key]][0][:40]!r}...) and {c} ({vocabulary[c][0][:40]!r}...) "
          f"are the same within the text tower's {context_length} tokens: shorten one of them")
    seen[key] = c


def build_text_classifier(model, vocabulary: list[list[str]], templates=VILD_TEMPLATES, *,
                          batch_size: int = 256, cache_dir: str | os.PathLike | None = None
                          ) -> TextClassifier:
  """Template-averaged synonym embeddings for `vocabulary`, from the cache when present."""
  flat, index = synonym_layout(vocabulary)
  templates = tuple(templates)
  cache = None
  if cache_dir is not None:
    key = hashlib.sha256(json.dumps([text_tower_fingerprint(model), flat, index.tolist(),
                                     templates]).encode()).hexdigest()[:24]
    cache = Path(cache_dir) / f"text_classifier-{key}.npz"
    if cache.exists() and (cached := _read_cache(cache, key, index)) is not None:
      return cached
  sentences = [t.format(name) for name in flat for t in templates]
  check_context(vocabulary, flat, index, sentences, len(templates), model.config.text.max_position_embeddings)
  emb = encode_sentences(model, sentences, batch_size).reshape(len(flat), len(templates), -1)
  emb = np.asarray(l2_normalize(jnp.asarray(emb.mean(1))))
  clf = TextClassifier(emb, index)
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, embeddings=emb, synonym_index=index, key=np.array(key))
    os.replace(tmp, cache)  # atomic: readers see the old state or the whole file
  return clf


def _read_cache(path: Path, key: str, index: np.ndarray) -> TextClassifier | None:
  """The classifier cached at `path`; None, with a warning naming the file (which is removed so it
  is rebuilt), when the file is unreadable or holds another entry (other key or vocabulary
  layout, or non-finite embeddings)."""
  try:
    with np.load(path) as f:
      stored = str(f["key"]) if "key" in f else None
      emb, synonym_index = f["embeddings"], f["synonym_index"]
    if stored != key:
      problem = "holds another entry" if stored else "was written without its key (an older version)"
    elif not np.array_equal(synonym_index, index) or emb.ndim != 2 or len(emb) != int(index.max()) + 1:
      problem = "does not match its vocabulary"
    elif not np.isfinite(emb).all():
      problem = "holds non-finite embeddings"
    else:
      return TextClassifier(emb, synonym_index)
  except Exception as e:  # numpy/zipfile raise many types for damaged files
    problem = f"is unreadable ({type(e).__name__}: {e})"
  logging.warning("text-classifier cache %s %s; discarding it and recomputing", path, problem)
  path.unlink(missing_ok=True)
  return None
