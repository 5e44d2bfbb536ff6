"""Dataset vocabularies: class names with synonyms, in label order, and zero-shot splits.

A vocabulary is `list[list[str]]`: one entry per class (label id = position), each a list of
names whose first element is the main name. See README.md here for each file's id convention.
"""
import functools
import importlib.resources
import logging
import re
import unicodedata

INVALID = "invalid_class_id"

log = logging.getLogger(__name__)


class VocabularyError(ValueError):
  """A class list that breaks `parse_vocabulary`'s grammar; the message says where and how."""

# name -> (file, slice applied after dropping `invalid_class_id` lines)
_FILES = {
    "ade20k_150": ("ade20k_150_with_prompt_eng.txt", slice(None)),
    "ade20k_847": ("ade20k_847_with_prompt_eng.txt", slice(None)),
    "pc_59": ("pascal_ctx_59_with_prompt_eng.txt", slice(None)),
    "pc_459": ("pascal_ctx_459_with_prompt_eng.txt", slice(None)),
    "voc_21": ("pascal_voc_21_with_prompt_eng.txt", slice(None)),
    "voc_20": ("pascal_voc_21_with_prompt_eng.txt", slice(1, None)),  # drop background
    "coco_stuff_171": ("coco_stuff_with_prompt_eng.txt", slice(None)),
    "coco_panoptic_133": ("coco_panoptic_with_prompt_eng.txt", slice(None)),
    "cityscapes_19": ("cityscapes_with_prompt_eng.txt", slice(None)),
    "mapillary_65": ("mapillary_vistas_with_prompt_eng.txt", slice(None)),
    "lvis_1203": ("lvis_1203_with_prompt_eng.txt", slice(None)),
    "demo": ("demo.txt", slice(None)),
}

# Zero-shot protocols: main names of the unseen classes. VOC-20 and COCO-Stuff-171: SPNet / ZS3Net
# (the splits MVP-SEG reports); PC-59: the 10 unseen classes of DESIGN §7 (label ids 0, 6, 7, 14,
# 19, 24, 31, 33, 48, 54); demo: ours (docs/data.md#the-demo-world), 2 of its 12 stuff classes and
# 5 of its 18 things held out of training, none a recolouring or renaming of a seen class.
_UNSEEN = {
    "voc_20": ("pottedplant", "sheep", "sofa", "train", "tvmonitor"),
    "coco_stuff_171": ("frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase",
                       "giraffe", "cow", "road", "wall-concrete", "tree", "grass", "river",
                       "clouds", "playingfield"),
    "pc_59": ("aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard", "motorbike", "sofa",
              "tvmonitor"),
    "demo": ("snow", "tiled floor", "star", "kite", "car", "mushroom", "umbrella"),
}
_UNSEEN["voc_21"] = _UNSEEN["voc_20"]


def vocabulary_names() -> list[str]:
  """Names accepted by `load_vocabulary`."""
  return sorted(_FILES)


@functools.cache
def _load_entries(name: str) -> tuple[tuple[int, tuple[str, ...]], ...]:
  if name not in _FILES:
    raise KeyError(f"unknown vocabulary {name!r}; expected one of {vocabulary_names()}")
  file, keep = _FILES[name]
  text = importlib.resources.files(__name__).joinpath(file).read_text(encoding="utf-8")
  entries = []
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    file_id, sep, names = line.partition(":")
    if not sep or not file_id.strip().isdigit():
      raise ValueError(f"{file}:{n}: expected 'id:name,synonym,...', got {line!r}")
    if names.strip() != INVALID:
      entries.append((int(file_id), tuple(s.strip() for s in names.split(",") if s.strip())))
  return tuple(entries[keep])


def load_vocabulary(name: str) -> list[list[str]]:
  """Class names with synonyms for a shipped vocabulary, in label order (label id = index)."""
  return [list(names) for _, names in _load_entries(name)]


def vocabulary_file_ids(name: str) -> list[int]:
  """The id each class has in its source file (e.g. COCO category ids), in label order."""
  return [file_id for file_id, _ in _load_entries(name)]


def class_names(name: str) -> list[str]:
  """Main name of every class, in label order."""
  return [names[0] for names in load_vocabulary(name)]


_ID_PREFIX = re.compile(r"\s*(\d+)\s*:(.*)", re.S)


def _token_key(name: str) -> str:
  """`name` as CLIP's tokenizer normalises it (ovs_jax/tokenizer.py: NFC, runs of whitespace -> one
  space, lowercase): two names with one key get one embedding."""
  return " ".join(unicodedata.normalize("NFC", name).lower().split())


