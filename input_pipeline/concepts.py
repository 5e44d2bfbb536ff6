"""SimZSS concepts: the concept bank and each caption's concept spans in its CLIP token ids.

The bank (`vocab/concept_bank.txt`, one `id:name` per line) is every name of every class of our
evaluation vocabularies, cleaned, lower-cased and with plural duplicates folded into their singular,
plus "background"; `python -m input_pipeline.concepts build` regenerates it (`--check` verifies the
shipped file). A caption's concepts are the bank phrases it contains, singular or plural,
found in its token ids: CLIP BPE tokenises word by word, so a phrase is a contiguous run of ids
that starts at a word start. Matches are leftmost-longest without overlaps ("traffic light"
beats "light"); no NLP model is involved.

    bank = load_bank()
    spans = ConceptMatcher(bank)(tokenize(captions))   # concept_ids, concept_starts, concept_ends
"""
from __future__ import annotations

import argparse
import functools
import importlib.resources
import os
import re
import sys

import numpy as np

from input_pipeline import vocab as vocab_lib
from ovs_jax import tokenizer as tokenizer_lib

BANK_FILE = "concept_bank.txt"
# The release's 573 names (tileb1/simzss @2142ac5, class_names/7_dataset_eval_merged.txt), ids in
# its order; `concept_bank="simzss_release"` (the recipe) names it. Our stoplist is not applied to
# it: the release keeps "light", "watch", ... and its spaCy rule decides by part of speech.
RELEASE_BANK = "simzss_release"
SHIPPED = {"": BANK_FILE, "ours": BANK_FILE, RELEASE_BANK: "simzss_release_bank.txt"}
BACKGROUND = "background"
MAX_CONCEPTS = 32        # per caption (SimZSS)
MAX_CONCEPT_TOKENS = 15  # per concept phrase (SimZSS)
# The vocabularies of the benchmarks `input_pipeline.datasets` evaluates on (demo included: its
# recipe trains on the demo captions). LVIS and Mapillary are shipped but not evaluated.
SOURCES = ("ade20k_150", "ade20k_847", "pc_59", "pc_459", "voc_20", "voc_21", "coco_stuff_171",
           "coco_panoptic_133", "cityscapes_19", "demo")
# Names whose usual role in a caption is not the thing they label ("a man can ...", "on top of",
# "solid colours"); matching them without a part-of-speech tagger would mostly add false concepts.
# Reviewed by hand over the built bank (see vocab/README.md).
STOPLIST = frozenset({
    "can", "top", "back", "side", "well", "unknown", "system", "support",             # not things
    "stand", "stands", "hold", "push", "press", "fly", "skip", "saw", "watch", "cross",  # verbs
    "drop", "light", "solid", "structural", "hollow", "grand", "fluorescent", "mobile"})  # adjectives
# COCO-Stuff's catch-all labels ("wall-other", "desk-stuff") name their base class.
_CATCH_ALL = re.compile(r"^(.+)-(other|stuff)$")
_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "people",
              "foot": "feet", "tooth": "teeth", "mouse": "mice", "goose": "geese", "ox": "oxen",
              "louse": "lice", "die": "dice", "sheep": "sheep", "deer": "deer", "fish": "fish"}
_IRREGULAR_SINGULAR = {p: s for s, p in _IRREGULAR.items()}


class ConceptBankError(ValueError):
  """A concept bank file that is not a valid bank; the message names the file, line and rule."""


def clean_name(name: str) -> str | None:
  """A vocabulary name as a bank concept (lower case, single spaces), or None when dropped."""
  name = " ".join(name.lower().split())
  m = _CATCH_ALL.match(name)
  name = m.group(1) if m else name
  return None if not name or name in STOPLIST or name == vocab_lib.INVALID else name


def plural_forms(word: str) -> tuple[str, ...]:
  """English plurals of a singular noun by rule (irregulars listed), the usual spelling first;
  a spare spelling ('knifes') is harmless because a caption never contains it."""
  if word in _IRREGULAR:
    return (_IRREGULAR[word],)
  if re.search(r"(s|x|z|ch|sh)$", word):
    return (word + "es",)
  if re.search(r"[^aeiou]y$", word):
    return (word[:-1] + "ies",)
  if word.endswith("fe"):
    return (word[:-2] + "ves", word + "s")
  if word.endswith("f"):
    return (word[:-1] + "ves", word + "s")
  if re.search(r"[^aeiou]o$", word):
    return (word + "es", word + "s")
  return (word + "s",)


def singular_forms(word: str) -> set[str]:
  """Singulars of a plural-looking noun by rule; empty when the word does not look plural
  ('glass', 'bus', 'tennis' end in s but are singular)."""
  if word in _IRREGULAR_SINGULAR:
    return {_IRREGULAR_SINGULAR[word]}
  if len(word) < 4 or not word.endswith("s") or re.search(r"(ss|us|is|ous)$", word):
    return set()
  if word.endswith("ies"):
    return {word[:-3] + "y"}
  if word.endswith("ves"):
    return {word[:-3] + "f", word[:-3] + "fe"}
  if re.search(r"(s|x|z|ch|sh|[^aeiou]o)es$", word):
    return {word[:-2]}
  return {word[:-1]}


