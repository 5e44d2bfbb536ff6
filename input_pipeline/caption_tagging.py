"""Caption nouns as GKC's data mapper takes them: the words a part-of-speech tagger marks NN, NNS,
NNP or NNPS (detr_panoptic_caption_syn_kd_dataset_mapper.py 337–339).

The release tags with NLTK (`nltk.word_tokenize`, `nltk.pos_tag`: the averaged perceptron tagger,
downloaded by its nltk_install.py). That model is a download, not part of the `nltk` package, so it
is used when NLTK finds it (`python -m nltk.downloader averaged_perceptron_tagger_eng punkt_tab`)
and otherwise the tagger that ships inside the `textblob` package (Pattern's Brill-style lexicon
tagger, Penn Treebank tags; no download). Words are split by NLTK's word tokenizer (what
`word_tokenize` runs on each sentence; it needs no data). docs/gkc.md gives the fallback's
agreement with hand-checked nouns (tests/data/gkc_captions/caption_nouns.json).
"""
from __future__ import annotations

import functools

NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")


@functools.lru_cache(maxsize=1)
def _tokenizer():
  from nltk.tokenize import NLTKWordTokenizer
  return NLTKWordTokenizer()


def _nltk_tagger():
  import nltk
  for name in ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"):
    try:
      nltk.data.find(name)
    except LookupError:
      continue
    return lambda tokens: nltk.pos_tag(tokens)
  return None


@functools.lru_cache(maxsize=1)
def tagger():
  """(name, tokens -> [(word, tag)]): NLTK's perceptron tagger when its model is installed, else
  TextBlob's bundled Pattern tagger."""
  try:
    official = _nltk_tagger()
  except ImportError:
    official = None
  if official is not None:
    return "nltk averaged perceptron", official
  try:
    from textblob.en.taggers import PatternTagger
  except ImportError:
    raise ImportError("caption grounding tags caption nouns with NLTK's perceptron tagger or, "
                      "offline, TextBlob's bundled one: pip install nltk textblob (or "
                      "config.loss.caption_weight=0)") from None
  pattern = PatternTagger()
  return "textblob pattern", lambda tokens: pattern.tag(" ".join(tokens), tokenize=False)


def caption_nouns(caption: str) -> list[str]:
  """The caption's nouns in order (repeats kept, as the release keeps them)."""
  tokens = _tokenizer().tokenize(caption)
  return [word for word, tag in tagger()[1](tokens) if tag in NOUN_TAGS] if tokens else []
