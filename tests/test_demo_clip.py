"""The demo CLIP: its loss, labels and text truncation against re-derivations; build, cache, reload."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax import demo_clip
from ovs_jax.interchange.clip_weights import load_clip
from ovs_jax.models.clip import CLIP
from ovs_jax.models.clip_config import get_preset
from ovs_jax.templates import get_templates
from ovs_jax.tokenizer import tokenize


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A cache dir holding the demo dataset (generated once for this module)."""
  from input_pipeline.demo import demo_root
  path = tmp_path_factory.mktemp("cache")
  demo_root(str(path))
  return path


def test_synonym_ce_equals_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  synonym_class = np.array([0, 0, 1, 2, 2, 2, 3])
  label = np.array([[0, 1, -1, 3, 2], [2, -1, -1, 0, 0]])
  want = []
  for b in range(2):
    for q in range(5):
      if label[b, q] < 0:
        continue
      p = np.exp(logits[b, q] - logits[b, q].max())
      p /= p.sum()
      want.append(-np.log(p[synonym_class == label[b, q]].sum()))
  got = demo_clip.synonym_ce(jnp.asarray(logits), jnp.asarray(label), jnp.asarray(synonym_class))
  np.testing.assert_allclose(float(got), np.mean(want), rtol=1e-5)


def test_majority_labels_equal_a_loop():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 3, (2, 8, 8)).astype(np.uint8)
  label[0, :4, :4] = 2  # a patch with a clear majority
  label[1] = 1
  label[1, 0, 0] = 0    # crop 1: 63/64 class 1
  crop, patch = demo_clip._labels(label, 4, 2)
  for n in range(2):
    frac = np.bincount(label[n].ravel(), minlength=4) / 64
    assert crop[n] == (frac.argmax() if frac.max() >= 0.5 else -1)
    for i in range(2):
      for j in range(2):
        f = np.bincount(label[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4].ravel(), minlength=4) / 16
        assert patch[n, i, j] == (f.argmax() if f.max() >= 0.5 else -1)
  assert crop[1] == 1 and patch[0, 0, 0] == 2


def test_cutting_padding_after_the_longest_sentence_is_exact():
  vocabulary = [["sky", "blue sky"], ["cardboard box"]]
  templates = get_templates("vild")
  length = demo_clip._context_length(vocabulary, templates)
  ids = tokenize([templates[3].format("cardboard box"), "sky", templates[0].format("blue sky")])
  assert (ids[:, length:] == 0).all() and length < 77
  model = CLIP(get_preset("tiny"), rngs=nnx.Rngs(0))
  full = model.get_text_features(jnp.asarray(ids))
  cut = model.get_text_features(jnp.asarray(ids[:, :length]))
  np.testing.assert_allclose(np.asarray(cut), np.asarray(full), atol=1e-5)


def test_crops_are_normalised_and_labelled():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (3, 40, 48, 3), np.uint8)
  labels = np.zeros((3, 40, 48), np.uint8)
  labels[:, 20:] = 1
  pixels, crop, patch = demo_clip.sample_crops(images, labels, rng, 5, 2, size=32)
  assert pixels.shape == (5, 32, 32, 3) and pixels.dtype == np.float32 and abs(pixels.mean()) < 1.5
  assert crop.shape == (5,) and patch.shape == (5, 2, 2) and set(np.unique(patch)) <= {-1, 0, 1}


def test_pretraining_learns_and_the_cached_weights_reload(cache, capsys):
  from input_pipeline.demo import demo_root
  from input_pipeline.vocab import load_vocabulary
  vocabulary = load_vocabulary("demo")
  images, labels = demo_clip._read_split(demo_root(str(cache)), "train")
  losses = []
  model, last = demo_clip.pretrain(images[:64], labels[:64], vocabulary, steps=50,
                                   log=lambda i, l: losses.append(l["loss"]))
  assert len(losses) == 50 and last["loss"] == losses[-1]
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses

  path = demo_clip.demo_clip_dir(str(cache), steps=2)
  assert "zero-shot patch accuracy" in capsys.readouterr().out
  info = json.loads(open(os.path.join(path, "done.json")).read())
  assert info["steps"] == 2 and 0 <= info["val_patch_accuracy"] <= 1
  assert not [n for n in os.listdir(cache) if ".tmp" in n]  # the temp dir was renamed away
  loaded = load_clip(path)
  ids = jnp.asarray(tokenize(["a photo of a sky."]))
  again = demo_clip.demo_clip_dir(str(cache), steps=2)  # cached: no second training
  assert again == path and "zero-shot" not in capsys.readouterr().out
  np.testing.assert_allclose(np.asarray(load_clip(again).get_text_features(ids)),
                             np.asarray(loaded.get_text_features(ids)), atol=0)
  assert jax.tree.leaves(nnx.state(loaded, nnx.Param))


def test_demo_weights_in_configs_and_specs_load_the_cached_clip(cache, monkeypatch):
  """`config.clip.weights="demo"` (the demo recipe) and `--clip=demo:tiny` read the cached CLIP."""
  from configs.cdt_vitb import get_config
  from ovs_jax.methods.maskclip import clip_from_spec
  from ovs_jax.methods.common import clip_from_config
  build = demo_clip.demo_clip_dir
  monkeypatch.setattr(demo_clip, "demo_clip_dir",
                      lambda arch, seed: build(str(cache), arch=arch, seed=seed, steps=1))
  config = get_config("demo")
  assert config.clip.weights == "demo"
  ids = jnp.asarray(tokenize(["a photo of a ball."]))
  want = load_clip(build(str(cache), steps=1)).get_text_features(ids)
  for model in (clip_from_config(config), clip_from_spec("demo:tiny")):
    np.testing.assert_array_equal(np.asarray(model.get_text_features(ids)), np.asarray(want))
