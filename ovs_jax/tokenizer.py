"""CLIP's byte-level BPE tokenizer, built with the `tokenizers` library from the shipped vocabulary.

The merges file `assets/bpe_simple_vocab_16e6.txt.gz` is OpenAI CLIP's (MIT; see
`assets/LICENSE.clip_bpe`). Ids equal `transformers.CLIPTokenizer`'s: 256 byte symbols, the same
with an end-of-word suffix, one id per merge, then <|startoftext|>=49406 and <|endoftext|>=49407.
"""
from __future__ import annotations

import functools
import gzip
from importlib import resources

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

CONTEXT_LENGTH = 77
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2
# Words, single digits, runs of other symbols; the special tokens are kept whole.
_PRETOKENIZE = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                r"|[^\s\p{L}\p{N}]+")


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table, in id order.

  Printable bytes map to themselves and come first; the others map to chr(256 + n), in byte order.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table = {b: chr(b) for b in printable}
  for n, b in enumerate(b for b in range(256) if b not in table):
    table[b] = chr(256 + n)
  return table


def vocabulary_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
  data = resources.files("ovs_jax").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
  lines = gzip.decompress(data).decode("utf-8").split("\n")[1:NUM_MERGES + 1]
  merges = [tuple(line.split()) for line in lines]
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
  return {t: i for i, t in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=None)
def clip_tokenizer(context_length: int = CONTEXT_LENGTH) -> Tokenizer:
  """The tokenizer, truncating to `context_length` (keeping the final EOT) and padding with 0."""
  vocab, merges = vocabulary_and_merges()
  tok = Tokenizer(models.BPE(vocab, merges, unk_token=EOT, end_of_word_suffix="</w>",
                             continuing_subword_prefix="", fuse_unk=False))
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.RobertaProcessing((EOT, vocab[EOT]), (SOT, vocab[SOT]),
                                                    add_prefix_space=False, trim_offsets=False)
  tok.add_special_tokens([SOT, EOT])
  tok.enable_truncation(context_length)
  tok.enable_padding(length=context_length, pad_id=0, pad_token="!")
  return tok


def tokenize(texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """Texts -> (N, context_length) int32 ids: SOT, tokens, EOT, zero padding."""
  texts = [texts] if isinstance(texts, str) else list(texts)
  enc = clip_tokenizer(context_length).encode_batch(texts)
  return np.asarray([e.ids for e in enc], np.int32).reshape(len(texts), context_length)


def truncated(texts: list[str], context_length: int = CONTEXT_LENGTH) -> list[bool]:
  """Which texts `tokenize` cuts to fit `context_length` (their ends are lost)."""
  return [bool(e.overflowing) for e in clip_tokenizer(context_length).encode_batch(list(texts))]
