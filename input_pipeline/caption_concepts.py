"""SimZSS caption concepts as the release extracts them, and the named fallback used without spaCy.

The release's rule (tileb1/simzss @2142ac5, src/training/make_shards_spacy.py L16-101, applied
offline per shard; src/training/data.py L434-465 at load time):
  * the caption, cleaned and lower-cased, goes through spaCy `en_core_web_trf`;
  * each noun chunk gives a concept: the root's LAST `compound` child (if any) + the root's lemma,
    and its tokens: the CLIP BPE tokens of that compound word and of the root as written;
  * chunks are taken in order while fewer than 32 are kept and both the chunk and the concept
    span fewer than 16 BPE tokens; then only concepts that are names of the bank stay.

`spacy` extraction runs that rule (needs `pip install spacy` and the official `en_core_web_trf`
model: `python -m spacy download en_core_web_trf`; not installable on machines without access to
spaCy's release downloads, and no re-upload is used). Without it the fallback is `bank-match`:
bank names (and their plural / singular forms) found in the token ids, leftmost-longest
(`input_pipeline.concepts.ConceptMatcher`), keeping a match only where it can end a noun phrase
(not followed by a word that continues one: `_continues_phrase`). Its agreement with the
official rule on a hand-checked sample is measured in tests/test_concepts_release.py and stated
in docs/simzss.md.

Per shard cache (what the release's make_shards_spacy.py writes into processed shards, kept
beside them instead, as JSON and never as pickles):

  python -m input_pipeline.caption_concepts extract --shards 'data/{00000..00295}.tar' --out data/concepts
    -> data/concepts/00000.concepts.json: {"extractor": ..., "bank": ..., "samples": {key: [[id, start, end], ...]}}

A concept's tokens are kept as the span [start, end) from its first to its last token (compound
and root are adjacent in all but rare chunks, e.g. "bus and train station": there the span also
covers the words in between).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys

import numpy as np

from input_pipeline import concepts as concepts_lib
from ovs_jax import tokenizer as tokenizer_lib

MAX_CHUNKS = 32       # make_shards_spacy.py: MAX_NOUNS_PER_CAPTION = 2**5
MAX_TOKENS = 16       # ... MAX_TOKENS_PER_NOUN = 2**4 (a chunk and a concept need fewer)
EXTRACTORS = ("spacy", "bank-match")
SPACY_MODEL = "en_core_web_trf"
# Words after a bank noun that show it is a modifier, not the phrase's head ("bus stop", "tennis
# ball"): nouns that commonly head COCO-style noun phrases. Closed, hand-written; the fallback
# otherwise accepts a match (most following words are verbs, prepositions or punctuation).
_HEADS = frozenset("""stop station sign light lights ball balls racket rackets bat player players
  court field game park lot area table tables room rack stand stands pole poles truck trucks
  cart carts shop store market counter top board boards plate plates bowl bowls cup cups bag bags
  case house houses tower building buildings track tracks lane line lines car cars pen box boxes
  holder cover set sets set-up machine machines meter meters hydrant handle handles door doors
  window windows frame frames shirt shirts suit suits cake cakes pizza sandwich sandwiches
  dog dogs tray trays bottle bottles jar jars can cans glass glasses wall walls floor floors
  sink sinks bed beds area areas scene view display dish dishes""".split())


def clean_caption(text: str) -> str:
  """The release's spaCy input: OpenCLIP's basic_clean (HTML unescaped twice, stripped; its ftfy
  pass is skipped here: ftfy is not a dependency) and whitespace_clean, lower-cased."""
  return " ".join(html.unescape(html.unescape(text)).strip().split()).lower()


class _Words:
  """A caption's CLIP BPE tokens grouped into words: [(word text, [token positions])]."""

  def __init__(self, ids):
    vocab, _ = tokenizer_lib.vocabulary_and_merges()
    decode = {i: t for t, i in vocab.items()}
    eot = vocab[tokenizer_lib.EOT]
    self.words, current, pos = [], ([], []), 1  # position 0 is SOT
    for pos in range(1, len(ids)):
      t = int(ids[pos])
      if t == eot:
        break
      s = decode[t]
      current[0].append(s.removesuffix("</w>"))
      current[1].append(pos)
      if s.endswith("</w>"):
        self.words.append(("".join(current[0]), current[1]))
        current = ([], [])

  def find(self, word: str, cursor: int) -> tuple[list[int], int] | None:
    """Positions of the next BPE word(s) from `cursor` spelling `word` (one word, or consecutive
    ones joined as spaCy joins "t-shirt"), and the cursor after them; None when none does."""
    for i in range(cursor, len(self.words)):
      text, positions = "", []
      for j in range(i, len(self.words)):
        text += self.words[j][0]
        positions = positions + self.words[j][1]
        if text == word:
          return positions, j + 1
        if not word.startswith(text):
          break
    return None


def release_rule(doc, ids, bank_index: dict[str, int]) -> list[tuple[int, int, int]]:
  """The release's rule on a parsed caption (`doc`: spaCy's Doc of `clean_caption(caption)`; only
  `noun_chunks`, `.root`, `.children`, `.dep_`, `.lemma_`, `str()` are used) and its token ids
  -> [(bank id, start, end)] in caption order."""
  words = _Words(ids)
  chunk_cursor = concept_cursor = 0
  kept = []
  for chunk in doc.noun_chunks:
    root = chunk.root
    compound = [str(c) for c in root.children if c.dep_ == "compound"][-1:]
    concept = " ".join(compound + [str(root.lemma_)])
    chunk_tokens = []
    for w in chunk:
      found = words.find(str(w), chunk_cursor)
      if found is None:  # the release's StopIteration: the chunk's tokens end here
        break
      chunk_tokens += found[0]
      chunk_cursor = found[1]
    concept_tokens = []
    for w in compound + [str(root)]:
      found = words.find(w, concept_cursor)
      if found is None:  # the release's StopIteration ends the whole caption
        return _in_bank(kept, bank_index)
      concept_tokens += found[0]
      concept_cursor = found[1]
    if len(kept) < MAX_CHUNKS and len(chunk_tokens) < MAX_TOKENS and len(concept_tokens) < MAX_TOKENS:
      kept.append((concept, min(concept_tokens), max(concept_tokens) + 1))
  return _in_bank(kept, bank_index)


