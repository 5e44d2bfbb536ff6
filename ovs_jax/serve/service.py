"""The web app's engine, free of any web framework: a model loaded once, a compiled `Segmenter` per
class list (least recently used dropped), one inference at a time behind a bounded wait queue, and
each result as JSON with PNGs inside (overlay, label map, class ids for hovering)."""
from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import functools
import io
import logging
import threading
import time

import numpy as np
from PIL import Image

from input_pipeline import files
from input_pipeline.vocab import VocabularyError, load_vocabulary, parse_vocabulary, vocabulary_names
from ovs_jax import visualize
from ovs_jax.inference.segmenter import DEFAULT_CACHE, Segmenter, demo_inputs

log = logging.getLogger(__name__)
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"
DEMO_IMAGES = 4


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask; docs/serve.md lists the defaults and their flags."""
  max_upload_bytes: int = 20 * 2**20
  max_pixels: int = 4096 * 4096
  max_classes: int = 1500      # LVIS-1203 fits
  max_waiting: int = 8         # requests waiting behind the running one; more get 503
  max_vocabularies: int = 8    # compiled class lists kept (each holds its text classifier)


class RequestError(Exception):
  """A request the app refuses: the HTTP status and one message for the person who sent it."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status, self.message = status, message


NO_IMAGE = "no image: choose, drop or pick an image first"


def too_large(what: str, size: int, limit: int) -> RequestError:
  return RequestError(413, f"{what}: {size / 2**20:.3g} MB is over this server's limit of "
                           f"{limit / 2**20:.3g} MB")


def load_model(*, checkpoint=None, clip=None, hidden_act=None, templates=("{}",),
               cache_dir=DEFAULT_CACHE / "text"):
  """(name, vocabulary -> SegmentationModel) with the weights loaded once: a trained workdir of any
  registered method, or CLIP weights (a path, `random:<arch>`, `demo:<arch>`) for MaskCLIP."""
  if checkpoint:
    from ovs_jax.inference.segmentation_model import open_checkpoint
    return str(checkpoint), open_checkpoint(checkpoint, templates=templates, cache_dir=cache_dir)
  from ovs_jax.methods.maskclip import clip_from_spec, maskclip_model
  if clip.startswith("random:"):
    log.warning("Using RANDOM CLIP weights (%s): the app runs, the masks are meaningless.", clip)
  model = clip_from_spec(clip, hidden_act)
  return f"MaskCLIP ({clip})", lambda v: maskclip_model(model, v, templates=templates, cache_dir=cache_dir)


