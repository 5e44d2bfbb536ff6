"""The embedded demo dataset: procedurally generated, labelled outdoor scenes, with captions.

Each image has a sky (or brick wall) above a horizon, one or two textured ground regions (grass,
water, road, sand) below a wavy boundary, and 0-4 objects (ball, box, tree, sun) painted far to
near. Classes and synonyms: `input_pipeline/vocab/demo.txt`. Everything follows from
(seed, split, index), so the dataset is identical on every machine; it is written once as PNGs
in the `demo` folder layout under the cache dir ($OVS_JAX_CACHE or ~/.cache/ovs_jax).

Captions (SimZSS's demo): 5 per image, generated from the label map and the pixels by
`caption_scene`; `demo_coco_root` writes them with the images in the COCO Captions layout.
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
from input_pipeline.folder import FolderSource

VERSION = 1  # bump when the generator changes, so stale caches are not reused
CAPTIONS_VERSION = 1  # bump when caption_scene changes (the images keep VERSION)
SKY, GRASS, WATER, ROAD, WALL, SAND, BALL, BOX, TREE, SUN = range(10)
SPLITS = {"train": 0, "val": 1}
CAPTIONS_PER_IMAGE = 5
MIN_FRACTION = 0.01  # a class is mentioned when it covers at least 1% of the image
_PART_FRACTION = 0.002  # a connected part counts as one object from 0.2% of the image
_GROUND = (GRASS, WATER, ROAD, SAND)
_OBJECTS = (BALL, BOX, TREE, SUN)
_COLOURS = {SKY: "blue", GRASS: "green", WATER: "blue", ROAD: "grey", WALL: "red", SAND: "yellow",
            BOX: "brown", TREE: "green", SUN: "yellow"}
# The ball paints of `_object`, read back from the pixels; "amber" because "orange" is a concept.
_BALL_PAINTS = {"red": (220, 30, 30), "blue": (30, 70, 220), "amber": (250, 140, 20),
                "yellow": (240, 220, 40)}
_NUMBERS = ("one", "two", "three", "four", "five", "six")
_SCENES = ("a view of", "a scene with", "an image of", "a simple scene showing", "a rendering of")


def cache_root(cache_dir: str | None = None) -> str:
  return (cache_dir or os.environ.get("OVS_JAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "ovs_jax"))


def _noise(rng, hw, cells, amp=1.0):
  """Smooth value noise (H, W) in about [-amp, amp]: random cells, bicubic upsampled."""
  ch, cw = max(2, hw[0] // cells), max(2, hw[1] // cells)
  low = Image.fromarray(rng.uniform(-1, 1, (ch, cw)).astype(np.float32), mode="F")
  return amp * np.asarray(low.resize((hw[1], hw[0]), Image.BICUBIC))


def _texture(cls, rng, hw, rows):
  """(H, W, 3) float RGB texture of a stuff class occupying image rows [rows[0], rows[1])."""
  h, w = hw
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  fine = rng.normal(0, 1, (h, w)).astype(np.float32)
  if cls == SKY:
    t = (y / h)[..., None]
    base = (1 - t) * np.array([40, 90, 200]) + t * np.array([150, 200, 245])
    cloud = np.clip(_noise(rng, hw, 24) * 1.8 - 0.3, 0, 1)[..., None]
    return base * (1 - cloud) + 245 * cloud
  if cls == GRASS:
    blades = _noise(rng, (h, w * 8), 2)[:, ::8]  # anisotropic noise: vertical streaks
    return np.array([60, 140, 45]) * (1 + 0.25 * blades + 0.12 * fine)[..., None]
  if cls == WATER:
    waves = np.sin(y * 0.9 + 3 * _noise(rng, hw, 20))
    return np.array([30, 95, 170]) + (25 * waves + 6 * fine)[..., None]
  if cls == ROAD:
    img = np.array([75, 75, 80]) + (14 * fine)[..., None]
    lane_y = rows[0] + rng.uniform(0.35, 0.65) * (rows[1] - rows[0])
    lane = (np.abs(y - lane_y) < 2) & ((x + rng.integers(20)) % 24 < 12)  # dashed centre line
    img[lane] = [235, 235, 225]
    return img
  if cls == WALL:
    bh, bw = int(rng.integers(9, 13)), int(rng.integers(20, 28))
    row = (y // bh).astype(int)
    mortar = (y % bh < 2) | ((x + (row % 2) * bw // 2) % bw < 2)
    col = ((x + (row % 2) * bw // 2) // bw).astype(int)  # every other row offset by half a brick
    shade = rng.uniform(0.8, 1.15, (row.max() + 2, w // bw + 3))[row, col]
    img = np.array([155, 65, 45]) * (shade + 0.06 * fine)[..., None]
    img[mortar] = [200, 195, 185]
    return img
  if cls == SAND:
    ripples = np.sin(y * 0.5 + x * 0.1 + 4 * _noise(rng, hw, 30))
    return np.array([215, 190, 130]) + (10 * ripples + 10 * fine)[..., None]
  raise ValueError(cls)


def _disc(hw, cy, cx, r):
  y, x = np.ogrid[0:hw[0], 0:hw[1]]
  return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def _object(cls, rng, hw, by, bx, s, img, label):
  """Paints object `cls` of scale s standing at (by, bx) into img/label."""
  h, w = hw
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  if cls == BALL:
    r = 9 * s
    cy = by - r
    m = _disc(hw, cy, bx, r)
    color = np.array([[220, 30, 30], [30, 70, 220], [250, 140, 20], [240, 220, 40]][rng.integers(4)])
    light = np.clip(1.25 - np.hypot(y - (cy - r / 3), x - (bx - r / 3)) / (1.6 * r), 0.35, 1.25)
    img[m] = np.clip(color * light[m][:, None], 0, 255)
  elif cls == BOX:
    bw, bh, d = 22 * s, 16 * s, 6 * s
    front = (y <= by) & (y >= by - bh) & (x >= bx - bw / 2) & (x <= bx + bw / 2)
    up, right = by - bh - y, x - bx - bw / 2  # oblique offsets of the top and side faces
    top = (up > 0) & (up <= d) & (x >= bx - bw / 2 + up) & (x <= bx + bw / 2 + up)
    side = (right > 0) & (right <= d) & (y <= by - right) & (y >= by - bh - right)
    m = front | top | side
    img[front] = [170, 120, 70]
    img[top] = [200, 155, 100]
    img[side] = [130, 90, 50]
    img[front & (np.abs(x - bx) < 1.5 * s)] = [215, 195, 150]  # packing tape
  elif cls == TREE:
    trunk = (y <= by) & (y >= by - 18 * s) & (np.abs(x - bx) <= 2.5 * s)
    r = 12 * s
    top_y = by - 18 * s
    crown = (_disc(hw, top_y - r * 0.7, bx, r) | _disc(hw, top_y - r * 0.2, bx - r * 0.6, r * 0.7)
             | _disc(hw, top_y - r * 0.2, bx + r * 0.6, r * 0.7))
    m = trunk | crown
    img[trunk] = [100, 65, 35]
    leaves = 1 + 0.3 * _noise(rng, hw, 3)
    img[crown] = np.clip(np.array([35, 120, 40]) * leaves[crown][:, None], 0, 255)
  elif cls == SUN:
    r = 8 * s
    m = _disc(hw, by, bx, r)
    glow = _disc(hw, by, bx, r * 1.6) & ~m
    img[glow] = 0.5 * img[glow] + [125, 120, 60]
    img[m] = [255, 230, 80]
  label[m] = cls


def generate_scene(rng: np.random.Generator, hw=(160, 160)) -> tuple[np.ndarray, np.ndarray]:
  """One scene: image (H, W, 3) uint8 and label (H, W) uint8 with ids from vocab 'demo'."""
  h, w = hw
  horizon = int(h * rng.uniform(0.3, 0.55))
  top = WALL if rng.random() < 0.25 else SKY
  grounds = rng.choice([GRASS, WATER, ROAD, SAND], size=int(rng.integers(1, 3)), replace=False)
  label = np.full(hw, top, np.uint8)
  xs = np.arange(w)
  edge = horizon + (3 * np.sin(xs / w * 6.28 * rng.uniform(0.5, 2) + rng.uniform(0, 6.28))).astype(int)
  rows = np.arange(h)[:, None]
  label[rows >= edge] = grounds[0]
  if len(grounds) > 1:
    split = int(rng.uniform(horizon + 0.25 * (h - horizon), h - 0.2 * (h - horizon)))
    edge2 = split + (4 * np.sin(xs / w * 6.28 * rng.uniform(0.5, 2))).astype(int)
    label[rows >= edge2] = grounds[1]
  img = np.zeros((h, w, 3), np.float32)
  for cls in np.unique(label):
    m = label == cls
    ys = np.nonzero(m.any(1))[0]
    img[m] = _texture(int(cls), rng, hw, (ys[0], ys[-1] + 1))[m]
  if top == SKY and rng.random() < 0.4:
    _object(SUN, rng, hw, int(rng.uniform(0.1, 0.7) * horizon), int(rng.uniform(0.1, 0.9) * w),
            rng.uniform(0.8, 1.3), img, label)
  objects = [(int(rng.uniform(horizon + 6, h - 2)), int(rng.integers(10, w - 10)),
              int(rng.choice([BALL, BOX, TREE]))) for _ in range(rng.integers(0, 5))]
  for by, bx, cls in sorted(objects):  # far (small y) first, near objects occlude them
    s = 0.6 + 1.4 * (by - horizon) / (h - horizon)  # perspective: nearer is larger
    _object(cls, rng, hw, by, bx, s, img, label)
  return np.clip(img, 0, 255).astype(np.uint8), label


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
  """The demo dataset's split ('train' or 'val') as a source; 10 classes, vocabulary 'demo'."""
  meta = datasets.dataset_meta("demo", split)
  root = demo_root(cache_dir, seed, num_train, num_val, hw)
  return FolderSource(meta, datasets.DATASETS["demo"].layout, root, skip_bad=skip_bad)


