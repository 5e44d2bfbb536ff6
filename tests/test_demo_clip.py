"""The demo CLIP: CLIP's contrastive loss against a numpy re-derivation, no label in its input,
its zero-shot measures against loops; build, cache, reload."""
import inspect
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
from ovs_jax.tokenizer import tokenize


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A cache dir holding the demo dataset and its captions (generated once for this module)."""
  from input_pipeline.demo import demo_coco_root
  path = tmp_path_factory.mktemp("cache")
  demo_coco_root(str(path))
  return path


def test_clip_loss_equals_numpy():
  """OpenCLIP's ClipLoss (src/open_clip/loss.py): (CE(logit_scale * I T^T, diag) + CE(its
  transpose, diag)) / 2 on L2-normalised features, written out in numpy."""
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, 6, 8)).astype(np.float32)
  scale = np.float32(np.log(20.0))
  i = image / np.linalg.norm(image, axis=1, keepdims=True)
  t = text / np.linalg.norm(text, axis=1, keepdims=True)
  logits = np.exp(scale) * i @ t.T

  def ce_rows(z):  # mean over rows of -log softmax(z)[row, row]
    z = z - z.max(1, keepdims=True)
    return np.mean(-(np.diag(z) - np.log(np.exp(z).sum(1))))
  want = (ce_rows(logits) + ce_rows(logits.T)) / 2
  got, got_logits = demo_clip.clip_loss(jnp.asarray(image), jnp.asarray(text), jnp.asarray(scale))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got_logits), logits, rtol=1e-5, atol=1e-5)


def test_pretraining_sees_images_and_captions_only(cache):
  """No label map, class id or vocabulary reaches the pre-training: its inputs are images and
  caption strings, and the batch it builds holds pixels and token ids."""
  assert list(inspect.signature(demo_clip.pretrain).parameters)[:2] == ["images", "captions"]
  assert list(inspect.signature(demo_clip.pretrain_loss).parameters) == ["model", "pixels", "ids"]
  seen = []
  original = demo_clip.pretrain_loss

  def spy(model, pixels, ids):
    seen.append((pixels.shape, ids.shape, ids.dtype))
    return original(model, pixels, ids)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (6, 40, 40, 3), np.uint8)
  captions = [[f"a photo of thing {k}", f"thing {k} again"] for k in range(6)]
  try:
    demo_clip.pretrain_loss = spy
    demo_clip.pretrain(images, captions, steps=1, batch=4, size=32)
  finally:
    demo_clip.pretrain_loss = original
  (pix, ids, dtype), = seen
  assert pix == (4, 32, 32, 3) and ids[0] == 4 and jnp.issubdtype(dtype, jnp.integer)


def test_images_are_cropped_without_repeats():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (5, 40, 48, 3), np.uint8)
  index, pixels = demo_clip.sample_images(images, rng, 5, size=32)
  assert sorted(index) == list(range(5))  # a batch never pairs an image with itself twice
  assert pixels.shape == (5, 32, 32, 3) and pixels.dtype == np.float32 and abs(pixels.mean()) < 1.5


def test_cutting_padding_after_the_longest_caption_is_exact():
  texts = ["a view of the sky and two red balls on the lawn", "a kite", "the sand"]
  length = demo_clip.context_length(texts)
  ids = tokenize(texts)
  assert (ids[:, length:] == 0).all() and length < 77
  model = CLIP(get_preset("tiny"), rngs=nnx.Rngs(0))
  full = model.get_text_features(jnp.asarray(ids))
  cut = model.get_text_features(jnp.asarray(ids[:, :length]))
  np.testing.assert_allclose(np.asarray(cut), np.asarray(full), atol=1e-5)


def test_majority_patch_labels_equal_a_loop():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 3, (2, 8, 8)).astype(np.uint8)
  label[0, :4, :4] = 2  # a patch with a clear majority
  patch = demo_clip._majority(label, 4, 2)
  for n in range(2):
    for i in range(2):
      for j in range(2):
        f = np.bincount(label[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4].ravel(), minlength=4) / 16
        assert patch[n, i, j] == (f.argmax() if f.max() >= 0.5 else -1)
  assert patch[0, 0, 0] == 2


def test_zero_shot_accuracy_equals_a_loop():
  """The image- and patch-level measures recomputed by hand from the same features."""
  from ovs_jax.templates import get_templates
  from ovs_jax.text_classifier import build_text_classifier
  model = CLIP(get_preset("tiny"), rngs=nnx.Rngs(3))
  vocabulary = [["sky", "blue sky"], ["grass"], ["ball", "sphere"]]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (3, 32, 32, 3), np.uint8)
  labels = np.zeros((3, 32, 32), np.uint8)
  labels[:, 16:] = 1
  labels[1, 20:28, 4:12] = 2
  labels[2] = 2
  got = demo_clip.zero_shot_accuracy(model, images, labels, vocabulary, size=32)
  clf = build_text_classifier(model, vocabulary, get_templates("vild"))
  from ovs_jax import preprocess
  image, dense = model.image_and_dense_features(jnp.asarray(np.stack([preprocess.normalize(i) for i in images])))
  norm = lambda f: np.asarray(f) / np.linalg.norm(np.asarray(f), axis=-1, keepdims=True)
  def best(f):  # classes ranked by their best synonym's cosine
    s = norm(f) @ clf.embeddings.T
    return np.argsort(-np.array([max(s[k] for k in np.nonzero(clf.synonym_to_class == c)[0]) for c in range(3)]))
  top1, at_k = [], []
  for n in range(3):
    present = [c for c in range(3) if (labels[n] == c).mean() >= 0.01]
    ranked = best(image[n])
    top1.append(ranked[0] in present)
    at_k.append(np.mean([c in present for c in ranked[:len(present)]]))
  right = total = 0
  for n in range(3):
    for i in range(2):
      for j in range(2):
        cell = labels[n, 16 * i:16 * i + 16, 16 * j:16 * j + 16]
        f = np.bincount(cell.ravel(), minlength=3) / cell.size
        if f.max() >= 0.5:
          total += 1
          right += best(dense[n, i, j])[0] == f.argmax()
  assert got["image_top1"] == pytest.approx(np.mean(top1))
  assert got["image_precision_at_k"] == pytest.approx(np.mean(at_k))
  assert got["patch_accuracy"] == pytest.approx(right / total)


def test_pretraining_learns_and_the_cached_weights_reload(cache, capsys):
  from input_pipeline.demo import demo_captions, demo_root
  images = demo_clip._read_images(demo_root(str(cache)), "train")
  captions = demo_captions("train", str(cache))
  losses = []
  # 8 images, one caption each, all in every batch: the pairs are learnt within 40 steps.
  model, last = demo_clip.pretrain(images[:8], [c[:1] for c in captions[:8]], steps=40, batch=8,
                                   size=48, log=lambda i, l: losses.append(l["loss"]))
  assert len(losses) == 40 and last["loss"] == losses[-1]
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses

  path = demo_clip.demo_clip_dir(str(cache), steps=2)
  assert "recognises (image level)" in capsys.readouterr().out
  info = json.loads(open(os.path.join(path, "done.json")).read())
  assert info["steps"] == 2 and 0 <= info["val_zero_shot"]["patch_accuracy"] <= 1
  assert not [n for n in os.listdir(cache) if ".tmp" in n]  # the temp dir was renamed away
  loaded = load_clip(path)
  ids = jnp.asarray(tokenize(["a photo of a sky."]))
  again = demo_clip.demo_clip_dir(str(cache), steps=2)  # cached: no second training
  assert again == path and "recognises" not in capsys.readouterr().out
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
