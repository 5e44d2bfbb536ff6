"""A tiny CLIP pre-trained on the demo's images and captions: the demo's stand-in for OpenAI's CLIP.

MAFT+, MVP-SEG, GKC and SimZSS start from a CLIP that ties images to names but localises them
poorly, because CLIP learns from image-caption pairs at image level only. The demo CLIP is trained
the same way, so the demo poses the problem those methods solve: the `tiny` preset (or any
`clip_family` arch) learns from the demo train split's images and generated captions
(`input_pipeline.demo.demo_captions`) with CLIP's contrastive loss, in about 2 minutes on CPU, and
is cached next to the demo dataset (`config.clip.weights="demo"`). No label map, class id or crop
label reaches it: `pretrain` takes images and captions only.

Objective (CLIP, Radford et al. 2021, §2.3; OpenCLIP `src/open_clip/loss.py` `ClipLoss` and
`src/training/train.py`): per step a batch of images, one random caption of each (COCO-style
training picks one of the five), symmetric InfoNCE over the batch with the learnable temperature
`logit_scale` (initialised at log(1/0.07), clamped to [0, log 100] after each update as OpenCLIP
does). Augmentation: OpenCLIP's training crop, a random square of 90-100 % of the area, resized.
"""
from __future__ import annotations

import json
import math
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

VERSION = 2  # bump when the recipe changes, so stale caches are not reused (2: image-caption CLIP)
CROP = 96          # training image side (6x6 patches of 16 px)
MAX_LOGIT_SCALE = math.log(100.0)  # OpenCLIP's clamp


def sample_images(images, rng, batch, size=CROP, scale=(0.9, 1.0)):
  """Indices of `batch` random images and their random square crops of `scale` of the area
  (OpenCLIP's RandomResizedCrop on square images), resized to `size`, normalised."""
  index = rng.choice(len(images), batch, replace=False)  # no image twice: no false negatives
  pix = []
  for i in index:
    h, w = images[i].shape[:2]
    side = int(math.sqrt(rng.uniform(*scale)) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC, box=(x, y, x + side, y + side))
    pix.append(preprocess.normalize(np.asarray(img)))
  return index, np.stack(pix)


def clip_loss(image_features, text_features, logit_scale):
  """CLIP's symmetric InfoNCE: the i-th image and i-th text are the positive pair of row/column i.
  -> (loss, logits per image (B, B))."""
  image = l2_normalize(image_features.astype(jnp.float32))
  text = l2_normalize(text_features.astype(jnp.float32))
  logits = jnp.exp(logit_scale) * image @ text.T
  labels = jnp.arange(logits.shape[0])
  per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  per_text = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (per_image + per_text) / 2, logits


def pretrain_loss(model: CLIPBase, pixels, ids):
  """The contrastive loss of a batch of images and their captions' token ids."""
  loss, logits = clip_loss(model.get_image_features(pixels), model.get_text_features(ids),
                           model.logit_scale[...])
  accuracy = (logits.argmax(1) == jnp.arange(logits.shape[0])).mean()
  return loss, accuracy


def context_length(texts) -> int:
  """Tokens in the longest text. Cutting the padding after it is exact: the text tower is causal,
  so the end token's state does not see what follows it."""
  from ovs_jax.tokenizer import tokenize
  return int((tokenize(list(texts)) != 0).sum(1).max())


def pretrain(images, captions, *, arch="tiny", steps=500, batch=32, lr=1e-3, seed=0, size=CROP,
             log=None):
  """Trains a fresh `arch` CLIP on uint8 images (N, H, W, 3) and their captions (N lists of str);
  -> (model, last {loss, batch accuracy, logit scale})."""
  from ovs_jax.tokenizer import tokenize
  model = build_clip(get_arch(arch), rngs=nnx.Rngs(seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5), steps)
  # OpenCLIP: no weight decay on gains, biases and logit_scale (its `exclude` of params.ndim < 2).
  decay = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  optimizer = nnx.Optimizer(model, optax.adamw(schedule, b2=0.98, eps=1e-6, weight_decay=0.1, mask=decay),
                            wrt=nnx.Param)  # CLIP §2.5 / OpenCLIP: β2 0.98, ε 1e-6 for ViTs
  length = context_length([c for caps in captions for c in caps])

  @nnx.jit
  def step(model, optimizer, pixels, ids):
    (loss, accuracy), grads = nnx.value_and_grad(pretrain_loss, has_aux=True)(model, pixels, ids)
    optimizer.update(model, grads)
    model.logit_scale[...] = jnp.clip(model.logit_scale[...], 0.0, MAX_LOGIT_SCALE)
    return loss, accuracy

  rng = np.random.default_rng(seed)
  losses = None
  for i in range(steps):
    index, pixels = sample_images(images, rng, batch, size)
    texts = [captions[j][rng.integers(len(captions[j]))] for j in index]
    loss, accuracy = step(model, optimizer, pixels, tokenize(texts)[:, :length])
    losses = {"loss": float(loss), "batch_accuracy": float(accuracy),
              "logit_scale": float(jnp.exp(model.logit_scale[...]))}
    if log is not None:
      log(i + 1, losses)
  return model, losses


def _majority(label, num_classes, grid, threshold=0.5):
  """(N, S, S) pixel labels -> (N, grid, grid) patch labels: the class covering >= threshold of
  the patch, else -1."""
  n, size, _ = label.shape
  p = size // grid
  frac = (label[..., None] == np.arange(num_classes)).reshape(n, grid, p, grid, p, num_classes).mean((2, 4))
  return np.where(frac.max(-1) >= threshold, frac.argmax(-1), -1)