def parse_vocabulary(text: str, where: str = "vocabulary") -> list[list[str]]:
  """Parses a user vocabulary (`--classes`, `--vocab` files and inline text); one grammar:

  * classes are separated by ';' or newlines; blank lines and a ';' ending a line are layout;
  * a class is names separated by ','; the first is its main name; label id = position;
  * each name loses its surrounding whitespace and nothing else (case, inner spaces and
    punctuation are kept);
  * an optional 'id:' prefix (the shipped file format) must be on every class or on none, with
    ids 0, 1, 2, ... in order: it is syntax, not part of the name ('0:1:1 scale model' names
    '1:1 scale model');
  * errors: an empty class ('a;;b'), an empty name ('sofa,,couch'), a name in two classes; a
    warning: a name repeated within one class.

  "sofa, couch; lamp; cat" -> [["sofa", "couch"], ["lamp"], ["cat"]]. `where` names the source
  (e.g. the file) in messages.
  """
  text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark (Windows editors) is not a name
  items = []
  for line in text.splitlines():
    if line.strip():
      parts = line.split(";")
      items += parts[:-1] if len(parts) > 1 and not parts[-1].strip() else parts
  if not any(name.strip() for item in items for name in item.split(",")):
    raise VocabularyError(f"{where} {text!r} has no class names")
  prefixed = [_ID_PREFIX.fullmatch(item) for item in items]
  if any(prefixed):
    if not all(prefixed):
      i, j = prefixed.index(None), next(k for k, m in enumerate(prefixed) if m)
      raise VocabularyError(f"{where}: class {j} ({items[j].strip()!r}) has an 'id:' prefix but class {i} "
                       f"({items[i].strip()!r}) has none; prefix every class with its label id "
                       "(0:, 1:, ...) or none")
    ids = [int(m.group(1)) for m in prefixed]
    if ids != list(range(len(ids))):
      raise VocabularyError(f"{where}: class ids {ids[:8]}{'...' if len(ids) > 8 else ''} are not 0, 1, "
                       "2, ... in order; a class's label id is its position (for a shipped "
                       f"vocabulary give its name: {', '.join(vocabulary_names())})")
    items = [m.group(2) for m in prefixed]
  vocab, owner = [], {}
  for c, item in enumerate(items):
    names = [n.replace("\ufeff", "").strip() for n in item.split(",")]  # BOMs are invisible
    if not any(names):
      raise VocabularyError(f"{where}: class {c} is empty ({item!r} between ';'); remove the extra "
                       "separator or name the class")
    if not all(names):
      raise VocabularyError(f"{where}: class {c} ({item.strip()!r}) has an empty name; remove the extra ','")
    keys = [_token_key(n) for n in names]
    for n, key in zip(names, keys):
      if key in owner and owner[key] != c:
        raise VocabularyError(f"{where}: {n!r} names both class {owner[key]} ({vocab[owner[key]][0]!r}) and "
                         f"class {c} ({names[0]!r}); a name may belong to one class only")
      owner[key] = c
    repeated = sorted({n for n, key in zip(names, keys) if keys.count(key) > 1})
    if repeated:
      log.warning("%s: class %d (%r) lists %s more than once", where, c, names[0], repeated)
    vocab.append(names)
  return vocab


def read_vocabulary_file(path) -> list[list[str]]:
  """A vocabulary file (UTF-8, with or without a byte-order mark; any line endings) parsed by
  `parse_vocabulary`; another encoding is an error naming the file and the first bad byte."""
  data = open(path, "rb").read()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise VocabularyError(f"{path}: not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); save it as "
                          "UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`") from None
  return parse_vocabulary(text, where=str(path))


def get_vocabulary(spec: str) -> list[list[str]]:
  """A shipped vocabulary by name, or an inline one parsed by `parse_vocabulary`."""
  return load_vocabulary(spec) if spec in _FILES else parse_vocabulary(spec)


def unseen_classes(name: str) -> list[int]:
  """Label ids of the unseen classes of a zero-shot protocol (VOC 15/5, COCO-Stuff 156/15,
  PC-59 49/10, demo 23/7)."""
  if name not in _UNSEEN:
    raise KeyError(f"no seen/unseen split for {name!r}; splits exist for {sorted(_UNSEEN)}")
  main = class_names(name)
  return sorted(main.index(n) for n in _UNSEEN[name])


def zero_shot_datasets() -> list[str]:
  """Vocabularies with a seen/unseen split."""
  return sorted(_UNSEEN)


def seen_classes(name: str) -> list[int]:
  """Label ids of the seen (training) classes: all classes not in `unseen_classes`."""
  unseen = set(unseen_classes(name))
  return [i for i in range(len(load_vocabulary(name))) if i not in unseen]
