"""A tiny CLIP pre-trained on the demo dataset: the demo's stand-in for OpenAI's CLIP.

MAFT+ fine-tunes a CLIP that already ties image regions to class names. A randomly initialised
CLIP does not: its text tower sends every class name to almost the same direction (cosines about
0.99), so neither classifier can separate the demo's classes and the out-of-vocabulary branch has
nothing to transfer. This pre-trains the `tiny` preset on the demo train split in about a minute on
CPU and caches it next to the demo dataset (`config.clip.weights="demo"`).

Objective: random square crops, each scored against every synonym sentence (one random template per
synonym per step); cross-entropy of a class = -log of the softmax mass on its synonyms. Applied to
the class token (label: the crop's majority class) and to every patch of the dense CLIP map (label:
the patch's majority class), so the dense features MAFT+ pools are aligned with text too.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from ovs_jax import preprocess
from ovs_jax.models.clip import CLIPBase, l2_normalize
from ovs_jax.models.clip_family import build_clip, get_arch

VERSION = 1  # bump when the recipe changes, so stale caches are not reused
CROP = 96          # training crop side (6x6 patches of 16 px)
MAJORITY = 0.5     # a crop / patch is labelled when one class covers this fraction of it


def _labels(label, num_classes, grid):
  """(N, S, S) pixel labels -> (crop labels (N,), patch labels (N, g, g)); -1 = no majority."""
  n, s, _ = label.shape
  onehot = label[..., None] == np.arange(num_classes)
  crop = onehot.mean((1, 2))
  p = s // grid
  patch = onehot.reshape(n, grid, p, grid, p, num_classes).mean((2, 4))

  def majority(frac):
    return np.where(frac.max(-1) >= MAJORITY, frac.argmax(-1), -1).astype(np.int32)
  return majority(crop), majority(patch)


def sample_crops(images, labels, rng, batch, num_classes, size=CROP, stride=16):
  """Random square crops (side 40-100 % of the image), flipped half the time, resized to `size`;
  patch labels on the model's dense grid (`stride` pixels)."""
  pix, lab = [], []
  for i in rng.integers(0, len(images), batch):
    h, w = labels[i].shape
    side = int(rng.uniform(0.4, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    box = (x, y, x + side, y + side)
    img = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR, box=box)
    seg = Image.fromarray(labels[i]).resize((size, size), Image.NEAREST, box=box)
    img, seg = np.asarray(img), np.asarray(seg)
    if rng.random() < 0.5:
      img, seg = img[:, ::-1], seg[:, ::-1]
    pix.append(preprocess.normalize(img))
    lab.append(seg)
  crop_label, patch_label = _labels(np.stack(lab), num_classes, size // stride)
  return np.stack(pix), crop_label, patch_label


def synonym_ce(logits, label, synonym_class):
  """Mean over labelled rows of -log Σ_{s ∈ class} softmax(logits)_s; label -1 is ignored."""
  positive = synonym_class == label[..., None]
  ce = jax.nn.logsumexp(logits, -1) - jax.nn.logsumexp(jnp.where(positive, logits, -jnp.inf), -1)
  valid = label >= 0
  return jnp.where(valid, ce, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def pretrain_loss(model: CLIPBase, pixels, ids, synonym_class, crop_label, patch_label):
  """Image-embedding + dense patch synonym cross-entropy (module docstring)."""
  image, dense = model.image_and_dense_features(pixels)
  b, h, w, p = dense.shape
  img = l2_normalize(jnp.concatenate([image[:, None], dense.reshape(b, h * w, p)], 1).astype(jnp.float32))
  txt = l2_normalize(model.get_text_features(ids).astype(jnp.float32))  # (S, P)
  logits = jnp.exp(model.logit_scale[...]) * img @ txt.T  # (B, 1 + h*w, S)
  cls_loss = synonym_ce(logits[:, 0], crop_label, synonym_class)
  dense_loss = synonym_ce(logits[:, 1:], patch_label.reshape(-1, h * w), synonym_class)
  return cls_loss + dense_loss, (cls_loss, dense_loss)


def _sentences(vocabulary, templates, rng):
  """One sentence per synonym, each with a random template; and each sentence's class."""
  texts, classes = [], []
  for c, names in enumerate(vocabulary):
    for name in names:
      texts.append(templates[rng.integers(len(templates))].format(name))
      classes.append(c)
  return texts, np.asarray(classes, np.int32)


def _context_length(vocabulary, templates):
  """Tokens in the longest template x synonym sentence. Cutting the padding after it is exact: the
  text tower is causal, so the end token's state does not see what follows it."""
  from ovs_jax.tokenizer import tokenize
  ids = tokenize([t.format(n) for names in vocabulary for n in names for t in templates])
  return int((ids != 0).sum(1).max())


def pretrain(images, labels, vocabulary, *, arch="tiny", steps=300, batch=32, lr=1e-3, seed=0,
             log=None):
  """Trains a fresh `arch` CLIP on (images, labels) uint8 arrays; -> (model, last losses)."""
  from ovs_jax.templates import get_templates
  from ovs_jax.tokenizer import tokenize
  model = build_clip(get_arch(arch), rngs=nnx.Rngs(seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5), steps)
  optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.05), wrt=nnx.Param)
  templates = get_templates("vild")
  length = _context_length(vocabulary, templates)

  @nnx.jit
  def step(model, optimizer, pixels, ids, synonym_class, crop_label, patch_label):
    grad_fn = nnx.value_and_grad(pretrain_loss, has_aux=True)
    (loss, parts), grads = grad_fn(model, pixels, ids, synonym_class, crop_label, patch_label)
    optimizer.update(model, grads)
    return loss, parts

  rng = np.random.default_rng(seed)
  losses = None
  for i in range(steps):
    pixels, crop_label, patch_label = sample_crops(images, labels, rng, batch, len(vocabulary),
                                                   stride=model.dense_stride)
    texts, synonym_class = _sentences(vocabulary, templates, rng)
    loss, parts = step(model, optimizer, pixels, tokenize(texts)[:, :length], synonym_class, crop_label, patch_label)
    losses = {"loss": float(loss), "class_token": float(parts[0]), "dense": float(parts[1])}
    if log is not None:
      log(i + 1, losses)
  return model, losses


def patch_accuracy(model: CLIPBase, images, labels, vocabulary):
  """Zero-shot accuracy of the dense CLIP map on majority-labelled patches (max over synonyms)."""
  from ovs_jax.text_classifier import build_text_classifier
  from ovs_jax.templates import get_templates
  clf = build_text_classifier(model, vocabulary, get_templates("vild"))
  dense = jax.jit(lambda m, x: m.dense_features(x))(model, preprocess.normalize(images))
  logits = np.einsum("bhwp,sp->bhws", np.asarray(l2_normalize(dense)), clf.embeddings)
  pred = clf.synonym_to_class[logits.argmax(-1)]
  _, patch = _labels(labels, len(vocabulary), dense.shape[1])
  return float((pred == patch)[patch >= 0].mean())


def _read_split(root, split):
  from input_pipeline.files import read_image, read_label
  names = sorted(os.listdir(os.path.join(root, "images", split)))
  images = np.stack([read_image(os.path.join(root, "images", split, n)) for n in names])
  labels = np.stack([read_label(os.path.join(root, "annotations", split, n)) for n in names])
  return images, labels


def demo_clip_dir(cache_dir: str | None = None, arch: str = "tiny", seed: int = 0, steps: int = 300) -> str:
  """The pre-trained demo CLIP (our orbax format), built on first use, written atomically."""
  from input_pipeline.cached import build_once
  from input_pipeline.demo import cache_root, demo_root
  path = os.path.join(cache_root(cache_dir), f"demo_clip-v{VERSION}-{arch}-seed{seed}-{steps}steps")
  return build_once(path, lambda tmp: _build(tmp, demo_root(cache_dir), arch, seed, steps))


def _build(out, data, arch, seed, steps):
  """Pre-trains on the demo train split, reports val patch accuracy, writes `out` (done.json last)."""
  from tqdm.auto import tqdm
  from input_pipeline.vocab import load_vocabulary
  from ovs_jax.interchange.clip_weights import save_orbax_clip
  vocabulary = load_vocabulary("demo")
  images, labels = _read_split(data, "train")
  bar = tqdm(total=steps, desc="pre-training the demo CLIP (once; cached)", unit="step")

  def log(i, losses):
    bar.update(1)
    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
  model, losses = pretrain(images, labels, vocabulary, arch=arch, steps=steps, seed=seed, log=log)
  bar.close()
  accuracy = patch_accuracy(model, *_read_split(data, "val"), vocabulary)
  print(f"demo CLIP: zero-shot patch accuracy on demo val {100 * accuracy:.1f}% "
        f"(chance {100 / len(vocabulary):.0f}%)", flush=True)
  save_orbax_clip(model, out)
  with open(os.path.join(out, "done.json"), "w") as f:
    json.dump({"version": VERSION, "steps": steps, "final_losses": losses,
               "val_patch_accuracy": accuracy}, f)
