"""The embedded demo dataset: procedurally generated, labelled outdoor scenes.

Each image has a sky (or brick wall) above a horizon, one or two textured ground regions (grass,
water, road, sand) below a wavy boundary, and 0-4 objects (ball, box, tree, sun) painted far to
near. Classes and synonyms: `input_pipeline/vocab/demo.txt`. Everything follows from
(seed, split, index), so the dataset is identical on every machine; it is written once as PNGs
in the `demo` folder layout under the cache dir ($OVS_JAX_CACHE or ~/.cache/ovs_jax).
"""
import json
import os

import numpy as np
from PIL import Image

from input_pipeline import datasets
from input_pipeline.cached import build_once
from input_pipeline.folder import FolderSource

VERSION = 1  # bump when the generator changes, so stale caches are not reused
SKY, GRASS, WATER, ROAD, WALL, SAND, BALL, BOX, TREE, SUN = range(10)
SPLITS = {"train": 0, "val": 1}


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
