"""Caches heal: a damaged, foreign or outdated entry of the text-classifier, demo-data or demo-CLIP
cache is discarded with a warning naming the file and rebuilt to the same content."""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from input_pipeline import cached, demo
from ovs_jax import demo_clip, text_classifier
from ovs_jax.methods.maskclip import clip_from_spec
from ovs_jax.text_classifier import build_text_classifier

VOCAB, TEMPLATES = [["cat", "kitty"], ["dog"]], ("{}", "a photo of a {}.")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """(CLIP, classifier of VOCAB, a cache dir holding it, another vocabulary's cache file)."""
  clip, d = clip_from_spec("random:tiny"), tmp_path_factory.mktemp("cache")
  build_text_classifier(clip, [["sky"], ["sea"]], TEMPLATES, cache_dir=d / "other")
  return clip, build_text_classifier(clip, VOCAB, TEMPLATES, cache_dir=d / "ours"), d


def _damage_npz(path, how, other):
  raw = path.read_bytes()
  if how == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  elif how == "flipped bytes":  # same size; zip's CRC-32 catches it
    with zipfile.ZipFile(path) as z:
      offset = z.getinfo("embeddings.npy").header_offset + 200
    path.write_bytes(raw[:offset] + bytes(b ^ 0xFF for b in raw[offset:offset + 16]) + raw[offset + 16:])
  elif how == "not a zip":
    path.write_bytes(b"garbage")
  elif how == "foreign entry":  # another vocabulary's file under this name
    shutil.copy(other, path)
  elif how == "no key (older version)":
    with np.load(path) as f:
      np.savez(path, embeddings=f["embeddings"], synonym_index=f["synonym_index"])
  elif how == "pickled objects":
    np.savez(path, embeddings=np.array([object()], dtype=object), synonym_index=np.zeros(1), key="x")


@pytest.mark.parametrize("how", ["truncated", "flipped bytes", "not a zip", "foreign entry",
                                 "no key (older version)", "pickled objects"])
def test_text_classifier_cache_heals(cache, tmp_path, caplog, how):
  clip, want, d = cache
  shutil.copytree(d / "ours", tmp_path, dirs_exist_ok=True)
  (path,) = tmp_path.glob("text_classifier-*.npz")
  _damage_npz(path, how, next((d / "other").glob("*.npz")))
  got = build_text_classifier(clip, VOCAB, TEMPLATES, cache_dir=tmp_path)
  np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-6)
  np.testing.assert_array_equal(got.synonym_index, want.synonym_index)
  assert f"text-classifier cache {path} " in caplog.text and "discarding it and recomputing" in caplog.text
  assert text_classifier._read_cache(path, path.stem.split("-")[1], want.synonym_index) is not None
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten whole, no temp files left


def _builder(calls):
  def build(tmp):
    calls.append(tmp)
    os.makedirs(os.path.join(tmp, "sub"))
    with open(os.path.join(tmp, "a.txt"), "w") as f:
      f.write("hello")
    np.save(os.path.join(tmp, "sub", "b.npy"), np.arange(100))
    with open(os.path.join(tmp, "done.json"), "w") as f:
      json.dump({"version": 1}, f)
  return build


@pytest.mark.parametrize("how,named", [
    ("flipped byte", "sub/b.npy is damaged"), ("deleted file", "a.txt is missing"),
    ("deleted done.json", "done.json is missing"), ("manifest garbage", "manifest.json is unreadable"),
    ("foreign entry", "manifest.json belongs to another cache entry ('entry-v0')"),
])
def test_built_once_entries_heal(tmp_path, caplog, how, named):
  calls = []
  path = str(tmp_path / "entry-v1")
  assert cached.build_once(path, _builder(calls)) == path and len(calls) == 1
  assert cached.build_once(path, _builder(calls)) == path and len(calls) == 1  # intact: reused
  if how == "flipped byte":
    b = os.path.join(path, "sub", "b.npy")
    raw = bytearray(open(b, "rb").read())
    raw[-1] ^= 0xFF
    open(b, "wb").write(bytes(raw))
  elif how == "deleted file":
    os.remove(os.path.join(path, "a.txt"))
  elif how == "deleted done.json":
    os.remove(os.path.join(path, "done.json"))
  elif how == "manifest garbage":
    open(os.path.join(path, cached.MANIFEST), "w").write("{")
  elif how == "foreign entry":
    shutil.rmtree(path)
    cached.build_once(str(tmp_path / "entry-v0"), _builder([]))
    os.rename(tmp_path / "entry-v0", path)
  assert cached.build_once(path, _builder(calls)) == path and len(calls) == 2  # rebuilt
  assert cached.problem(path) is None and open(os.path.join(path, "a.txt")).read() == "hello"
  assert f"cache entry {path}: " in caplog.text and named in caplog.text
  assert sorted(os.listdir(tmp_path)) == ["entry-v1"]  # the damaged copy is gone, no temp dirs


def test_entries_from_before_manifests_are_adopted(tmp_path):
  path = tmp_path / "old"
  _builder([])(str(path))  # written by the earlier build_once: no manifest
  calls = []
  assert cached.build_once(str(path), _builder(calls)) == str(path) and not calls
  assert json.loads((path / cached.MANIFEST).read_text())["name"] == "old"


def test_demo_dataset_and_demo_clip_caches_heal(tmp_path, caplog, monkeypatch):
  small = dict(num_train=4, num_val=2, hw=(32, 48))
  root = demo.demo_root(str(tmp_path), **small)
  image = os.path.join(root, "images", "train", "00001.png")
  want = open(image, "rb").read()
  open(image, "wb").write(want[:len(want) // 2])
  assert demo.demo_root(str(tmp_path), **small) == root
  assert open(image, "rb").read() == want  # regenerated: the dataset is a function of the seed
  assert f"{image} is damaged" in caplog.text
  # The demo CLIP cache is a built-once entry too (stand-in builder: no pre-training here).
  monkeypatch.setattr(demo, "demo_root", lambda cache_dir=None: root)
  monkeypatch.setattr(demo_clip, "_build",
                      lambda out, data, arch, seed, steps, cache_dir: _builder([])(out))
  path = demo_clip.demo_clip_dir(str(tmp_path), steps=1)
  os.remove(os.path.join(path, "sub", "b.npy"))
  assert demo_clip.demo_clip_dir(str(tmp_path), steps=1) == path and cached.problem(path) is None
  assert f"{os.path.join(path, 'sub', 'b.npy')} is missing" in caplog.text
