"""Segmentation results as pictures: colour overlays with a legend, raw label PNGs, side by side."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE = 255


def palette(n: int) -> np.ndarray:
  """(n, 3) uint8 distinct colours (golden-ratio hue steps), the same for every run."""
  out = []
  for i in range(n):
    h = (i * 0.618033988749895) % 1.0
    s, v = (0.65, 0.95) if i % 2 == 0 else (0.9, 0.75)
    out.append([int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
  return np.asarray(out, np.uint8).reshape(n, 3)


def colorize(label: np.ndarray, num_classes: int) -> np.ndarray:
  """(H, W) class ids -> (H, W, 3) colours; ignore pixels black."""
  colors = np.concatenate([palette(num_classes), np.zeros((1, 3), np.uint8)])
  return colors[np.where(label == IGNORE, num_classes, np.clip(label, 0, num_classes - 1))]


def _legend(label: np.ndarray, names: list[str], height: int) -> Image.Image:
  ids, counts = np.unique(label[label != IGNORE], return_counts=True)
  order = np.argsort(-counts)
  font = ImageFont.load_default()
  row = 16
  width = 12 + 16 + 6 + 7 * max([len(names[i]) + 7 for i in ids] + [10])
  panel = Image.new("RGB", (width, max(height, row * (len(ids) + 1) + 8)), (255, 255, 255))
  draw = ImageDraw.Draw(panel)
  colors = palette(len(names))
  for r, k in enumerate(order):
    c = int(ids[k])
    y = 6 + r * row
    draw.rectangle([6, y, 6 + 14, y + 12], fill=tuple(int(v) for v in colors[c]), outline=(0, 0, 0))
    draw.text((26, y), f"{names[c]} {100 * counts[k] / label.size:.0f}%", fill=(0, 0, 0), font=font)
  return panel


def blend(image: np.ndarray, label: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
  """(H, W, 3) uint8: the image with each pixel's class colour mixed in (ignore pixels untouched)."""
  color = colorize(label, num_classes).astype(np.float32)
  mixed = np.where((label == IGNORE)[..., None], image, (1 - alpha) * image + alpha * color)
  return mixed.astype(np.uint8)


def overlay_with_legend(image: np.ndarray, label: np.ndarray, names: list[str],
                        alpha: float = 0.55) -> Image.Image:
  """Image (H, W, 3) uint8 blended with the coloured label map, legend of present classes at right."""
  legend = _legend(label, names, image.shape[0])
  canvas = Image.new("RGB", (image.shape[1] + legend.width, max(image.shape[0], legend.height)), "white")
  canvas.paste(Image.fromarray(blend(image, label, len(names), alpha)), (0, 0))
  canvas.paste(legend, (image.shape[1], 0))
  return canvas


def side_by_side(panels: list[Image.Image], titles: list[str]) -> Image.Image:
  """Panels next to each other with a title line above each."""
  top = 16
  w = sum(p.width for p in panels) + 4 * (len(panels) - 1)
  canvas = Image.new("RGB", (w, top + max(p.height for p in panels)), "white")
  draw, x = ImageDraw.Draw(canvas), 0
  for p, t in zip(panels, titles):
    canvas.paste(p, (x, top))
    draw.text((x + 4, 2), t, fill=(0, 0, 0), font=ImageFont.load_default())
    x += p.width + 4
  return canvas


def save_label_png(label: np.ndarray, path) -> None:
  """Raw class ids to a path or a binary file: 8-bit PNG when they fit (255 = ignore), 16-bit
  otherwise (e.g. ADE-847)."""
  label = np.asarray(label)
  dtype = np.uint8 if label.max(initial=0) <= 255 else np.uint16
  Image.fromarray(label.astype(dtype)).save(path, format="PNG")
