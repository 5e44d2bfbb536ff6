"""Shipped vocabularies: pinned class counts, label order and zero-shot splits."""
import pytest

from input_pipeline import vocab


@pytest.mark.parametrize("name,count,first,last", [
    ("ade20k_150", 150, "wall", "flag"),
    ("ade20k_847", 847, "wall", "adding machine"),
    ("pc_59", 59, "aeroplane", "wood piece"),
    ("pc_459", 459, "accordion", "wool"),
    ("voc_20", 20, "aeroplane", "tvmonitor"),
    ("voc_21", 21, "background", "tvmonitor"),
    ("coco_stuff_171", 171, "person", "wood"),
    ("coco_panoptic_133", 133, "person", "rug"),
    ("cityscapes_19", 19, "road", "bicycle"),
    ("demo", 30, "sky", "umbrella"),
])
def test_counts_and_order(name, count, first, last):
  v = vocab.load_vocabulary(name)
  assert len(v) == count
  assert v[0][0] == first and v[-1][0] == last
  assert all(names and all(n and n == n.strip() and n != vocab.INVALID for n in names) for names in v)
  if name != "ade20k_847":  # ADE-full has homonyms (e.g. two distinct 'bag' classes)
    assert len({names[0] for names in v}) == count


def test_synonyms_and_file_ids():
  assert vocab.load_vocabulary("ade20k_150")[0] == ["wall", "walls", "brick wall", "stone wall",
                                                     "interior wall"]
  # COCO ids are category ids with gaps: stuffthingmap label 11 is category 13 (stop sign).
  ids = vocab.vocabulary_file_ids("coco_stuff_171")
  assert ids[:12] == list(range(1, 12)) + [13] and vocab.class_names("coco_stuff_171")[11] == "stop sign"
  pan = vocab.vocabulary_file_ids("coco_panoptic_133")
  assert pan[79] == 90 and pan[80] == 92 and pan[-1] == 200  # things 1..90, stuff 92..200
  assert vocab.load_vocabulary("voc_21")[1:] == vocab.load_vocabulary("voc_20")


@pytest.mark.parametrize("text,want", [
    ("sofa, couch; lamp; cat", [["sofa", "couch"], ["lamp"], ["cat"]]),
    ("0:sky,clouds\n1: grass\n\n", [["sky", "clouds"], ["grass"]]),
    ("sofa;\nlamp;\n", [["sofa"], ["lamp"]]),                       # ';' ending a line is layout
    ("  Teddy  Bear , teddy-bear.  ", [["Teddy  Bear", "teddy-bear."]]),  # nothing rewritten
    ("1:1 scale model; car", None),                                   # mixed id prefixes
    ("0:1:1 scale model\n1:car", [["1:1 scale model"], ["car"]]),     # ids are syntax
    ("7: up; 8: down", None),                                         # ids must be 0, 1, ...
    ("a;;b", None), ("sofa,,couch", None), ("cat, ", None),           # empty class / names
    ("cat; dog; Cat", None), ("big  dog; cat\nBig Dog", None),       # one name, two classes
])
def test_one_grammar_for_class_lists(text, want):
  if want is None:
    with pytest.raises(vocab.VocabularyError):
      vocab.parse_vocabulary(text)
  else:
    assert vocab.parse_vocabulary(text) == want


def test_class_list_errors_name_the_problem(caplog):
  assert vocab.get_vocabulary("demo") == vocab.load_vocabulary("demo")
  assert vocab.get_vocabulary("a;b") == [["a"], ["b"]]
  for text, match in [
      (" ; ,\n", "has no class names"),
      ("a;;b", r"class 1 is empty"),
      ("sofa,,couch; lamp", r"class 0 \('sofa,,couch'\) has an empty name"),
      ("cat; dog; Cat", r"'Cat' names both class 0 \('cat'\) and class 2 \('Cat'\)"),
      ("1:1 scale model; car", r"class 0 \('1:1 scale model'\) has an 'id:' prefix but class 1 \('car'\)"),
      ("7: up; 8: down", r"class ids \[7, 8\] are not 0, 1, 2"),
  ]:
    with pytest.raises(vocab.VocabularyError, match=match):
      vocab.parse_vocabulary(text, where="my.txt")
  assert vocab.parse_vocabulary("cat, kitty, cat; dog", where="my.txt") == [["cat", "kitty", "cat"], ["dog"]]
  assert "my.txt: class 0 ('cat') lists ['cat'] more than once" in caplog.text


def test_unknown_vocabulary():
  with pytest.raises(KeyError, match="unknown vocabulary 'ade20k_15'.*ade20k_150"):
    vocab.load_vocabulary("ade20k_15")


def test_zero_shot_splits():
  names = vocab.class_names("voc_20")
  unseen = vocab.unseen_classes("voc_20")
  assert [names[i] for i in unseen] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
  assert len(vocab.seen_classes("voc_20")) == 15
  assert vocab.unseen_classes("voc_21") == [i + 1 for i in unseen]  # shifted by background
  seen, unseen = vocab.seen_classes("coco_stuff_171"), vocab.unseen_classes("coco_stuff_171")
  assert (len(seen), len(unseen)) == (156, 15) and not set(seen) & set(unseen)
  names = vocab.class_names("coco_stuff_171")
  assert {"cow", "giraffe", "tree", "grass", "wall-concrete", "playingfield"} <= {names[i] for i in unseen}
  with pytest.raises(KeyError, match="no seen/unseen split"):
    vocab.unseen_classes("ade20k_150")
