"""The method contract: what a method tells the shared trainer, restore, export and evaluation.

A method is one module under `ovs_jax/methods/` exposing `METHOD`, an instance of a `Method`
subclass, and one line in `ovs_jax/methods/registry.py`. The shared code never names a method:

  model  = method.build_model(config)                         # weights from the config
  model  = method.build_model(config, architecture)           # shapes from a saved record
  record = method.architecture(model)                         # -> config.json "architecture"
  source = method.train_source(config)                      # random-access training records
  vocab  = method.training_vocabulary(config)                # what the run trains on ([] for captions)
  data   = method.train_data(config, source, mesh)            # iterator of (global batch, state)
  ctx    = method.train_context(model, config, vocabulary, templates, cache_dir)   # any pytree
  loss, terms = method.loss(model, batch, rng, ctx, config)   # pure, jittable
  seg    = method.segmentation_model(graphdef, states, config, vocabulary, ...)    # inference
  make   = method.open_checkpoint(directory, config, ...); seg = make(vocabulary)   # workdir, once

Frozen parameters and learning-rate multipliers are regexes in the config (`config.frozen`,
`config.optim.lr_multipliers`); a method module exports its defaults for its config files.
"""
from __future__ import annotations

from pathlib import Path


class Method:
  """Base class; subclasses override what they need. `trainable=False` marks training-free methods."""

  name: str = ""
  trainable: bool = True

  def build_model(self, config, architecture: dict | None = None):
    """The model: weights as `config` says, or random weights in the shapes of `architecture`
    (a record from `architecture()`; used under `nnx.eval_shape` to restore checkpoints)."""
    raise NotImplementedError

  def architecture(self, model) -> dict:
    """A JSON-able record of everything `build_model` needs for the model's shapes."""
    raise NotImplementedError

  def train_source(self, config):
    """The random-access training source. Default: split 'train' of `config.data.train` (a
    segmentation dataset), the first `train_max_images` only when set, seen classes only under the
    zero-shot protocol. A ValueError is reported as a config error."""
    from input_pipeline import zero_shot
    from input_pipeline.datasets import get_dataset
    from ovs_jax.inference.engine import FirstRecords
    d = config.data
    train = get_dataset(d.train, "train", root=d.root or None, skip_bad=d.skip_bad)
    if d.get("train_max_images"):  # a fixed small subset (overfitting checks, smoke runs)
      train = FirstRecords(train, d.train_max_images)
    unseen = zero_shot.unseen_for(d.train, d.get("unseen", ""))
    return zero_shot.SeenOnly(train, unseen) if unseen else train

  def training_vocabulary(self, config) -> list[list[str]]:
    """The classes the run trains on (default: `config.data.train`'s, without unseen classes)."""
    from input_pipeline.zero_shot import training_vocabulary
    return training_vocabulary(config.data)

  def train_data(self, config, source, mesh):
    """Iterator of (global batch, iterator state) on `mesh`; `.save()`-able as grain's. Default:
    segmentation crops with mask targets (`input_pipeline.mappers`)."""
    from input_pipeline import loader
    from input_pipeline.global_batch import DevicePrefetcher
    from ovs_jax import sharding
    d = config.data
    mapper = self.train_mapper(config, source)
    it = iter(loader.make_train_loader(source, config.train.batch_size, mapper, seed=config.seed,
                                       worker_count=d.worker_count, bucket=d.get("train_bucket", 32)))
    return DevicePrefetcher(it, sharding.batch_sharding(mesh))

  def train_mapper(self, config, source):
    """The per-record transforms of `train_data` (`input_pipeline.mappers.Mapper`; default: the
    one `config.data` names)."""
    from input_pipeline import mappers
    return mappers.from_config(source, config.data, with_masks=source.meta.kind == "panoptic")

  def train_context(self, model, config, vocabulary, templates, cache_dir):
    """What the loss needs per training vocabulary, computed once (default: nothing)."""
    return ()

  def batch_spec(self, config, batch_size: int, height: int, width: int) -> dict:
    """{key: (shape, dtype)} of a training batch, for ahead-of-time compilation (default: the
    segmentation loader's image, label and mask-target classes)."""
    m = config.data.num_masks
    return {"image": ((batch_size, height, width, 3), "float32"),
            "label": ((batch_size, height, width), "int32"),
            "mask_classes": ((batch_size, m), "int32"), "mask_valid": ((batch_size, m), "bool")}

  def context_spec(self, model, num_classes: int, synonyms: int):
    """Shapes of `train_context` for a vocabulary of that size (a pytree of (shape, dtype))."""
    return ()

  def loss(self, model, batch, rng, context, config):
    """-> (scalar loss, {term: scalar}); pure and jittable."""
    raise NotImplementedError(f"method {self.name!r} is training-free")

  def complete_state_dict(self, state_dict: dict) -> dict:
    """An imported export's state dict (PyTorch names) with what the export may leave out rebuilt,
    e.g. a frozen teacher from the student (`convert from-torch`; default: unchanged)."""
    return state_dict

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    """A `SegmentationModel` over `vocabulary` from a split model (graphdef, *states)."""
    raise NotImplementedError

  def open_checkpoint(self, directory: Path, config: dict, *, templates=None, cache_dir=None):
    """A trained workdir (its newest checkpoint), restored once, as `vocabulary -> SegmentationModel`:
    each call builds that vocabulary's text classifier over the same weights (the web app, evaluate)."""
    from ovs_jax.restore import restore_workdir
    from ovs_jax.templates import get_templates
    dtype = (config.get("model") or {}).get("dtype")  # the caller's precision (`inference_dtype`)
    cfg, graphdef, state, step = restore_workdir(directory, params_only=True, dtype=dtype)
    train_vocab = self.training_vocabulary(cfg)  # seen classes only under the zero-shot protocol
    templates = templates or get_templates(cfg.clip.templates)
    return lambda vocabulary: self.segmentation_model(
        graphdef, (state["params"], state["frozen"]), cfg, vocabulary, templates=templates,
        cache_dir=cache_dir, train_vocabulary=train_vocab, name=f"{self.name}@{step}")

  def from_checkpoint(self, directory: Path, config: dict, vocabulary, *, templates=None,
                      cache_dir=None):
    """A trained workdir (its newest checkpoint) as a `SegmentationModel` over `vocabulary`."""
    return self.open_checkpoint(directory, config, templates=templates, cache_dir=cache_dir)(vocabulary)
