"""The embedded demo dataset: deterministic, cached, labelled with the 'demo' vocabulary (30 classes)."""
import os

import numpy as np

from input_pipeline import datasets, demo, vocab

SMALL = dict(num_train=12, num_val=4, hw=(48, 64))


def test_default_demo_dataset(tmp_path):
  train = datasets.get_dataset("demo", "train", cache_dir=str(tmp_path))
  val = demo.demo_dataset("val", cache_dir=str(tmp_path))
  assert (len(train), len(val)) == (400, 64)
  assert train.class_names == vocab.class_names("demo") and train.num_classes == 30
  r = val[0]
  assert r["image"].shape == (160, 160, 3) and r["image"].dtype == np.uint8
  assert r["label"].shape == (160, 160) and r["label"].dtype == np.uint8
  present = np.stack([np.bincount(train[i]["label"].ravel(), minlength=31) > 0 for i in range(0, 400, 2)])
  assert not present[:, 30:].any()  # no ignore, no strays
  assert (present.sum(0)[:30] >= 10).all(), present.sum(0)  # every class in >= 10 of 200 scenes
  assert np.median(present.sum(1)) >= 5  # several classes per scene


def test_deterministic_and_cached(tmp_path):
  a = demo.demo_dataset("train", cache_dir=str(tmp_path / "a"), **SMALL)
  b = demo.demo_dataset("train", cache_dir=str(tmp_path / "b"), **SMALL)
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    np.testing.assert_array_equal(a[i]["label"], b[i]["label"])
  root = demo.demo_root(str(tmp_path / "a"), **SMALL)
  stamp = os.path.getmtime(os.path.join(root, "done.json"))
  assert demo.demo_root(str(tmp_path / "a"), **SMALL) == root  # reused, not regenerated
  assert os.path.getmtime(os.path.join(root, "done.json")) == stamp
  other = demo.demo_dataset("train", cache_dir=str(tmp_path / "a"), seed=1, **SMALL)
  assert not np.array_equal(other[0]["image"], a[0]["image"])
  assert [p for p in os.listdir(tmp_path / "a") if ".tmp" in p] == []


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("OVS_JAX_CACHE", str(tmp_path))
  src = demo.demo_dataset("val", **SMALL)
  assert src.pairs[0][0].startswith(str(tmp_path)) and len(src) == 4


def test_scene_is_a_function_of_its_stream():
  a = demo.generate_scene(np.random.default_rng((0, 0, 7)), (64, 80))
  b = demo.generate_scene(np.random.default_rng((0, 0, 7)), (64, 80))
  c = demo.generate_scene(np.random.default_rng((0, 1, 7)), (64, 80))  # the val split's stream
  assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], c[0])
  assert a[0].shape == (64, 80, 3) and a[1].shape == (64, 80) and a[1].max() < demo.NUM_CLASSES


def test_unseen_classes_are_neither_renamings_nor_recolourings_of_seen_ones():
  """The zero-shot split holds out stuff and things whose names share no word with a seen class's
  names ('floor' aside: wooden vs tiled), and whose mean colour, where fixed (not a random paint:
  those differ by shape), is not a seen class's."""
  names = vocab.load_vocabulary("demo")
  unseen = vocab.unseen_classes("demo")
  seen = [c for c in range(len(names)) if c not in unseen]
  assert len(seen) >= 20 and {demo.SNOW, demo.TILES} <= set(unseen) and len(unseen) == 7
  seen_words = {w for c in seen for n in names[c] for w in n.lower().split()}
  for c in unseen:
    assert not {w for n in names[c] for w in n.lower().split()} & seen_words - {"floor"}, names[c]
  colour = np.zeros((demo.NUM_CLASSES, 3))
  count = np.zeros(demo.NUM_CLASSES)
  for i in range(120):
    image, label = demo.generate_scene(np.random.default_rng((0, 0, i)))
    for cls in np.unique(label):
      colour[cls] += image[label == cls].mean(0)
      count[cls] += 1
  colour /= count[:, None]
  for c in set(unseen) - set(demo.PAINTED):
    assert min(np.abs(colour[c] - colour[s]).sum() for s in seen) > 30, names[c]