def last_word_forms(phrase: str, forms) -> list[str]:
  """`forms` (plural_forms or singular_forms) applied to the last word of `phrase`, in order."""
  head, _, last = phrase.rpartition(" ")
  return [f"{head} {f}" if head else f for f in forms(last)] if last.isalpha() else []


def build_bank(sources=SOURCES) -> list[str]:
  """The concept names: "background" first, then every cleaned name of `sources` sorted, a
  plural dropped where its singular is also a name (it is matched as that name's plural)."""
  names = {BACKGROUND}
  for source in sources:
    for synonyms in vocab_lib.load_vocabulary(source):
      clean = {n for n in map(clean_name, synonyms) if n}
      # "wall-brick" next to "wall brick", "ash-bin" next to "ashbin": the hyphen is a label id's
      names.update(n for n in clean if not ({n.replace("-", " "), n.replace("-", "")} - {n}) & clean)
  names -= {p for n in names for p in last_word_forms(n, plural_forms) if p != n}
  return [BACKGROUND] + sorted(names - {BACKGROUND})


def format_bank(names: list[str], sources=SOURCES) -> str:
  header = ["# SimZSS concept bank: generated by `python -m input_pipeline.concepts build`; do not "
            "edit (see vocab/README.md).", f"# sources: {', '.join(sources)}", f"# count: {len(names)}"]
  return "\n".join(header + [f"{i}:{n}" for i, n in enumerate(names)]) + "\n"


def _token_runs(phrases: list[str]) -> list[tuple[int, ...]]:
  """Each phrase's token ids without SOT/EOT/padding."""
  if not phrases:
    return []
  eot = tokenizer_lib.clip_tokenizer().token_to_id(tokenizer_lib.EOT)
  return [tuple(int(t) for t in row[1:list(row).index(eot)])
          for row in tokenizer_lib.tokenize(phrases, context_length=tokenizer_lib.CONTEXT_LENGTH)]


def parse_bank(text: str, where: str = BANK_FILE, stoplist: bool = True) -> list[str]:
  """Validates a bank file's text: ids 0, 1, 2, ... in order; each name non-empty, already
  clean, unique, tokenised to at most MAX_CONCEPT_TOKENS ids; "background" present; the
  '# count:' header, when given, equal to the number of names."""
  names, count = [], None
  for n, line in enumerate(text.splitlines(), 1):
    if line.startswith("# count:"):
      count = line.partition(":")[2].strip()
      if not count.isdigit():
        raise ConceptBankError(f"{where}:{n}: expected '# count: <number>', got {line!r}")
      count = int(count)
    if not line.strip() or line.startswith("#"):
      continue
    file_id, sep, name = line.partition(":")
    if not sep or not file_id.isdigit() or int(file_id) != len(names):
      raise ConceptBankError(f"{where}:{n}: expected '{len(names)}:<name>', got {line!r}")
    if (clean_name(name) if stoplist else " ".join(name.lower().split())) != name:
      raise ConceptBankError(f"{where}:{n}: {name!r} is not a clean concept name (lower case, "
                             "single inner spaces, not in the stoplist); rebuild the bank")
    names.append(name)
  seen = {}
  for i, name in enumerate(names):
    if name in seen:
      raise ConceptBankError(f"{where}: {name!r} is concept {seen[name]} and {i}; names must be unique")
    seen[name] = i
  if stoplist and BACKGROUND not in seen:
    raise ConceptBankError(f"{where}: no {BACKGROUND!r} concept")
  if count is not None and count != len(names):
    raise ConceptBankError(f"{where}: the header says {count} concepts but the file lists {len(names)}")
  too_long = [n for n, run in zip(names, _token_runs(names)) if len(run) > MAX_CONCEPT_TOKENS]
  if too_long:
    raise ConceptBankError(f"{where}: {too_long[:5]} tokenise to more than {MAX_CONCEPT_TOKENS} ids")
  return names


def shipped_bank_path(name: str = "") -> str:
  return str(importlib.resources.files(vocab_lib).joinpath(SHIPPED[name]))


@functools.cache
def _load(path: str) -> tuple[str, ...]:
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise ConceptBankError(f"{path}: cannot read the concept bank ({e.strerror})") from None
  release = os.path.basename(path) == SHIPPED[RELEASE_BANK]
  return tuple(parse_bank(text, path, stoplist=not release))