def zero_shot_accuracy(model: CLIPBase, images, labels, vocabulary, *, size=CROP,
                       min_fraction=0.01) -> dict[str, float]:
  """The CLIP's zero-shot recognition against its localisation, on (N, H, W, 3) images and their
  (N, H, W) label maps, with the handcrafted templates (ViLD's, max over synonyms):

  image level: `image_top1` (the image embedding's best class is present: covers >= min_fraction)
  and `image_precision_at_k` (of its k best classes, k = the number present, the fraction present);
  dense (the MaskCLIP map every method here reads): `patch_accuracy` (a patch's best class is its
  majority class) and `patch_class_accuracy` (the same, averaged over classes: sky does not
  dominate); `chance_precision_at_k` and `majority_patch_accuracy` (always the most frequent
  class) for scale.
  """
  from ovs_jax.templates import get_templates
  from ovs_jax.text_classifier import build_text_classifier
  c = len(vocabulary)
  clf = build_text_classifier(model, vocabulary, get_templates("vild"))
  pixels = np.stack([preprocess.normalize(np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)))
                     for im in images])
  labels = np.stack([np.asarray(Image.fromarray(lb).resize((size, size), Image.NEAREST)) for lb in labels])
  image, dense = jax.jit(lambda m, x: m.image_and_dense_features(x))(model, pixels)

  def class_scores(features):  # cosine to each synonym -> max over each class's synonyms
    sims = np.asarray(l2_normalize(features.astype(jnp.float32))) @ clf.embeddings.T
    return np.stack([sims[..., clf.synonym_to_class == k].max(-1) for k in range(c)], -1)

  present = np.stack([np.bincount(lb.ravel(), minlength=c)[:c] for lb in labels]) >= min_fraction * size * size
  scores = class_scores(image)
  k = present.sum(1)
  ranked = np.argsort(-scores, 1)
  at_k = [present[i, ranked[i, :k[i]]].mean() for i in range(len(images))]
  patch = _majority(labels, c, dense.shape[1])
  pred = class_scores(dense).argmax(-1)
  valid = patch >= 0
  per_class = [(pred[patch == k_] == k_).mean() for k_ in range(c) if (patch == k_).any()]
  return {"image_top1": float(present[np.arange(len(images)), ranked[:, 0]].mean()),
          "image_precision_at_k": float(np.mean(at_k)),
          "chance_precision_at_k": float(np.mean(k / c)),
          "patch_accuracy": float((pred == patch)[valid].mean()) if valid.any() else float("nan"),
          "patch_class_accuracy": float(np.mean(per_class)) if per_class else float("nan"),
          "majority_patch_accuracy": (float(np.bincount(patch[valid]).max() / valid.sum())
                                      if valid.any() else float("nan"))}


def _read_images(root, split):
  from input_pipeline.files import read_image
  names = sorted(os.listdir(os.path.join(root, "images", split)))
  return np.stack([read_image(os.path.join(root, "images", split, n)) for n in names])


def _read_labels(root, split):
  from input_pipeline.files import read_label
  names = sorted(os.listdir(os.path.join(root, "annotations", split)))
  return np.stack([read_label(os.path.join(root, "annotations", split, n)) for n in names])


def demo_clip_dir(cache_dir: str | None = None, arch: str = "tiny", seed: int = 0, steps: int = 500) -> str:
  """The pre-trained demo CLIP (our orbax format), built on first use, written atomically."""
  from input_pipeline.cached import build_once
  from input_pipeline.demo import cache_root, demo_root
  path = os.path.join(cache_root(cache_dir), f"demo_clip-v{VERSION}-{arch}-seed{seed}-{steps}steps")
  return build_once(path, lambda tmp: _build(tmp, demo_root(cache_dir), arch, seed, steps, cache_dir))


def _build(out, data, arch, seed, steps, cache_dir=None):
  """Pre-trains on the demo train split's images and captions, measures zero-shot recognition and
  localisation on val, writes `out` (done.json last)."""
  from tqdm.auto import tqdm
  from input_pipeline.demo import demo_captions
  from input_pipeline.vocab import load_vocabulary
  from ovs_jax.interchange.clip_weights import save_orbax_clip
  images, captions = _read_images(data, "train"), demo_captions("train", cache_dir)
  bar = tqdm(total=steps, desc="pre-training the demo CLIP on image-caption pairs (once; cached)", unit="step")

  def log(i, losses):
    bar.update(1)
    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
  model, losses = pretrain(images, captions, arch=arch, steps=steps, seed=seed, log=log)
  bar.close()
  accuracy = zero_shot_accuracy(model, _read_images(data, "val"), _read_labels(data, "val"),
                                load_vocabulary("demo"))
  a = {k: f"{100 * v:.1f}%" for k, v in accuracy.items()}
  print(f"demo CLIP, zero-shot on demo val: recognises (image level) top-1 {a['image_top1']}, "
        f"precision@k {a['image_precision_at_k']} (chance {a['chance_precision_at_k']}); "
        f"localises (dense patches) {a['patch_accuracy']}, per class {a['patch_class_accuracy']} "
        f"(always the commonest class: {a['majority_patch_accuracy']})", flush=True)
  save_orbax_clip(model, out)
  with open(os.path.join(out, "done.json"), "w") as f:
    json.dump({"version": VERSION, "steps": steps, "final_losses": losses, "val_zero_shot": accuracy}, f)