def png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def data_url(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def id_image(label: np.ndarray) -> np.ndarray:
  """(H, W) class ids -> (H, W, 3) uint8 with id = R + 256 G: browsers decode 8-bit RGB PNGs
  exactly, while 16-bit grey label maps (> 256 classes) lose their low byte in a canvas."""
  label = label.astype(np.uint32)
  return np.stack([label & 255, label >> 8, np.zeros_like(label)], -1).astype(np.uint8)


def result_json(image: np.ndarray, label: np.ndarray, names: list[str]) -> dict:
  """What the page shows: the present classes by pixel share, the overlay, the label map and the
  hover map as PNG data URLs, all at the input size."""
  ids, counts = np.unique(label, return_counts=True)
  colors = visualize.palette(len(names))
  present = [{"id": int(i), "name": names[i], "color": "#%02x%02x%02x" % tuple(colors[i]),
              "share": float(n / label.size)} for n, i in sorted(zip(counts, ids), reverse=True)]
  label_png = io.BytesIO()
  visualize.save_label_png(label, label_png)
  return {"height": int(label.shape[0]), "width": int(label.shape[1]), "names": names,
          "classes": present,
          "overlay": data_url(png(visualize.blend(image, label, len(names)))),
          "label": data_url(label_png.getvalue()), "ids": data_url(png(id_image(label)))}


class SegmentService:
  """`segment(upload bytes, file name, classes text, preset)` -> `result_json`, or `RequestError`.

  `make_model(vocabulary)` gives a SegmentationModel over shared weights; `inference` holds the
  Segmenter settings (short_side, max_size, mode, window, stride)."""

  def __init__(self, name: str, make_model, inference: dict, limits: Limits = Limits(),
               default_vocabulary: str = ""):
    self.name, self.limits, self.default_vocabulary = name, limits, default_vocabulary
    self._make_model, self._inference = make_model, inference
    self._segmenters = collections.OrderedDict()
    self._model_lock = threading.Lock()   # one inference at a time: the device is the bottleneck
    self._count_lock = threading.Lock()
    self._admitted = 0                    # running + waiting

  def vocabulary(self, classes: str, preset: str) -> list[list[str]]:
    """Typed classes (`parse_vocabulary`'s grammar) or else a shipped vocabulary's name."""
    if classes.strip():
      try:
        vocabulary = parse_vocabulary(classes, where="class list")
      except VocabularyError as e:
        raise RequestError(400, str(e)) from None
    elif preset:
      if preset not in vocabulary_names():
        raise RequestError(400, f"unknown vocabulary {preset!r}; expected one of: "
                                f"{', '.join(vocabulary_names())}")
      vocabulary = load_vocabulary(preset)
    else:
      raise RequestError(400, "no class names: type classes (e.g. 'sky, clouds; grass; dog') or "
                              "pick a vocabulary")
    if len(vocabulary) > self.limits.max_classes:
      raise RequestError(400, f"{len(vocabulary)} classes; this server takes at most "
                              f"{self.limits.max_classes}")
    return vocabulary

  def decode(self, data: bytes, filename: str) -> np.ndarray:
    """Upload bytes -> (H, W, 3) uint8, its size checked from the header before decoding."""
    if not data:
      raise RequestError(400, f"{filename}: empty file (0 bytes); choose the image again")
    if len(data) > self.limits.max_upload_bytes:
      raise too_large(filename, len(data), self.limits.max_upload_bytes)
    try:
      h, w = files.image_size(filename, data)
    except files.DataError:
      raise RequestError(415, f"{filename}: not an image this app can read; expected {FORMATS}") from None
    if h * w > self.limits.max_pixels:
      raise RequestError(413, f"{filename}: {w} x {h} pixels ({h * w / 1e6:.3g} MP) is over this "
                              f"server's limit of {self.limits.max_pixels / 1e6:.3g} MP; downscale it")
    try:
      return files.decode_image(filename, data)[0]
    except files.DataError as e:
      raise RequestError(415, str(e)) from None

  def check_settings(self) -> None:
    """Builds a one-class segmenter, so that settings the model cannot take (a window that is not
    a multiple of its patch size) stop the server at start, not each request."""
    Segmenter(self._make_model([["object"]]), **self._inference)

  def segment(self, data: bytes, filename: str, classes: str = "", preset: str = "") -> dict:
    """`result_json` + `seconds` (waiting for the model included) and `model`; RequestError for
    anything refused."""
    vocabulary = self.vocabulary(classes, preset)
    image = self.decode(data, filename)
    start = time.perf_counter()
    with self._turn():
      segment = self._segmenter(vocabulary)
      label = segment(image)
    out = result_json(image, label, segment.names)
    return out | {"seconds": round(time.perf_counter() - start, 3), "model": self.name}

  @contextlib.contextmanager
  def _turn(self):
    """Waits for the model; refuses with 503 when `max_waiting` requests already wait."""
    with self._count_lock:
      if self._admitted > self.limits.max_waiting:
        raise RequestError(503, f"busy: {self._admitted} requests are ahead of this one; try again "
                                "in a moment")
      self._admitted += 1
    try:
      with self._model_lock:
        yield
    finally:
      with self._count_lock:
        self._admitted -= 1

  def _segmenter(self, vocabulary) -> Segmenter:
    """The compiled segmenter of this class list (the text classifier is also cached on disk)."""
    key = tuple(map(tuple, vocabulary))
    if key in self._segmenters:
      self._segmenters.move_to_end(key)
    else:
      self._segmenters[key] = Segmenter(self._make_model(vocabulary), **self._inference)
      if len(self._segmenters) > self.limits.max_vocabularies:
        self._segmenters.popitem(last=False)
    return self._segmenters[key]

  @functools.cached_property
  def demo_images(self) -> list[bytes]:
    """PNGs of the first demo validation scenes (generated once, cached on disk)."""
    records, _ = demo_inputs(DEMO_IMAGES)
    return [png(r["image"]) for r in records]