def load_bank(path: str | None = None) -> list[str]:
  """The concept names (concept id = index), validated: a file, or a shipped bank by name (SHIPPED:
  "" or "ours" ours, "simzss_release" the release's)."""
  return list(_load(shipped_bank_path(path or "") if (path or "") in SHIPPED else path))


def surface_forms(bank: list[str]) -> dict[str, int]:
  """Every phrase that names a concept -> its id: the names themselves, then the plural and
  singular forms of their last word. A form that is itself a name, or that several names
  derive, belongs to the name itself or to the first of them in bank order."""
  forms = {name: i for i, name in enumerate(bank)}
  for i, name in enumerate(bank):
    for form in last_word_forms(name, plural_forms) + sorted(last_word_forms(name, singular_forms)):
      forms.setdefault(form, i)
  return forms


class ConceptMatcher:
  """Finds bank concepts in tokenised captions with a trie over the forms' token-id runs."""

  def __init__(self, bank: list[str], max_concepts: int = MAX_CONCEPTS,
               max_tokens: int = MAX_CONCEPT_TOKENS):
    self.bank, self.max_concepts = list(bank), max_concepts
    self.forms = surface_forms(self.bank)
    phrases = list(self.forms)
    self.trie: dict = {}
    for phrase, run in zip(phrases, _token_runs(phrases)):
      if 0 < len(run) <= max_tokens:
        node = self.trie
        for t in run:
          node = node.setdefault(t, {})
        node.setdefault(None, self.forms[phrase])  # None marks a complete form
    vocab, _ = tokenizer_lib.vocabulary_and_merges()
    self.word_end = np.zeros(len(vocab), bool)  # a token ending a word: the next one starts one
    for token, i in vocab.items():
      self.word_end[i] = token.endswith("</w>") or token == tokenizer_lib.SOT
    self.sot = vocab[tokenizer_lib.SOT]

  def find(self, ids) -> list[tuple[int, int, int]]:
    """(concept id, start, end) of each match in one caption's token ids (any length, SOT
    first), token positions [start, end), leftmost-longest, at most max_concepts."""
    ids = [int(t) for t in ids]
    found, i = [], 1 if ids and ids[0] == self.sot else 0
    while i < len(ids) and len(found) < self.max_concepts:
      best, node, j = None, self.trie, i
      if i == 0 or self.word_end[ids[i - 1]]:
        while j < len(ids) and ids[j] in node:
          node = node[ids[j]]
          j += 1
          if None in node:
            best = (node[None], i, j)
      if best:
        found.append(best)
        i = best[2]
      else:
        i += 1
    return found

  def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Token ids (..., L) -> fixed-shape arrays for the data pipeline, C = max_concepts:
      concept_ids     (..., C) int32 bank index, -1 where no concept
      concept_starts  (..., C) int32 first token position of the concept, 0 where none
      concept_ends    (..., C) int32 one past its last token, 0 where none (end - start <= 15)
    """
    ids = np.asarray(ids)
    flat = ids.reshape(-1, ids.shape[-1])
    out = np.zeros((3, len(flat), self.max_concepts), np.int32)
    out[0] = -1
    for r, row in enumerate(flat):
      for k, match in enumerate(self.find(row)):
        out[:, r, k] = match
    shape = ids.shape[:-1] + (self.max_concepts,)
    return {"concept_ids": out[0].reshape(shape), "concept_starts": out[1].reshape(shape),
            "concept_ends": out[2].reshape(shape)}

  def match_text(self, caption: str) -> list[tuple[str, int, int]]:
    """(concept name, start, end) in `caption`'s token ids, for reading and debugging."""
    return [(self.bank[c], s, e) for c, s, e in self.find(tokenizer_lib.tokenize(caption)[0])]


def concept_token_mask(starts, ends, length: int = tokenizer_lib.CONTEXT_LENGTH):
  """(..., C) starts/ends -> (..., C, length) bool, True on each concept's tokens; works on numpy
  and jax arrays (the local loss sums projected token embeddings over each row)."""
  positions = np.arange(length)
  return (starts[..., None] <= positions) & (positions < ends[..., None])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m input_pipeline.concepts", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  build = sub.add_parser("build", help="write the concept bank built from the shipped vocabularies")
  build.add_argument("--out", default=None, help=f"output file (default: the shipped {BANK_FILE})")
  build.add_argument("--check", action="store_true",
                     help="only compare with the existing file; exit 1 when it differs")
  args = parser.parse_args(argv)
  path = args.out or shipped_bank_path()
  text = format_bank(build_bank())
  parse_bank(text, "<built bank>")
  if args.check:
    try:
      with open(path, encoding="utf-8") as f:
        same = f.read() == text
    except FileNotFoundError:
      same = False
    print(f"{path}: {'up to date' if same else 'differs from the shipped vocabularies; rebuild it'}")
    return 0 if same else 1
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  print(f"{path}: {text.count(chr(10)) - 3} concepts")
  return 0


if __name__ == "__main__":
  sys.exit(main())
