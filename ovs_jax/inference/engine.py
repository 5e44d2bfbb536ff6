"""Jitted, sharded inference and evaluation steps, and the loop over a dataset split.

The batch is sharded over every device of a 1-D ('data',) mesh (over hosts too); params and the
running confusion matrix are replicated. Images travel as uint8 and are CLIP-normalised on device,
then the padding is set to 0 (the mean colour), as detectron2 pads after normalisation.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from input_pipeline.global_batch import make_global_batch
from input_pipeline.loader import make_eval_loader
from ovs_jax import metrics, preprocess
from ovs_jax.inference import batching, windows
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.segmentation_model import SegmentationModel


def data_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def class_scores(model: SegmentationModel, cfg: InferenceConfig, params, image, image_hw):
  """uint8 canvases (B, Hc, Wc, 3) -> (B, Hc, Wc, C) scores, whole image or sliding window."""
  mean, std = jnp.asarray(preprocess.CLIP_MEAN), jnp.asarray(preprocess.CLIP_STD)
  pixels = (image.astype(jnp.float32) / 255.0 - mean) / std
  # detectron2's ImageList pads the *normalised* image with 0: the padding is the mean colour.
  pixels = jnp.where(windows.valid_mask(image_hw, image.shape[1:3])[..., None], pixels, 0.0)
  if cfg.mode == "whole":
    return windows.whole_image_scores(model.apply, params, pixels, image_hw)
  return windows.sliding_window_scores(model.apply, params, pixels, image_hw, cfg.window, cfg.stride)


def make_label_fn(model: SegmentationModel, cfg: InferenceConfig):
  """jitted (params, image, image_hw, orig_hw, out_shape) -> (B, *out_shape) int32 labels at the
  original sizes (zero outside each image)."""
  cfg = cfg.for_model(model.input_multiple)

  @functools.partial(jax.jit, static_argnums=4)
  def labels(params, image, image_hw, orig_hw, out_shape):
    scores = class_scores(model, cfg, params, image, image_hw)
    return windows.scores_to_labels(scores, image_hw, orig_hw, out_shape, cfg.row_chunk)
  return labels


def make_eval_step(model: SegmentationModel, cfg: InferenceConfig, ignore_label: int, mesh):
  """jitted (params, counts, batch) -> counts + this batch's confusion matrix (counts donated)."""
  label_fn = make_label_fn(model, cfg)
  replicated = NamedSharding(mesh, P())

  @functools.partial(jax.jit, donate_argnums=1, out_shardings=(replicated, replicated))
  def step(params, counts, batch):
    pred = label_fn(params, batch["image"], batch["image_hw"], batch["orig_hw"],
                    batch["label"].shape[1:])
    cm = metrics.confusion_matrix(pred, batch["label"], model.num_classes, ignore_label,
                                  batch["valid"][:, None, None])
    return metrics.add_counts(counts, cm)
  return step


class FirstRecords:
  """The first n records of a source (for quick runs)."""

  def __init__(self, source, n):
    self.source, self.n = source, min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[i]

  def __getattr__(self, name):
    return getattr(self.source, name)


def check_vocabulary(model: SegmentationModel, source) -> None:
  name = getattr(getattr(source, "meta", None), "name", repr(source))
  if model.num_classes != source.num_classes:
    raise ValueError(f"the vocabulary has {model.num_classes} classes but {name} has "
                     f"{source.num_classes} (labels 0..{source.num_classes - 1}); give that "
                     "dataset's vocabulary, one class per label id in label order")


def evaluate_source(model: SegmentationModel, source, cfg: InferenceConfig, *, batch_size: int,
                    mesh=None, max_images: int | None = None, workers: int = 0,
                    desc: str = "eval") -> tuple[np.ndarray, int, int]:
  """One pass over `source` -> (int64 confusion matrix counts[label, pred], images scored, images
  skipped). Skipped: records a `skip_bad` source could not read (logged where they were read)."""
  check_vocabulary(model, source)
  cfg = cfg.for_model(model.input_multiple)
  mesh = data_mesh() if mesh is None else mesh
  if batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} is not a multiple of the {mesh.size} devices")
  if max_images:
    source = FirstRecords(source, max_images)
  loader = make_eval_loader(source, batch_size, [batching.ResizeForEval(cfg.short_side, cfg.max_size)],
                            worker_count=workers)
  step = make_eval_step(model, cfg, source.ignore_label, mesh)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(model.params, replicated)
  counts = jax.device_put(metrics.zero_counts(model.num_classes), replicated)
  total = -(-len(source) // batch_size)
  scored = 0  # valid records of this host (padding and skipped records are not)
  for host_batch in tqdm(loader, total=total, desc=desc, unit="batch", leave=False):
    batch = batching.pad_batch(host_batch, cfg, source.ignore_label)
    scored += int(batch["valid"].sum())
    if batch["label"][0].size * batch_size >= 2**31:
      raise ValueError(f"a batch of {batch_size} labels of {batch['label'].shape[1:]} overflows the "
                       "int32 per-step counts; lower --batch_size")
    device_batch, _ = make_global_batch(batch, sharded)
    counts = step(params, counts, device_batch)  # asynchronous: the host prepares the next batch
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    scored = int(np.sum(multihost_utils.process_allgather(np.int64(scored))))
  return metrics.counts_to_numpy(counts), scored, len(source) - scored
