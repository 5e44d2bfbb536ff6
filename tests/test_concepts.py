"""SimZSS concepts: the shipped bank, concept spans against a brute-force search, demo captions."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline import concepts, demo, vocab
from ovs_jax.tokenizer import CONTEXT_LENGTH, clip_tokenizer, tokenize

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def bank():
  return concepts.load_bank()


@pytest.fixture(scope="module")
def matcher(bank):
  return concepts.ConceptMatcher(bank)


def test_shipped_bank_is_pinned_and_current(bank):
  assert len(bank) == 1501 and bank[0] == "background"
  assert bank == concepts.build_bank()  # the file is what the tool builds today
  assert all(n == concepts.clean_name(n) for n in bank)
  assert {"wall", "traffic light", "person", "t-shirt", "sky"} <= set(bank)
  # plurals are folded into their singular; COCO-Stuff label ids and stoplisted words are gone
  assert not {"walls", "people", "wall-brick", "ceiling-other", "can", "stands"} & set(bank)


@pytest.mark.parametrize("text,error", [
    ("0:background\n2:dog\n", "expected '1:<name>'"),
    ("0:background\n1:Dog\n", "not a clean concept name"),
    ("0:background\n1:hot  dog\n", "not a clean concept name"),
    ("0:background\n1:dog\n2:dog\n", "names must be unique"),
    ("0:dog\n", "no 'background' concept"),
    ("# count: 3\n0:background\n1:dog\n", "header says 3"),
    ("# count: many\n0:background\n", "expected '# count: <number>'"),
    ("0:background\n1:" + " ".join(["zebra"] * 16) + "\n", "more than 15"),
])
def test_bad_bank_files(tmp_path, text, error):
  path = tmp_path / "bank.txt"
  path.write_text(text)
  with pytest.raises(concepts.ConceptBankError, match=error):
    concepts.load_bank(str(path))
  with pytest.raises(concepts.ConceptBankError, match="cannot read"):
    concepts.load_bank(str(tmp_path / "missing.txt"))


def test_build_check_command(tmp_path, capsys):
  assert concepts.main(["build", "--check"]) == 0
  out = tmp_path / "bank.txt"
  assert concepts.main(["build", "--out", str(out)]) == 0
  assert concepts.load_bank(str(out)) == concepts.load_bank()
  out.write_text(out.read_text().replace("1:accordion", "1:accordions"))
  assert concepts.main(["build", "--check", "--out", str(out)]) == 1
  assert "rebuild" in capsys.readouterr().out


def _brute_force(ids, word_ids, runs):
  """Leftmost-longest non-overlapping occurrences of any run, by comparing every run at every
  word start; word starts come from the tokenizer's word ids, not from the BPE end-of-word mark."""
  starts = [i for i in range(len(ids)) if word_ids[i] is not None
            and (i == 0 or word_ids[i - 1] != word_ids[i])]
  hits = [(s, s + len(run), c) for s in starts for run, c in runs.get(ids[s], ())
          if tuple(ids[s:s + len(run)]) == run]
  chosen, end = [], 0
  for s, e, c in sorted(hits, key=lambda h: (h[0], h[0] - h[1])):  # stable: first form wins ties
    if s >= end:
      chosen.append((c, s, e))
      end = e
  return chosen[:concepts.MAX_CONCEPTS]


def _captions(forms, n, seed=0):
  rng = np.random.default_rng(seed)
  fillers = ["a", "the", "with", "and", "on", "near", "two", "big", "happy", "running", "of", "is",
             "xyzdog", "bigcar", "underwater", "photograph", "quickly", "hotdog", "A", "THE"]
  puncts = [",", ".", "'s", "!", " -", "(", ")"]
  for i in range(n):
    words = []
    length = 40 if i % 50 == 0 else int(rng.integers(2, 25))  # some captions pass 32 concepts
    for _ in range(length):
      r = rng.random()
      if r < 0.45 or i % 50 == 0:
        form = str(rng.choice(forms))
        words.append(form.upper() if rng.random() < 0.1 else form)
      elif r < 0.9:
        words.append(str(rng.choice(fillers)))
      else:
        words[-1:] = [(words[-1] if words else "") + str(rng.choice(puncts))]
    yield " ".join(words)