def _in_bank(kept, bank_index):
  return [(bank_index[c], s, e) for c, s, e in kept if c in bank_index]


class BankMatch:
  """The fallback extractor (module docstring): bank names in the token ids that stand alone as
  their noun phrase's compound + head, as far as a noun lexicon (the bank's one-word forms and
  `_HEADS`) can tell without a parser: a match followed by a noun is a modifier ("bus stop"), one
  preceded by a noun has a compound that makes it another name ("laptop computer", "dirt road"),
  and the release drops both unless the longer phrase is itself a bank name (matched first)."""

  name = "bank-match"

  def __init__(self, bank: list[str]):
    self.matcher = concepts_lib.ConceptMatcher(bank, max_concepts=MAX_CHUNKS, max_tokens=MAX_TOKENS - 1)
    self.nouns = {f for f in self.matcher.forms if " " not in f} | _HEADS

  def __call__(self, caption: str, ids) -> list[tuple[int, int, int]]:
    words = _Words(ids).words
    first = {p[0]: i for i, (_, p) in enumerate(words)}
    last = {p[-1]: i for i, (_, p) in enumerate(words)}
    noun = lambda i: i is not None and 0 <= i < len(words) and words[i][0] in self.nouns
    out = []
    for m in self.matcher.find(ids):
      after, before = first.get(m[2]), last.get(m[1] - 1)
      if not noun(after) and not noun(before):
        out.append(m)
    return out


class Spacy:
  """The official extractor: spaCy `en_core_web_trf` and the release's rule."""

  name = "spacy"

  def __init__(self, bank: list[str], model: str = SPACY_MODEL):
    try:
      import spacy  # pylint: disable=g-import-not-at-top
      self.nlp = spacy.load(model)
    except (ImportError, OSError) as e:
      raise RuntimeError(f"the release's concept extraction needs spaCy and its {model!r} model "
                         f"(pip install spacy; python -m spacy download {model}): {e}. Without them "
                         "use --extractor=bank-match (docs/simzss.md states its agreement)") from None
    self.index = {n: i for i, n in enumerate(bank)}

  def __call__(self, caption: str, ids) -> list[tuple[int, int, int]]:
    return release_rule(self.nlp(clean_caption(caption)), ids, self.index)


def make_extractor(name: str, bank: list[str]):
  if name == "spacy":
    return Spacy(bank)
  if name == "bank-match":
    return BankMatch(bank)
  raise ValueError(f"concept extractor {name!r}: expected one of {EXTRACTORS}")


def cache_path(out_dir: str, shard_url: str) -> str:
  return os.path.join(out_dir, re.sub(r"\.tar$", "", os.path.basename(shard_url)) + ".concepts.json")


def extract_shard(source, shard: int, extractor, bank_name: str, out_dir: str) -> str:
  """Writes one shard's concepts (every complete sample of `source` in that shard) -> its path."""
  samples = {}
  for i, s in enumerate(source.samples):
    if s.shard != shard:
      continue
    raw = source.raw(i)
    caption = raw["caption_bytes"].decode("utf-8", errors="replace")
    ids = tokenizer_lib.tokenize(caption)[0]
    samples[s.key] = [list(map(int, m)) for m in extractor(caption, ids)]
  path = cache_path(out_dir, source.shards[shard])
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"extractor": extractor.name, "bank": bank_name, "samples": samples}, f)
  os.replace(tmp, path)
  return path


def read_cache(path: str) -> dict[str, np.ndarray]:
  """key -> (n, 3) int32 [bank id, start, end] of a shard's cache file."""
  from input_pipeline.files import DataError  # pylint: disable=g-import-not-at-top
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    return {k: np.asarray(v, np.int32).reshape(-1, 3) for k, v in data["samples"].items()}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f"{path}: not a concept cache written by `python -m input_pipeline.caption_concepts "
                    f"extract` ({type(e).__name__}: {e})") from None


def main(argv=None) -> int:
  from input_pipeline.webdataset import WebDatasetSource  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="python -m input_pipeline.caption_concepts", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  ex = sub.add_parser("extract", help="write each shard's concepts beside the other shards' (JSON)")
  ex.add_argument("--shards", required=True, help="webdataset shard list, e.g. 'data/{00000..00295}.tar'")
  ex.add_argument("--out", required=True, help="folder for NNNNN.concepts.json")
  ex.add_argument("--extractor", default="spacy", choices=EXTRACTORS)
  ex.add_argument("--bank", default=concepts_lib.RELEASE_BANK, help="shipped bank name or file")
  ex.add_argument("--rank", type=int, default=0, help="this worker's index (shards rank, rank+world, ...)")
  ex.add_argument("--world", type=int, default=1, help="number of workers")
  ex.add_argument("--skip_bad", action="store_true")
  args = p.parse_args(argv)
  bank = concepts_lib.load_bank(args.bank)
  try:
    extractor = make_extractor(args.extractor, bank)
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  source = WebDatasetSource(args.shards, skip_bad=args.skip_bad)
  os.makedirs(args.out, exist_ok=True)
  for shard in range(args.rank, len(source.shards), args.world):
    print(extract_shard(source, shard, extractor, args.bank, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
