"""Builds GKC's synonym sets from WordNet 3.0 (preparation only: needs the `prep` extra, nltk).

For each class of a training vocabulary: the cleaned class name, then the lemmas of its WordNet
noun synsets (`synsets(name, NOUN)`, or the synsets a hand fix names), underscores as spaces,
then a hand fix's extra synonyms. A lemma is dropped when it repeats an earlier one of the class
(case-insensitive), is another class's cleaned name, or is a lemma of another class too: a
synonym then names exactly one class. Hand fixes (`vocab/synonyms/hand_fixes.json`, each with its
reason) cover names WordNet lacks and names whose other senses are not what the class shows.

Run `python -m input_pipeline.synonyms build` (see vocab/synonyms/README.md).
"""
import json
import os
import shutil
import tempfile
import warnings

from input_pipeline import synonyms as synonyms_lib
from input_pipeline import vocab as vocab_lib

DEFAULT_WORDNET = "/usr/share/wordnet"  # Debian's wordnet-base
# WordNet 3.0's lexicographer files in file-number order (lexnames(5WN)); Debian omits the
# `lexnames` file that NLTK's reader insists on, so it is written from this table.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession "
    "noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time "
    "verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption "
    "verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()
_FIX_KEYS = {"senses", "synonyms", "reason"}


class WordNet:
  """NLTK's WordNet reader over a plain WordNet 3.0 `dict` directory (e.g. Debian's)."""

  def __init__(self, dict_dir: str = DEFAULT_WORDNET):
    try:
      import nltk
      from nltk.corpus.reader import wordnet
    except ImportError:
      raise ImportError("building synonym sets needs nltk: pip install -c constraints.txt "
                        "-e '.[prep]'") from None
    if not os.path.isfile(os.path.join(dict_dir, "index.noun")):
      raise FileNotFoundError(f"{dict_dir}: no WordNet dictionary (index.noun); install it with "
                              "'apt-get install wordnet-base' or pass --wordnet=DIR")

    class Reader(wordnet.WordNetCorpusReader):
      def map_wn(self, version="wordnet"):
        return None  # the cross-version map needs NLTK's own WordNet download; lemmas don't

    # NLTK reads only under its data path and refuses symlinks leaving the root: use a private copy.
    self._dir = tempfile.mkdtemp(prefix="wordnet-")
    for name in os.listdir(dict_dir):
      if os.path.isfile(os.path.join(dict_dir, name)):
        shutil.copyfile(os.path.join(dict_dir, name), os.path.join(self._dir, name))
    if not os.path.exists(os.path.join(self._dir, "lexnames")):
      with open(os.path.join(self._dir, "lexnames"), "w") as f:
        f.writelines(f"{i:02d}\t{name}\t0\n" for i, name in enumerate(_LEXNAMES))
    nltk.data.path.append(self._dir)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "multilingual functions are not available": not used
      self.reader = Reader(self._dir, None)
    self.version = self.reader.get_version()
    if self.version != "3.0":
      raise ValueError(f"{dict_dir} holds WordNet {self.version}; the shipped sets are WordNet 3.0's")

  def close(self):
    shutil.rmtree(self._dir, ignore_errors=True)

  def noun_synsets(self, name: str) -> list[str]:
    return [s.name() for s in self.reader.synsets(name.replace(" ", "_"), self.reader.NOUN)]

  def lemmas(self, synset: str) -> list[str]:
    try:
      return [lemma.name().replace("_", " ") for lemma in self.reader.synset(synset).lemmas()]
    except Exception as e:  # nltk raises WordNetError / ValueError for unknown or malformed names
      raise ValueError(f"WordNet 3.0 has no synset {synset!r} ({e})") from None


def load_hand_fixes(path: str | None = None) -> dict:
  """{cleaned name: {senses, synonyms?, reason}} from hand_fixes.json, checked entry by entry."""
  path = path or synonyms_lib.data_path("hand_fixes.json")
  with open(path, encoding="utf-8") as f:
    fixes = json.load(f)
  for name, fix in fixes.items():
    extra = set(fix) - _FIX_KEYS
    if extra or not isinstance(fix.get("senses"), list) or not str(fix.get("reason", "")).strip():
      raise ValueError(f"{path}: entry {name!r} needs 'senses' (a list of WordNet synset names, "
                       f"[] for none) and a 'reason'; optional 'synonyms'; got keys {sorted(fix)}")
  return fixes


def build_synonym_sets(vocabulary: str, wordnet: WordNet, fixes: dict) -> tuple[list[list[str]], set]:
  """(synonym lists in label order, the hand-fix names used) for a shipped vocabulary."""
  names = [synonyms_lib.clean_name(n) for n in vocab_lib.class_names(vocabulary)]
  if len(set(names)) != len(names):
    raise ValueError(f"{vocabulary}: cleaned class names collide: "
                     f"{sorted({n for n in names if names.count(n) > 1})}")
  key = synonyms_lib.name_key
  lemmas, used = [], set()
  for name in names:
    fix = fixes.get(name)
    senses = fix["senses"] if fix else wordnet.noun_synsets(name)
    if fix is None and not senses:
      raise ValueError(f"{vocabulary}: WordNet has no noun {name!r}; add a hand fix for it to "
                       "hand_fixes.json (senses [] keeps only the name)")
    if fix:
      used.add(name)
    lemmas.append([lemma for s in senses for lemma in wordnet.lemmas(s)] + (fix or {}).get("synonyms", []))
  owners = {}  # lemma key -> classes listing it
  for c, found in enumerate(lemmas):
    for lemma in found:
      owners.setdefault(key(lemma), set()).add(c)
  own = {key(n) for n in names}
  sets = []
  for c, (name, found) in enumerate(zip(names, lemmas)):
    out, seen = [name], {key(name)}
    for lemma in found:
      k = key(lemma)
      if k not in seen and k not in own and owners[k] == {c}:
        out.append(lemma)
      seen.add(k)
    sets.append(out)
  return sets, used


def build_files(dict_dir: str = DEFAULT_WORDNET, fixes_path: str | None = None) -> dict[str, str]:
  """{file name: text} of every shipped synonym file, built from WordNet and the hand fixes."""
  fixes = load_hand_fixes(fixes_path)
  wordnet = WordNet(dict_dir)
  try:
    files, used = {}, set()
    for vocabulary in synonyms_lib.SYNONYM_VOCABULARIES:
      sets, fixed = build_synonym_sets(vocabulary, wordnet, fixes)
      used |= fixed
      files[synonyms_lib.file_name(vocabulary)] = synonyms_lib.format_synonyms(sets)
  finally:
    wordnet.close()
  unused = sorted(set(fixes) - used)
  if unused:
    raise ValueError(f"hand fixes {unused} match no class of {synonyms_lib.SYNONYM_VOCABULARIES}; "
                     "remove them")
  return files
