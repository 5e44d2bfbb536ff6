"""GKC's optional per-segment synonym filter: which synonyms CLIP finds plausible for a segment.

For every segment of COCO panoptic whose class has several synonyms: crop the segment's bounding
box from the image, prepare it as CLIP's own preprocessing does (bicubic resize of the short side
to the tower's input size, centre crop), and take the softmax of exp(logit_scale) · cosine against
"a photo of {synonym}" over the class's synonyms; keep those with p > threshold (GKC: 0.1). A
segment where none passes keeps its class name (index 0). Segments of one-synonym classes keep
[0] without running CLIP.

Runs on the host (decoding) and the accelerator (both CLIP towers); imports jax, so it is a
preparation tool, never imported by the training input pipeline.
"""
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image

from input_pipeline import synonyms as synonyms_lib

PROMPT = "a photo of {}"
VOCABULARY = "coco_panoptic_133"


def box_crop(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) uint8 image, (H, W) bool mask -> (size, size, 3) uint8: the mask's bounding box,
  short side resized to `size` (bicubic), centre-cropped (CLIP's preprocessing)."""
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  crop = Image.fromarray(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
  w, h = crop.size
  # torchvision's Resize(size) and CenterCrop(size), as OpenAI CLIP's preprocess uses them
  w, h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  crop = crop.resize((w, h), Image.BICUBIC)
  left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
  return np.asarray(crop.crop((left, top, left + size, top + size)))


def panoptic_segments(source, max_images: int = 0, workers: int = 8
                      ) -> Iterator[tuple[str, int, int, np.ndarray, np.ndarray]]:
  """(PNG name, COCO segment id, label id, image (H, W, 3), mask (H, W)) of every segment, images
  decoded `workers` at a time (PIL releases the GIL while decoding)."""
  from concurrent.futures import ThreadPoolExecutor

  from tqdm import tqdm

  def read(i):
    raw = source.raw(i)
    return raw, source.decode(raw)

  n = len(source) if max_images <= 0 else min(max_images, len(source))
  with ThreadPoolExecutor(workers) as pool, tqdm(total=n, desc="images", unit="img") as bar:
    for start in range(0, n, 4 * workers):  # bounded read-ahead: a chunk of images at a time
      for raw, rec in pool.map(read, range(start, min(n, start + 4 * workers))):
        png = os.path.basename(raw["label_file"])
        for k, (seg_id, cls) in enumerate(zip(raw["segment_ids"], rec["segment_classes"])):
          yield png, int(seg_id), int(cls), rec["image"], rec["pan_seg"] == k + 1
        bar.update()


def synonym_probabilities(model, synonyms: synonyms_lib.SynonymSets,
                          segments: Iterable[tuple[str, int, int, np.ndarray, np.ndarray]],
                          batch_size: int = 64) -> Iterator[tuple[str, int, np.ndarray | None]]:
  """(png, segment id, label, image, mask) -> (png, segment id, (K_c,) CLIP probabilities over
  the class's synonyms), or None for a one-synonym class or an empty mask (nothing to choose)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from ovs_jax.models.clip import l2_normalize
  from ovs_jax.preprocess import normalize
  from ovs_jax.text_classifier import encode_sentences

  text = encode_sentences(model, [PROMPT.format(n) for n in synonyms.names])  # (S, D) unit rows
  scale = float(np.exp(np.asarray(model.logit_scale[...], np.float32)))
  size = model.config.vision.image_size
  graphdef, state = nnx.split(model)

  @jax.jit
  def embed(state, pixels):
    return l2_normalize(nnx.merge(graphdef, state).get_image_features(pixels).astype(jnp.float32))

  pending = []  # (png, segment id, label, crop)

  def flush():
    pixels = np.stack([normalize(crop) for *_, crop in pending])
    pixels = np.pad(pixels, ((0, batch_size - len(pending)), (0, 0), (0, 0), (0, 0)))  # one shape
    emb = np.asarray(embed(state, jnp.asarray(pixels)))
    for (png, seg_id, cls, _), e in zip(pending, emb):
      logits = scale * text[synonyms.index[cls, :synonyms.counts[cls]]] @ e
      p = np.exp(logits - logits.max())
      yield png, seg_id, p / p.sum()
    pending.clear()

  for png, seg_id, cls, image, mask in segments:
    if synonyms.counts[cls] == 1 or not mask.any():
      yield png, seg_id, None
      continue
    pending.append((png, seg_id, cls, box_crop(image, mask, size)))
    if len(pending) == batch_size:
      yield from flush()
  if pending:
    yield from flush()


def segment_filter(model, synonyms: synonyms_lib.SynonymSets,
                   segments: Iterable[tuple[str, int, int, np.ndarray, np.ndarray]],
                   threshold: float = 0.1, batch_size: int = 64) -> dict[str, dict[str, list[int]]]:
  """{PNG name: {segment id: synonym indices with p > threshold, else [0]}}."""
  out: dict[str, dict[str, list[int]]] = {}
  for png, seg_id, p in synonym_probabilities(model, synonyms, segments, batch_size):
    keep = [0] if p is None else np.nonzero(p > threshold)[0].tolist()
    out.setdefault(png, {})[str(seg_id)] = keep or [0]
  return out


def run(clip: str, data_root: str, out: str, split: str = "train", threshold: float = 0.1,
        batch_size: int = 64, max_images: int = 0) -> dict:
  """Filters every segment of COCO panoptic `split` under data_root; writes the JSON to `out`."""
  from input_pipeline import datasets
  from ovs_jax.methods.maskclip import clip_from_spec

  synonyms = synonyms_lib.load_synonyms(VOCABULARY)
  source = datasets.get_dataset(VOCABULARY, split, root=data_root)
  model = clip_from_spec(clip)
  segments = segment_filter(model, synonyms, panoptic_segments(source, max_images), threshold,
                            batch_size)
  data = {"format": synonyms_lib.FILTER_FORMAT, "vocabulary": VOCABULARY,
          "synonyms_sha256": synonyms.sha256, "clip": clip, "prompt": PROMPT,
          "threshold": threshold, "split": split, "segments": segments}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = f"{out}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f)
  os.replace(tmp, out)  # atomic: a crashed run leaves no half file
  kept = [len(k) for segs in segments.values() for k in segs.values()]
  print(f"{out}: {len(segments)} images, {len(kept)} segments, "
        f"{np.mean(kept) if kept else 0:.2f} synonyms kept per segment")
  return data