def test_spans_equal_brute_force(bank, matcher):
  forms = concepts.surface_forms(bank)
  names = list(forms)
  runs = {}
  for name, row in zip(names, tokenize(names)):
    run = tuple(int(t) for t in row if t not in (SOT, EOT, 0))
    runs.setdefault(run[0], []).append((run, forms[name]))
  captions = list(_captions(names, 600))
  ids = tokenize(captions)
  out = matcher(ids)
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      k: ((600, 32), np.int32) for k in ("concept_ids", "concept_starts", "concept_ends")}
  total, capped = 0, 0
  for r, caption in enumerate(captions):
    enc = clip_tokenizer().encode(caption)
    expected = _brute_force([int(t) for t in enc.ids], enc.word_ids, runs)
    k = len(expected)
    got = list(zip(*(out[key][r, :k].tolist() for key in ("concept_ids", "concept_starts", "concept_ends"))))
    assert got == expected, caption
    assert (out["concept_ids"][r, k:] == -1).all() and (out["concept_ends"][r, k:] == 0).all()
    total, capped = total + k, capped + (k == concepts.MAX_CONCEPTS)
  assert total > 3000 and capped >= 5  # the captions exercise many matches and the cap


def test_absent_phrases_give_no_concept(matcher):
  # words outside the bank; bank words glued inside other words ('xyz' + 'dog</w>'); a multi-word
  # name split by punctuation; a name's prefix alone
  for text in ["a happy child's quickly running", "xyzdog bigdog", "hotdog", "traffic, light",
               "zzz qqq", "trafficking"]:
    found = matcher.match_text(text)
    assert all(name == "child" for name, _, _ in found), (text, found)
  assert matcher.match_text("xyzdog") == [] and tokenize("xyzdog")[0][3] == tokenize("dog")[0][1]
  out = matcher(tokenize(["xyzdog", "the quick fox jumps", ""]))
  assert (out["concept_ids"][[0, 2]] == -1).all()


@pytest.mark.parametrize("text,expected", [
    ("walls", "wall"), ("buses", "bus"), ("knives", "knife"), ("shelves", "shelf"),
    ("ladies", "lady"), ("people", "person"), ("men", "man"), ("children", "child"),
    ("traffic lights", "traffic light"), ("wine glasses", "wine glass"), ("boxes", "box"),
    ("a slipper", "slippers"), ("binocular", "binoculars"), ("stairs", "stair"), ("glass", "glass"),
    ("Two Red Buses", "bus"),
])
def test_plural_and_singular_forms(matcher, text, expected):
  assert [name for name, _, _ in matcher.match_text(text)] == [expected]


def test_inflection_rules():
  for singular, plural in [("box", "boxes"), ("city", "cities"), ("day", "days"), ("leaf", "leaves"),
                           ("knife", "knives"), ("tomato", "tomatoes"), ("dog", "dogs"),
                           ("person", "people"), ("bus", "buses")]:
    assert concepts.plural_forms(singular)[0] == plural
    assert singular in concepts.singular_forms(plural)
  assert not concepts.singular_forms("glass") and not concepts.singular_forms("bus")
  assert concepts.last_word_forms("traffic light", concepts.plural_forms) == ["traffic lights"]


def test_longest_match_and_mask(matcher):
  ids = tokenize(["a traffic light next to a street lamp and a light"])
  out = matcher(ids)
  spans = [(matcher.bank[c], s, e) for c, s, e in zip(*(out[k][0] for k in
           ("concept_ids", "concept_starts", "concept_ends"))) if c >= 0]
  assert spans == [("traffic light", 2, 4), ("street lamp", 7, 9)]  # 'light' alone is stoplisted
  mask = concepts.concept_token_mask(out["concept_starts"], out["concept_ends"])
  assert mask.shape == (1, 32, CONTEXT_LENGTH) and mask.sum() == 4
  assert mask[0, 0, 2:4].all() and mask[0, 1, 7:9].all() and not mask[0, 2:].any()
  single = matcher(ids[0])  # one caption (77,) -> (32,)
  assert all(single[k].shape == (32,) and (single[k] == out[k][0]).all() for k in out)


