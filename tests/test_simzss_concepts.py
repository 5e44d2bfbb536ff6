"""SimZSS concepts as the release extracts them (spaCy noun chunks -> last compound + root lemma,
kept if in the release's 573-name bank, ≤ 32 per caption, < 16 tokens) and the named fallback's
agreement with that rule on a hand-checked sample (tests/data/simzss/concepts_hand_checked.tsv).

spaCy's English models cannot be installed here, so the parse is given by hand: `_Doc` stands in
for the parts of spaCy's Doc the rule reads (noun_chunks, root, children, dep_, lemma_, str)."""
import json
import os

import numpy as np
import pytest

from input_pipeline import caption_concepts as cc
from input_pipeline.concepts import load_bank
from ovs_jax.tokenizer import tokenize

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "simzss", "concepts_hand_checked.tsv")
BANK = load_bank("simzss_release")
INDEX = {n: i for i, n in enumerate(BANK)}


class _Token:
  def __init__(self, text, lemma=None, dep="", children=()):
    self.text, self.lemma_, self.dep_, self.children = text, lemma or text, dep, list(children)

  def __str__(self):
    return self.text


class _Chunk(list):
  root = None


class _Doc:
  def __init__(self, chunks):
    self.noun_chunks = chunks


def _doc(specs):
  """'chunk text|root|lemma|compound' per chunk -> a Doc stand-in."""
  chunks = []
  for spec in specs:
    text, root, lemma, compound = spec.split("|")
    kids = [_Token(compound, dep="compound")] if compound else []
    chunk = _Chunk(_Token(w) for w in text.split())
    chunk.root = _Token(root, lemma, "ROOT", kids)
    chunks.append(chunk)
  return _Doc(chunks)


def _sample():
  rows = []
  with open(SAMPLE, encoding="utf-8") as f:
    for line in f:
      if line.strip() and not line.startswith("#"):
        caption, *chunks = line.rstrip("\n").split("\t")
        rows.append((caption, _doc(chunks)))
  return rows


def test_release_bank_is_the_releases():
  assert len(BANK) == 573 and BANK == sorted(BANK)  # 574 lines, "bed " and "bed" are one name
  assert {"stop sign", "traffic light", "light", "watch", "background"} <= set(BANK)


def test_release_rule_on_hand_parsed_captions():
  ids = tokenize("A bus stop with people waiting for the bus.")[0]
  # "bus stop" is not a bank name: dropped, though "bus" is one; "people" neither.
  assert cc.release_rule(_doc(["a bus stop|stop|stop|bus", "people|people|people|", "the bus|bus|bus|"]),
                         ids, INDEX) == [(INDEX["bus"], 9, 10)]
  ids = tokenize("two dogs near a stop sign")[0]
  got = cc.release_rule(_doc(["two dogs|dogs|dog|", "a stop sign|sign|sign|stop"]), ids, INDEX)
  assert got == [(INDEX["dog"], 2, 3), (INDEX["stop sign"], 5, 7)]  # the plural's tokens, lemma's id
  # At most 32 chunks are taken, counted before the bank filter.
  caption = " and ".join(["a man"] * 32 + ["a dog"])
  doc = _doc(["a man|man|man|"] * 32 + ["a dog|dog|dog|"])
  assert cc.release_rule(doc, tokenize(caption, 200)[0], INDEX) == []


def _agreement(extractor):
  same, hits, wanted, found = 0, 0, 0, 0
  for caption, doc in _sample():
    ids = tokenize(caption)[0]
    want = set(cc.release_rule(doc, ids, INDEX))
    got = set(map(tuple, extractor(caption, ids)))
    same += want == got
    hits, wanted, found = hits + len(want & got), wanted + len(want), found + len(got)
  return same, hits / wanted, hits / found


def test_fallback_agreement_with_the_release_rule_on_the_hand_checked_sample():
  """The figures docs/simzss.md states: captions whose concepts are identical (id and span),
  recall and precision of concepts, for the fallback and for plain bank matching."""
  assert len(_sample()) == 40
  same, recall, precision = _agreement(cc.BankMatch(BANK))
  plain = cc.BankMatch(BANK)
  plain_same, plain_recall, plain_precision = _agreement(lambda c, i: plain.matcher.find(i))
  print(f"bank-match: {same}/40 captions, recall {recall:.3f}, precision {precision:.3f}; "
        f"plain: {plain_same}/40, recall {plain_recall:.3f}, precision {plain_precision:.3f}")
  assert (same, round(recall, 3), round(precision, 3)) == EXPECTED
  assert same >= plain_same


EXPECTED = (34, 0.986, 0.919)  # measured; the first version (next-word rule only) gave (30, 0.986, 0.829)


def test_shard_cache_round_trip(tmp_path):
  from test_simzss_webdataset import CAPTIONS, write_shards
  from input_pipeline.webdataset import WebDatasetSource
  src = WebDatasetSource(write_shards(str(tmp_path / "s"), shards=2, per_shard=3))
  out = str(tmp_path / "concepts")
  assert cc.main(["extract", "--shards", " :: ".join(src.shards), "--out", out,
                  "--extractor", "bank-match"]) == 0
  cache = cc.read_cache(cc.cache_path(out, src.shards[1]))
  assert sorted(cache) == ["000010000", "000010001", "000010002"]
  caption = CAPTIONS[3]
  want = cc.BankMatch(BANK)(caption, tokenize(caption)[0])
  np.testing.assert_array_equal(cache["000010000"], np.asarray(want, np.int32).reshape(-1, 3))
  with open(os.path.join(out, "00000.concepts.json")) as f:
    assert json.load(f)["extractor"] == "bank-match"
  # The source reads the cache; the training map takes the cached concepts over its own extractor.
  from input_pipeline.captions import CaptionTokens
  cached = WebDatasetSource(" :: ".join(src.shards), concepts_dir=out)
  rec = cached[3]
  np.testing.assert_array_equal(rec["concepts"], cache["000010000"])
  rec["concepts"] = np.asarray([[7, 2, 4]], np.int32)
  got = CaptionTokens("simzss_release").random_map(rec, np.random.default_rng(0))
  assert got["concept_ids"][:2].tolist() == [7, -1] and got["concept_ends"][0] == 4
  with pytest.raises(Exception, match="00000.concepts.json: not a concept cache"):
    WebDatasetSource(src.shards[0], concepts_dir=str(tmp_path))[0]
  # Without spaCy's model the official extraction says what it needs (1), or it runs (0).
  assert cc.main(["extract", "--shards", src.shards[0], "--out", out, "--extractor", "spacy"]) in (0, 1)
