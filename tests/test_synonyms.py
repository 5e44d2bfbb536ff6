"""GKC synonym sets: the shipped files, their validation, the WordNet builder and the CLIP filter."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from input_pipeline import datasets, synonyms, synthetic
from input_pipeline import vocab as vocab_lib
from input_pipeline.synonyms import SynonymError

# (classes, synonyms, most synonyms of a class): changes only with WordNet, the vocabularies or
# hand_fixes.json, and then the README's table changes too.
COUNTS = {"coco_panoptic_133": (133, 277, 10), "coco_stuff_171": (171, 365, 10), "demo": (30, 63, 6)}
WORDNET = "/usr/share/wordnet"


def test_clean_name():
  assert [synonyms.clean_name(n) for n in ("wall-other-merged", "food-other", "tree-merged",
                                           "floor-wood", "door-stuff", "dining table")] == [
      "wall", "food", "tree", "floor wood", "door stuff", "dining table"]


def test_every_training_vocabulary_has_sets():
  # Every recipe's training set (and its :demo variant's), and GKC's COCO-Panoptic-133.
  from ovs_jax.config_utils import recipe_config
  recipes = sorted((Path(__file__).parent.parent / "configs").glob("*.py"))
  configs = [recipe_config(r, arg) for r in recipes for arg in ("", "demo")]
  trained = {c.data.train for c in configs if "train" in c.data}  # SimZSS trains on captions
  trained = {datasets.DATASETS[name].vocabulary for name in trained | {"coco_panoptic_133"}}
  assert trained <= set(synonyms.SYNONYM_VOCABULARIES) == set(COUNTS)
  shipped = {f for f in os.listdir(os.path.dirname(synonyms.data_path("x"))) if f.endswith(".txt")}
  assert shipped == {synonyms.file_name(v) for v in COUNTS}


@pytest.mark.parametrize("vocabulary", sorted(COUNTS))
def test_shipped_sets(vocabulary):
  s = synonyms.load_synonyms(vocabulary)
  classes = vocab_lib.class_names(vocabulary)
  assert (len(s.sets), len(s.names), s.index.shape[1]) == COUNTS[vocabulary]
  assert [names[0] for names in s.sets] == [synonyms.clean_name(c) for c in classes]
  # The text classifier's layout: row s.index[c, j] holds synonym j of class c; -1 pads.
  assert s.index.dtype == np.int32 and s.index.shape[0] == len(classes)
  for c, names in enumerate(s.sets):
    assert [s.names[i] for i in s.index[c, :len(names)]] == list(names)
    assert (s.index[c, len(names):] == -1).all()
  np.testing.assert_array_equal(s.counts, [len(n) for n in s.sets])
  keys = [synonyms.name_key(n) for n in s.names]
  assert len(set(keys)) == len(keys) and all(n.strip() == n and n for n in s.names)


def _write(tmp_path, lines):
  path = tmp_path / "demo.txt"
  path.write_text("".join(f"{i}:{line}\n" for i, line in enumerate(lines)))
  return str(path)


def test_bad_files_name_the_file_and_class(tmp_path):
  good = [",".join(n) for n in synonyms.load_synonyms("demo").sets]
  assert synonyms.load_synonyms("demo", _write(tmp_path, good)).sets == synonyms.load_synonyms("demo").sets
  cases = [
      (good[:-1], r"demo.txt: 29 entries for the 30 classes of demo; class 29 \('umbrella'\) has no entry"),
      (good + ["lantern"], r"31 entries for the 30 classes of demo; entry 30 \('lantern'\) has no class"),
      (["heaven,sky"] + good[1:], r"demo.txt: class 0 \('sky'\) starts with 'heaven'; expected its "
                                  r"cleaned name 'sky'"),
      (good[:6] + ["ball,,orb"] + good[7:], r"demo.txt: class 6 \('ball,,orb'\) has an empty name"),
      (good[:6] + ["ball,orb,Orb"] + good[7:], r"demo.txt: class 6 \('ball'\) lists \['Orb', 'orb'\] "
                                               "more than once"),
      (good[:6] + ["ball,sunshine"] + good[7:], r"'sunshine' names both class 6 \('ball'\) and class 9"),
  ]
  for lines, message in cases:
    with pytest.raises(SynonymError, match=message):
      synonyms.load_synonyms("demo", _write(tmp_path, lines))
  (tmp_path / "demo.txt").write_text("0:sky\n2:grass\n")
  with pytest.raises(SynonymError, match=r"demo.txt: class ids \[0, 2\] are not 0, 1"):
    synonyms.load_synonyms("demo", str(tmp_path / "demo.txt"))
  (tmp_path / "demo.txt").write_bytes(b"0:sky\xff\n")
  with pytest.raises(SynonymError, match="demo.txt: not UTF-8"):
    synonyms.load_synonyms("demo", str(tmp_path / "demo.txt"))
  with pytest.raises(KeyError, match="no synonym sets are shipped for 'ade20k_150'"):
    synonyms.load_synonyms("ade20k_150")


def test_hand_fixes_are_documented():
  from input_pipeline import synonym_wordnet
  fixes = synonym_wordnet.load_hand_fixes()  # checks every entry has senses and a reason
  names = {synonyms.clean_name(c) for v in COUNTS for c in vocab_lib.class_names(v)}
  assert set(fixes) <= names
  assert fixes["tv"]["senses"] == ["television_receiver.n.01"]
  assert {"stop sign", "playingfield", "wall brick"} <= set(fixes)


def test_builder_reproduces_shipped_files():
  pytest.importorskip("nltk", reason="the builder needs the 'prep' extra (nltk)")
  if not os.path.isfile(os.path.join(WORDNET, "index.noun")):
    pytest.skip(f"WordNet 3.0 is not installed at {WORDNET} (apt-get install wordnet-base)")
  from input_pipeline import synonym_wordnet
  built = synonym_wordnet.build_files(WORDNET)
  assert sorted(built) == sorted(synonyms.file_name(v) for v in COUNTS)
  for name, text in built.items():
    with open(synonyms.data_path(name), encoding="utf-8") as f:
      assert text == f.read(), name


def _reference_probabilities(hf_clip, sets, image, mask):
  """transformers' CLIP softmax over a class's "a photo of {synonym}" prompts on the mask's box
  crop, prepared as OpenAI CLIP's preprocess does (torchvision Resize + CenterCrop on PIL)."""
  import torch
  from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD
  from ovs_jax.tokenizer import tokenize
  ys, xs = np.where(mask)
  crop = Image.fromarray(image[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
  size, (w, h) = hf_clip.config.vision_config.image_size, crop.size
  new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  crop = crop.resize(new, Image.BICUBIC)
  top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
  pixels = (np.asarray(crop)[top:top + size, left:left + size] / 255.0 - CLIP_MEAN) / CLIP_STD
  with torch.no_grad():
    out = hf_clip(input_ids=torch.from_numpy(tokenize([f"a photo of {s}" for s in sets]).astype(np.int64)),
                  pixel_values=torch.from_numpy(pixels.transpose(2, 0, 1)[None].astype(np.float32)))
  return torch.softmax(out.logits_per_image[0].double(), 0).numpy()


def _threshold(probs):
  """A threshold that keeps 2 synonyms of the segment with the most and is > 1e-4 from every
  probability (the tool and the reference agree to float precision, not exactly)."""
  p = max(probs.values(), key=len)
  top = np.sort(p)[::-1]
  everything = np.concatenate(list(probs.values()))
  for t in (top[1:-1] + top[2:]) / 2:
    if np.abs(everything - t).min() > 1e-4 and (p > t).sum() >= 2:
      return float(t)
  raise AssertionError(f"no usable threshold for {probs}")


def test_filter_end_to_end(tmp_path):
  from clip_helpers import random_hf_clip, small_hf_config
  want = synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=4, hw=(40, 56), seed=3)
  hf_clip = random_hf_clip(small_hf_config(image_size=32, layers=1, width=32, proj=16, heads=2))
  hf_clip.save_pretrained(tmp_path / "clip")  # what a user passes: an HF CLIP directory
  sets = synonyms.load_synonyms("coco_panoptic_133")
  with open(tmp_path / "coco" / "annotations" / "panoptic_train2017.json") as f:
    anns = {a["file_name"]: a["segments_info"] for a in json.load(f)["annotations"]}
  probs = {}  # (png, segment id) -> reference probabilities
  for i, w in enumerate(want):
    png = f"{i:012d}.png"
    for k, (seg, cls) in enumerate(zip(anns[png], w["segment_classes"])):
      if len(sets.sets[cls]) > 1:
        probs[png, seg["id"]] = _reference_probabilities(hf_clip, sets.sets[cls], w["image"], w["pan_seg"] == k + 1)
  assert len(probs) >= 3 and max(map(len, probs.values())) >= 3
  threshold = _threshold(probs)
  out = tmp_path / "filter.json"
  assert synonyms.main(["filter", f"--clip={tmp_path / 'clip'}", f"--data={tmp_path}", f"--out={out}",
                        f"--threshold={threshold}", "--batch_size=4"]) == 0
  kept = synonyms.load_segment_filter(str(out), sets)
  assert sorted(kept) == sorted(anns)
  for i, w in enumerate(want):
    png = f"{i:012d}.png"
    for seg, cls in zip(anns[png], w["segment_classes"]):
      ref = probs.get((png, seg["id"]))
      expected = [0] if ref is None else (np.nonzero(ref > threshold)[0].tolist() or [0])
      assert list(kept[png][seg["id"]]) == expected, (png, seg["id"], sets.sets[cls], ref)
  assert any(len(k) > 1 for segs in kept.values() for k in segs.values())
  # The probabilities themselves, not only which side of the threshold they fall.
  from input_pipeline import synonym_filter
  from ovs_jax.interchange.clip_weights import load_clip
  source = datasets.get_dataset("coco_panoptic_133", "train", root=str(tmp_path))
  got = {(png, seg_id): p for png, seg_id, p in synonym_filter.synonym_probabilities(
      load_clip(tmp_path / "clip"), sets, synonym_filter.panoptic_segments(source), batch_size=4)}
  assert got.keys() >= probs.keys() and all(got[k] is None for k in got.keys() - probs.keys())
  for key, ref in probs.items():
    np.testing.assert_allclose(got[key], ref, atol=1e-5, err_msg=str(key))
  # A filter made from other synonym sets, or holding an index past the class's set, is refused.
  data = json.loads(out.read_text())
  out.write_text(json.dumps({**data, "synonyms_sha256": "0" * 64}))
  with pytest.raises(SynonymError, match="filter.json: made from other coco_panoptic_133 synonym sets"):
    synonyms.load_segment_filter(str(out), sets)
  png = next(iter(data["segments"]))
  seg = next(iter(data["segments"][png]))
  data["segments"][png][seg] = [0, 99]
  out.write_text(json.dumps(data))
  with pytest.raises(SynonymError, match=rf"filter.json: {png} segment {seg} keeps \[0, 99\]"):
    synonyms.load_segment_filter(str(out), sets)
