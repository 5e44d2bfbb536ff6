"""The embedded demo dataset: procedurally generated, labelled scenes, with captions.

30 classes of stuff and things (`input_pipeline/demo_scene.py` paints them; classes and synonyms:
`input_pipeline/vocab/demo.txt`; the world and its seen/unseen split: docs/data.md#the-demo-world).
Everything follows from (seed, split, index), so the dataset is identical on every machine; it is
written once as PNGs in the `demo` folder layout under the cache dir ($OVS_JAX_CACHE or
~/.cache/ovs_jax).

Captions (the demo CLIP's pre-training text and SimZSS's demo): 5 per image, generated from the
label map and the pixels by `caption_scene`; `demo_coco_root` writes them with the images in the
COCO Captions layout.
"""
import json
import os
import shutil

import numpy as np
from PIL import Image
from scipy import ndimage

from input_pipeline import datasets
from input_pipeline import vocab as vocab_lib
from input_pipeline.cached import build_once
from input_pipeline.concepts import last_word_forms, plural_forms
from input_pipeline.demo_scene import (  # noqa: F401  (the class ids and generate_scene: this module's API)
    BALL, BARREL, BOX, CAR, CONE, DIRT, FLOWER, GRASS, GRAVEL, GROUNDS, HEART, HOUSE, KITE, MOON, MOUNTAIN,
    MUSHROOM, NUM_CLASSES, PAINTED, PAINTS, PYRAMID, RING, ROAD, ROCK, SAND, SKY, SKY_THINGS, SNOW, STAR,
    SUN, THINGS, TILES, TREE, UMBRELLA, WALL, WATER, WOOD_FLOOR, generate_scene, paint_object)
from input_pipeline.folder import FolderSource

VERSION = 2  # bump when the generator changes, so stale caches are not reused
CAPTIONS_VERSION = 2  # bump when caption_scene changes (the images keep VERSION)
SPLITS = {"train": 0, "val": 1}
CAPTIONS_PER_IMAGE = 5
MIN_FRACTION = 0.01  # a class is mentioned when it covers at least 1% of the image
_PART_FRACTION = 0.002  # a connected part counts as one object from 0.2% of the image
_SMALL, _LARGE = 0.012, 0.05  # a thing's largest part is "small" / "large" below / above this
_COLOURS = {SKY: "blue", GRASS: "green", WATER: "blue", ROAD: "grey", WALL: "red", SAND: "yellow",
            SNOW: "white", DIRT: "brown", BOX: "brown", TREE: "green", SUN: "yellow", MOON: "pale",
            STAR: "white", HOUSE: "white", PYRAMID: "yellow", BARREL: "brown", ROCK: "grey",
            MUSHROOM: "red", CONE: "amber"}  # fixed colours; PAINTED things' are read from pixels
_NUMBERS = ("one", "two", "three", "four", "five", "six")
_SCENES = ("a view of", "a scene with", "an image of", "a simple scene showing", "a rendering of")
_object = paint_object  # the painter's name in earlier versions