def _demo_class_of_concept(matcher):
  """concept id -> demo class, over every way a demo caption can name a class."""
  class_of = {}
  for cls, names in enumerate(vocab.load_vocabulary("demo")):
    for name in names:
      for form in [name] + concepts.last_word_forms(name.lower(), concepts.plural_forms):
        for c, _, _ in matcher.find(tokenize(form)[0]):
          class_of[c] = cls
  return class_of


def test_demo_captions_mention_only_present_classes(matcher):
  class_of = _demo_class_of_concept(matcher)
  for i in range(150):
    image, label = demo.generate_scene(np.random.default_rng((0, 0, i)))
    captions = demo.scene_captions(0, "train", i, image, label)
    assert len(captions) == demo.CAPTIONS_PER_IMAGE and captions == demo.scene_captions(
        0, "train", i, image, label)
    present = {c for c in range(demo.NUM_CLASSES) if (label == c).mean() >= demo.MIN_FRACTION}
    mentioned = []
    for caption in captions:
      found = matcher.find(tokenize(caption)[0])
      assert found, caption
      assert all(class_of.get(c) in present for c, _, _ in found), (caption, sorted(present))
      mentioned.append({class_of[c] for c, _, _ in found})
    assert mentioned[0] == present  # the first caption lists every class present
  other = demo.scene_captions(1, "train", 0, image, label)
  assert other != captions


def test_demo_paint_is_read_from_the_pixels():
  """A painted thing's colour in the captions is the paint the painter drew (shading included)."""
  hw = (64, 64)
  for thing in (demo.BALL, demo.CAR, demo.UMBRELLA):
    for k, paint in enumerate(demo.PAINTS):
      seed = next(s for s in range(100) if np.random.default_rng(s).integers(len(demo.PAINTS)) == k)
      image = np.full(hw + (3,), [60, 140, 45], np.float32)
      label = np.full(hw, demo.GRASS, np.uint8)
      demo.paint_object(thing, np.random.default_rng(seed), hw, 60, 32, 1.5, image, label)
      image = image.astype(np.uint8)
      assert demo._things(image, label)[thing]["colour"] == paint, (thing, paint)
      captions = demo.caption_scene(image, label, np.random.default_rng(0))
      assert not any(f"{other} " in c for c in captions for other in demo.PAINTS if other != paint)


def test_demo_coco_captions_layout(tmp_path):
  small = dict(num_train=6, num_val=3, hw=(48, 64))
  root = demo.demo_coco_root(str(tmp_path), **small)
  images = demo.demo_root(str(tmp_path), **small)
  for split, n in (("train", 6), ("val", 3)):
    with open(os.path.join(root, "annotations", f"captions_{split}2017.json")) as f:
      data = json.load(f)
    assert [im["id"] for im in data["images"]] == list(range(n))
    assert len(data["annotations"]) == 5 * n and len({a["id"] for a in data["annotations"]}) == 5 * n
    captions = demo.demo_captions(split, str(tmp_path), **small)
    for im in data["images"]:
      copied = os.path.join(root, f"{split}2017", im["file_name"])
      with open(copied, "rb") as a, open(os.path.join(images, "images", split, im["file_name"]), "rb") as b:
        assert a.read() == b.read()  # the demo's own PNGs, unchanged
      label = np.asarray(Image.open(os.path.join(images, "annotations", split, im["file_name"])))
      assert (im["height"], im["width"]) == label.shape == small["hw"]
      assert captions[im["id"]] == demo.scene_captions(0, split, im["id"],
                                                        np.asarray(Image.open(copied)), label)
  assert demo.demo_coco_root(str(tmp_path), **small) == root  # cached