def _ball_colour(pixels: np.ndarray) -> str:
  """The paint nearest to the pixels' median chromaticity (shading scales all channels)."""
  rgb = np.median(pixels / np.maximum(pixels.max(1, keepdims=True), 1), axis=0)
  paints = {k: np.asarray(v) / max(v) for k, v in _BALL_PAINTS.items()}
  return min(paints, key=lambda k: float(np.sum((paints[k] - rgb) ** 2)))


def _things(image: np.ndarray, label: np.ndarray) -> dict[int, dict]:
  """class -> {count, colour, cy, cx, ground} for the classes covering >= MIN_FRACTION."""
  h, w = label.shape
  things = {}
  for cls in (int(c) for c in np.unique(label)):
    mask = label == cls
    if mask.mean() < MIN_FRACTION:
      continue
    ys, xs = np.nonzero(mask)
    thing = {"count": 1, "colour": _COLOURS.get(cls), "cy": ys.mean() / h, "cx": xs.mean() / w,
             "ground": None}
    if cls in _OBJECTS:
      parts, n = ndimage.label(mask)
      sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
      big = [p + 1 for p in np.nonzero(sizes >= _PART_FRACTION * h * w)[0]]
      thing["count"] = max(1, len(big))
      if cls == BALL:
        colours = {_ball_colour(image[parts == p].astype(np.float32)) for p in big or range(1, n + 1)}
        thing["colour"] = colours.pop() if len(colours) == 1 else None
      largest = parts == 1 + int(np.argmax(sizes))
      py, px = np.nonzero(largest)
      bottom = py.max()
      below = label[min(bottom + 1, h - 1), int(np.median(px[py == bottom]))]
      thing["ground"] = int(below) if below in _GROUND and below != cls else None
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
  """A noun phrase naming `thing` with a random synonym: 'two red balls', 'the lawn', 'a crate'."""
  name = str(rng.choice(_singular_names(cls)))
  if thing["colour"] and " " not in name and rng.random() < 0.5:
    name = f"{thing['colour']} {name}"
  if cls not in _OBJECTS:
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
  with counts, colours (balls: read from the pixels) and relations from the segments' centroids
  ('above', 'next to', ...) or from what lies under an object ('on the grass').
  """
  things = _things(image, label)
  stuff = sorted((c for c in things if c not in _OBJECTS), key=lambda c: things[c]["cy"])
  objects = [c for c in things if c in _OBJECTS]
  name = lambda c, article="a": _phrase(rng, c, things[c], article)

  def inventory():
    order = list(rng.permutation(list(things)))
    return f"{rng.choice(_SCENES)} {_join([name(c) for c in order])}"

  def grounded():
    placed = [c for c in objects if things[c]["ground"] is not None or (c == SUN and SKY in things)]
    if not placed:
      return None
    c = int(rng.choice(placed))
    if c == SUN:
      return f"{name(c, 'the')} in {name(SKY)}"
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

  def pair():  # two objects, or the sun over the ground (a band's centroid says little sideways)
    if len(objects) < 2:
      grounds = [c for c in stuff if c in _GROUND]
      return f"{name(SUN, 'the')} above {name(int(rng.choice(grounds)))}" if SUN in objects and grounds else None
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