def cache_root(cache_dir: str | None = None) -> str:
  return (cache_dir or os.environ.get("OVS_JAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "ovs_jax"))


def _generate(path: str, seed: int, sizes: dict, hw) -> None:
  for split, n in sizes.items():
    for sub in ("images", "annotations"):
      os.makedirs(os.path.join(path, sub, split))
    for i in range(n):
      image, label = generate_scene(np.random.default_rng((seed, SPLITS[split], i)), hw)
      Image.fromarray(image).save(os.path.join(path, "images", split, f"{i:05d}.png"), compress_level=1)
      Image.fromarray(label).save(os.path.join(path, "annotations", split, f"{i:05d}.png"))
  with open(os.path.join(path, "done.json"), "w") as f:
    json.dump({"version": VERSION, "seed": seed, "sizes": sizes, "hw": list(hw)}, f)


def demo_root(cache_dir: str | None = None, seed: int = 0, num_train: int = 400,
              num_val: int = 64, hw=(160, 160)) -> str:
  """Generates the demo dataset on first use (atomically, safe across processes); its root."""
  name = f"demo-v{VERSION}-seed{seed}-{num_train}x{num_val}-{hw[0]}x{hw[1]}"
  path = os.path.join(cache_root(cache_dir), name)
  return build_once(path, lambda tmp: _generate(tmp, seed, {"train": num_train, "val": num_val}, tuple(hw)))


def demo_dataset(split: str, cache_dir: str | None = None, *, seed: int = 0, num_train: int = 400,
                 num_val: int = 64, hw=(160, 160), skip_bad: bool = False) -> FolderSource:
  """The demo dataset's split ('train' or 'val') as a source; 30 classes, vocabulary 'demo'."""
  meta = datasets.dataset_meta("demo", split)
  root = demo_root(cache_dir, seed, num_train, num_val, hw)
  return FolderSource(meta, datasets.DATASETS["demo"].layout, root, skip_bad=skip_bad)


def _paint_colour(pixels: np.ndarray) -> str | None:
  """The paint most of the pixels are (by chromaticity: shading scales all channels), if any."""
  rgb = pixels / np.maximum(pixels.max(1, keepdims=True), 1)
  near = {k: (np.sum((rgb - np.asarray(v) / max(v)) ** 2, 1) < 0.05).mean() for k, v in PAINTS.items()}
  best = max(near, key=near.get)
  return best if near[best] >= 0.3 else None


def _things(image: np.ndarray, label: np.ndarray) -> dict[int, dict]:
  """class -> {count, colour, size, cy, cx, ground} for the classes covering >= MIN_FRACTION."""
  h, w = label.shape
  things = {}
  for cls in (int(c) for c in np.unique(label)):
    mask = label == cls
    if mask.mean() < MIN_FRACTION:
      continue
    ys, xs = np.nonzero(mask)
    thing = {"count": 1, "colour": _COLOURS.get(cls), "size": None, "cy": ys.mean() / h,
             "cx": xs.mean() / w, "ground": None}
    if cls in THINGS:
      parts, n = ndimage.label(mask)
      sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
      big = [p + 1 for p in np.nonzero(sizes >= _PART_FRACTION * h * w)[0]]
      thing["count"] = max(1, len(big))
      if cls in PAINTED and cls != FLOWER:  # one paint for all parts, or none named
        colours = {_paint_colour(image[parts == p].astype(np.float32)) for p in big or range(1, n + 1)}
        thing["colour"] = colours.pop() if len(colours) == 1 else None
      largest = parts == 1 + int(np.argmax(sizes))
      fraction = largest.mean()
      thing["size"] = "small" if fraction < _SMALL else "large" if fraction > _LARGE else None
      py, px = np.nonzero(largest)
      bottom = py.max()
      below = label[min(bottom + 1, h - 1), int(np.median(px[py == bottom]))]
      thing["ground"] = int(below) if below in GROUNDS and below != cls else None
    things[cls] = thing
  for thing in things.values():  # only classes the caption may mention
    if thing["ground"] not in things:
      thing["ground"] = None
  return things


def _singular_names(cls: int) -> list[str]:
  """The class's names minus the plurals of its other names ('trees' of 'tree')."""
  names = [n.lower() for n in vocab_lib.load_vocabulary("demo")[cls]]
  plurals = {p for n in names for p in last_word_forms(n, plural_forms)}
  return [n for n in names if n not in plurals]


def _phrase(rng, cls: int, thing: dict, article: str = "a") -> str:
  """A noun phrase naming `thing` with a random synonym: 'two red balls', 'the lawn', 'a small kite'."""
  name = str(rng.choice(_singular_names(cls)))
  if thing["colour"] and " " not in name and rng.random() < 0.5:
    name = f"{thing['colour']} {name}"
  if thing["size"] and thing["count"] == 1 and rng.random() < 0.5:
    name = f"{thing['size']} {name}"
  if cls not in THINGS:
    return f"the {name}"
  if thing["count"] > 1:
    return f"{_NUMBERS[min(thing['count'], len(_NUMBERS)) - 1]} {last_word_forms(name, plural_forms)[0]}"
  if article == "the":
    return f"the {name}"
  return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _join(parts: list[str]) -> str:
  return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _relation(a: dict, b: dict) -> str:
  """Where a is relative to b, from their centroids (image y grows downwards)."""
  dy, dx = a["cy"] - b["cy"], a["cx"] - b["cx"]
  if abs(dy) > abs(dx):
    return "above" if dy < 0 else "below"
  return "next to" if abs(dx) < 0.25 else ("to the left of" if dx < 0 else "to the right of")


def caption_scene(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> list[str]:
  """CAPTIONS_PER_IMAGE captions (str) of a demo scene: image (H, W, 3) uint8, label (H, W).

  They mention only the classes covering at least MIN_FRACTION of the image, by their synonyms,
  with counts, sizes, colours (painted things: read from the pixels) and relations from the
  segments' centroids ('above', 'next to', ...) or from what lies under a thing ('on the grass').
  The first lists every class present.
  """
  things = _things(image, label)
  stuff = sorted((c for c in things if c not in THINGS), key=lambda c: things[c]["cy"])
  objects = [c for c in things if c in THINGS]
  name = lambda c, article="a": _phrase(rng, c, things[c], article)

  def inventory():
    order = list(rng.permutation(list(things)))
    return f"{rng.choice(_SCENES)} {_join([name(c) for c in order])}"

  def grounded():
    placed = [c for c in objects if things[c]["ground"] is not None or (c in SKY_THINGS and SKY in things)]
    if not placed:
      return None
    c = int(rng.choice(placed))
    if c in SKY_THINGS and SKY in things:
      return f"{name(c, 'the' if c in (SUN, MOON) else 'a')} in {name(SKY)}"
    if things[c]["ground"] is None:
      return None
    where = "in" if things[c]["ground"] == WATER else "on"
    return f"{name(c)} {where} {name(things[c]['ground'])}"

  def layers():
    if len(stuff) < 2:
      return None
    i = int(rng.integers(len(stuff) - 1))
    upper, lower = stuff[i], stuff[i + 1]
    if rng.random() < 0.5:
      return f"{name(upper)} above {name(lower)}"
    return f"{name(lower)} {rng.choice(['below', 'under'] if upper in (SKY, WALL) else ['below'])} {name(upper)}"

  def pair():
    if len(objects) < 2:
      return None
    a, b = (int(c) for c in rng.choice(objects, 2, replace=False))
    return f"{name(a)} {_relation(things[a], things[b])} {name(b)}"

  def listing():
    if not objects:
      return f"{_join([name(c) for c in rng.permutation(stuff)])}"
    counted = [name(c) for c in objects]
    verb = "are" if counted[0].split()[0] in _NUMBERS else "is"
    return f"there {verb} {_join(counted)} in this image"

  captions = [c for c in (inventory(), grounded(), layers(), pair(), listing()) if c]
  for _ in range(20):  # simple scenes: more inventories and layers with other synonyms
    if len(captions) >= CAPTIONS_PER_IMAGE:
      break
    extra = layers() or inventory() if rng.random() < 0.5 else inventory()
    if extra not in captions:
      captions.append(extra)
  while len(captions) < CAPTIONS_PER_IMAGE:
    captions.append(inventory())
  return captions[:CAPTIONS_PER_IMAGE]


def scene_captions(seed: int, split: str, index: int, image: np.ndarray, label: np.ndarray) -> list[str]:
  """The demo's captions of image `index` of `split`: their own random stream, so the images of
  `generate_scene` are untouched."""
  return caption_scene(image, label, np.random.default_rng((seed, SPLITS[split], index, 1)))


def write_coco_captions(root: str, split: str, images: list[tuple[str, str, list[str]]]) -> None:
  """COCO Captions layout: root/{split}2017/<file> copied from each (file name, source path,
  captions) and root/annotations/captions_{split}2017.json (image id = position)."""
  image_dir = os.path.join(root, f"{split}2017")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  entries, annotations = [], []
  for image_id, (file_name, source, captions) in enumerate(images):
    shutil.copyfile(source, os.path.join(image_dir, file_name))
    w, h = Image.open(source).size
    entries.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    annotations += [{"id": len(annotations) + k, "image_id": image_id, "caption": c}
                    for k, c in enumerate(captions)]
  data = {"info": {"description": "ovs_jax demo scenes with generated captions"}, "licenses": [],
          "images": entries, "annotations": annotations}
  with open(os.path.join(root, "annotations", f"captions_{split}2017.json"), "w") as f:
    json.dump(data, f, indent=0)


def _generate_coco(path: str, root: str, seed: int, sizes: dict) -> None:
  for split, n in sizes.items():
    images = []
    for i in range(n):
      image_file = os.path.join(root, "images", split, f"{i:05d}.png")
      image = np.asarray(Image.open(image_file).convert("RGB"))
      label = np.asarray(Image.open(os.path.join(root, "annotations", split, f"{i:05d}.png")))
      images.append((f"{i:05d}.png", image_file, scene_captions(seed, split, i, image, label)))
    write_coco_captions(path, split, images)
  with open(os.path.join(path, "done.json"), "w") as f:
    json.dump({"version": CAPTIONS_VERSION, "images_version": VERSION, "seed": seed, "sizes": sizes}, f)


def demo_coco_root(cache_dir: str | None = None, seed: int = 0, num_train: int = 400,
                   num_val: int = 64, hw=(160, 160)) -> str:
  """The demo in the COCO Captions layout (annotations/captions_{train,val}2017.json and the
  PNGs in {train,val}2017/), built once from `demo_root`'s images; its root."""
  root = demo_root(cache_dir, seed, num_train, num_val, hw)
  name = (f"demo-coco-captions-v{CAPTIONS_VERSION}-images-v{VERSION}-seed{seed}-"
          f"{num_train}x{num_val}-{hw[0]}x{hw[1]}")
  path = os.path.join(cache_root(cache_dir), name)
  return build_once(path, lambda tmp: _generate_coco(tmp, root, seed, {"train": num_train, "val": num_val}))


def demo_captions(split: str, cache_dir: str | None = None, *, seed: int = 0, num_train: int = 400,
                  num_val: int = 64, hw=(160, 160)) -> list[list[str]]:
  """The captions of each image of `demo_dataset(split)`, in its order (5 per image)."""
  root = demo_coco_root(cache_dir, seed, num_train, num_val, hw)
  with open(os.path.join(root, "annotations", f"captions_{split}2017.json")) as f:
    data = json.load(f)
  captions = [[] for _ in data["images"]]
  for a in data["annotations"]:
    captions[a["image_id"]].append(a["caption"])
  return captions
