"""The generic trainer: config -> data -> model -> sharded jitted steps -> checkpoints and metrics.

Resumes automatically from the newest readable checkpoint in `workdir/checkpoints`, evaluates
mIoU periodically, writes TensorBoard events and console logs (progress bar, step time, images/s,
ETA), saves a checkpoint on SIGTERM at the next step boundary, and stops with a diagnostic on a
non-finite loss or gradient (the state is never updated with it, the last checkpoint stays good).
"""
from __future__ import annotations

import importlib
import json
import signal
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding
from tqdm import tqdm

from ovs_jax import distributed, optim, sharding
from ovs_jax.checkpointing import Checkpointer
from ovs_jax.metrics import check_miou_convention
from ovs_jax.models import clip_config
from ovs_jax.templates import get_templates
from ovs_jax.train_step import make_train_step

TRAINABLE_METHODS = {"maft_plus": "ovs_jax.methods.maft_plus"}


class NonFiniteError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient."""


def get_method(name: str):
  if name not in TRAINABLE_METHODS:
    raise ValueError(f"config.method={name!r}: expected one of {sorted(TRAINABLE_METHODS)}")
  return importlib.import_module(TRAINABLE_METHODS[name])


def _datasets(config):
  from input_pipeline.datasets import get_dataset
  from ovs_jax.inference.engine import FirstRecords
  d = config.data
  kw = dict(root=d.root or None, skip_bad=d.skip_bad)
  train = get_dataset(d.train, "train", **kw)
  if d.get("train_max_images"):  # a fixed small subset (overfitting checks, smoke runs)
    train = FirstRecords(train, d.train_max_images)
  return train, get_dataset(d.val, d.get("val_split", "val"), **kw)


def _train_iterator(config, source, mesh):
  from input_pipeline import loader, mappers
  from input_pipeline.global_batch import DevicePrefetcher
  d = config.data
  # Image shapes vary by batch with mask_former_semantic: jit compiles once per canvas.
  mapper = mappers.from_config(source, d, with_masks=source.meta.kind == "panoptic")
  it = iter(loader.make_train_loader(source, config.train.batch_size, mapper, seed=config.seed,
                                     worker_count=d.worker_count, bucket=d.get("train_bucket", 32)))
  return DevicePrefetcher(it, sharding.batch_sharding(mesh))


class Run:
  """Everything a training run holds: built once from the config, then `train()`."""

  def __init__(self, config, workdir):
    # Checkpoints, config.json and train_result.json go to `workdir` (local or gs://); logs,
    # TensorBoard events, pictures and caches need a local filesystem and go to `local_dir`.
    self.config, self.workdir = config, epath.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    remote = "://" in str(workdir)
    self.local_dir = (Path(tempfile.gettempdir()) / "ovs_jax" / self.workdir.name) if remote else Path(workdir)
    self.local_dir.mkdir(parents=True, exist_ok=True)
    if remote:
      tqdm.write(f"workdir {workdir} is remote: logs, TensorBoard and pictures go to {self.local_dir}")
    self.method = get_method(config.method)
    # checked now, not hours later at the first eval
    check_miou_convention(config.eval.miou_convention, "config.eval.miou_convention")
    self.mesh = sharding.make_mesh(config.mesh.to_dict())
    shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"] * config.train.grad_accum
    if config.train.batch_size % shards:
      raise ValueError(f"config.train.batch_size={config.train.batch_size} must be a multiple of "
                       f"data×fsdp devices × grad_accum = {shards} (mesh {dict(self.mesh.shape)})")
    from input_pipeline.vocab import load_vocabulary
    self.train_source, self.val_source = _datasets(config)
    self.train_vocab = load_vocabulary(self.train_source.vocabulary)
    self.val_vocab = load_vocabulary(self.val_source.vocabulary)
    self.templates = get_templates(config.clip.templates)
    self.cache_dir = self.local_dir / "cache"
    model = self.method.build_model(config)
    if jax.process_index() == 0:  # the resolved config + CLIP architecture: read by evaluate/predict/convert
      saved = dict(config.to_dict(), clip_architecture=clip_config.to_hf_dict(model.clip.config))
      (self.workdir / "config.json").write_text(json.dumps(saved, indent=2, default=str))
    self.context = self.method.text_context(model, self.train_vocab, self.templates,
                                            self.cache_dir)
    self.graphdef, params, frozen = nnx.split(model, optim.trainable_filter(config.frozen), ...)
    t = config.train
    pure = nnx.to_pure_dict(params)
    self.optimizer = optim.make_optimizer(config.optim, t.steps, pure)
    state = {"step": jnp.zeros((), jnp.int32), "params": pure,
             "frozen": nnx.to_pure_dict(frozen), "opt_state": self.optimizer.init(pure),
             "rng": jax.random.PRNGKey(config.seed)}
    rep = sharding.replicated(self.mesh)
    self.state_sharding = sharding.train_state_shardings(params, frozen, self.optimizer, state["opt_state"],
                                                         self.mesh)
    self.state = jax.device_put(state, self.state_sharding)
    for path, shape, nbytes in sharding.replicated_parameters(state, self.state_sharding):
      logging.warning("replicated on all %d devices: %s %s (%.1f MiB); add a logical-axis rule or "
                      "resize the mesh", self.mesh.size, path, shape, nbytes / 2**20)
    self.context = jax.device_put(self.context, rep)
    loss_config = config.loss

    def loss_fn(model, batch, rng, context):
      return self.method.loss_fn(model, batch, rng, *context, loss_config)
    step = make_train_step(self.graphdef, loss_fn, self.optimizer, t.grad_accum)
    self.train_step = sharding.MeshJit(self.mesh, jax.jit(
        step, in_shardings=(self.state_sharding, sharding.batch_sharding(self.mesh), rep),
        out_shardings=(self.state_sharding, rep), donate_argnums=(0,)))
    self.data = _train_iterator(config, self.train_source, self.mesh)
    self.ckpt = Checkpointer(self.workdir / "checkpoints", keep=t.keep_checkpoints)
    self._stop_requested = False

  # ---- checkpoints ----
  def abstract_state(self):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.state, self.state_sharding)

  def restore(self) -> int:
    found = self.ckpt.restore(self.abstract_state(), self.data)
    if found is None:
      return 0
    step, self.state, _ = found
    tqdm.write(f"resumed from {self.ckpt.directory}/{step}")
    return step

  def save(self, step, force=False):
    self.ckpt.save(step, self.state, self.data, {"config": self.config.to_dict(), "step": step}, force=force)

  # ---- evaluation and pictures ----
  def segmentation_model(self, vocabulary, name="maft_plus"):
    return self.method.segmentation_model(
        self.graphdef, (self.state["params"], self.state["frozen"]), vocabulary, self.templates,
        self.cache_dir, name, self.method.ensemble_from_config(self.config, vocabulary, self.train_vocab))

  def evaluate(self) -> dict:
    from ovs_jax.evaluate import summarize
    from ovs_jax.inference.batching import eval_settings
    from ovs_jax.inference.engine import evaluate_source
    d = self.config.data
    model = self.segmentation_model(self.val_vocab)
    mesh = self._eval_mesh()
    cfg, batch_size = eval_settings(d, mesh.size)
    counts, n = evaluate_source(model, self.val_source, cfg, batch_size=batch_size, mesh=mesh,
                                max_images=d.eval_max_images or None, desc=f"eval {d.val}")
    return summarize(counts, model.class_names, n, self.config.eval.miou_convention)

  def _eval_mesh(self):
    from ovs_jax.inference.engine import data_mesh
    return data_mesh()

  def write_predictions(self, step: int, num: int):
    from ovs_jax.inference.batching import eval_settings
    from ovs_jax.predict import Segmenter, write_prediction
    cfg, _ = eval_settings(self.config.data, 1)
    segment = Segmenter(self.segmentation_model(self.val_vocab), short_side=cfg.short_side,
                        max_size=cfg.max_size)
    out = self.local_dir / "predictions" / f"step_{step}"
    for i in range(min(num, len(self.val_source))):
      rec = self.val_source[i]
      write_prediction(out, Path(rec["file_name"]).stem, rec["image"], segment(rec["image"]),
                       segment.names, rec["label"])
    return out

  # ---- the loop ----
  def train(self) -> dict:
    config, t = self.config, self.config.train
    writer = _summary_writer(self.local_dir)
    start = self.restore()
    # One process: our handler. Several: JAX's preemption notice, agreed on a step by all of them.
    multi = jax.process_count() > 1
    old_handler = None if multi else signal.signal(signal.SIGTERM, self._on_sigterm)
    pbar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                disable=jax.process_index() != 0)
    history, pending, tic, last_logged = [], None, time.perf_counter(), start
    result = {"step": start}
    try:
      for step in range(start, t.steps):
        batch, _ = next(self.data)
        self.state, metrics = self.train_step(self.state, batch, self.context)
        if pending is not None:  # read the previous step: the device already runs this one
          self._check(*pending, history)
        pending = (step, metrics)
        pbar.update(1)
        done = step + 1
        if multi:
          self._stop_requested = distributed.preemption_sync_point(done)
        if done % t.log_every == 0 or done == t.steps:
          self._check(*pending, history)
          pending = None
          dt = (time.perf_counter() - tic) / (done - last_logged)
          tic, last_logged = time.perf_counter(), done
          m = history[-1]
          m.update(step_time=dt, images_per_s=t.batch_size / dt,
                   lr=float(optim.learning_rate(config.optim, t.steps, done)))
          _log(writer, done, m, "train")
          pbar.set_postfix(loss=f"{m['loss']:.3f}", s_per_step=f"{dt:.2f}", img_s=f"{m['images_per_s']:.1f}")
        if done % t.ckpt_every == 0 or done == t.steps or self._stop_requested:
          self.save(done, force=True)
        if self._stop_requested:
          logging.warning("SIGTERM: saved a checkpoint at step %d; exiting", done)
          result["preempted"] = True
          result["step"] = done  # the step of the checkpoint just saved
          break
        if t.eval_every and (done % t.eval_every == 0 or done == t.steps):  # 0: never
          ev = self.evaluate()
          _log(writer, done, {k: v for k, v in ev.items() if np.isscalar(v)}, "eval")
          tqdm.write(f"step {done}: {self.config.data.val} mIoU ({ev['miou_convention']}) "
                     f"{ev['mIoU']:.2f}  pAcc {ev['pACC']:.2f}")
          result["eval"] = ev
        result["step"] = done
      if pending is not None:
        self._check(*pending, history)
    finally:
      pbar.close()
      if not multi:
        signal.signal(signal.SIGTERM, old_handler)
      self.ckpt.close()
      writer.close()
    result["history"] = history
    if not result.get("preempted") and t.num_predictions:
      result["predictions"] = str(self.write_predictions(result["step"], t.num_predictions))
    (self.workdir / "train_result.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k != "history"}, indent=2, default=_jsonable))
    return result

  def _check(self, step, metrics, history):
    history.append(check_finite(step + 1, metrics, self.ckpt.directory))

  def _on_sigterm(self, signum, frame):
    self._stop_requested = True


def check_finite(step: int, metrics, checkpoint_dir="") -> dict:
  """Host copy of a step's metrics; NonFiniteError naming the bad terms if the step was skipped."""
  # Replicated values: this process's own copy (device_get of a multi-host array would gather).
  m = {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}
  if not m.pop("finite"):
    bad = [k for k, v in m.items() if not np.isfinite(v)] or ["grad_norm"]
    raise NonFiniteError(f"non-finite {', '.join(bad)} at step {step} ({m}); the update was "
                         f"skipped, the last checkpoint in {checkpoint_dir} is intact")
  return dict(m, step=step)


def _jsonable(x):
  return x.tolist() if isinstance(x, np.ndarray) else float(x) if np.isscalar(x) else str(x)


def _summary_writer(workdir):
  from tensorboardX import SummaryWriter

  class _Null:
    def add_scalar(self, *a, **k): pass
    def log_json(self, record): pass
    def close(self): pass

  class _Writer(SummaryWriter):
    def log_json(self, record):
      with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")
  return _Writer(str(workdir / "tensorboard")) if jax.process_index() == 0 else _Null()


def _log(writer, step, metrics, prefix):
  """TensorBoard, `metrics.jsonl` in the workdir, and one console line (process 0)."""
  writer.log_json({"kind": prefix, "step": step, **metrics})
  for k, v in metrics.items():
    if isinstance(v, (int, float)) and k != "step":
      writer.add_scalar(f"{prefix}/{k}", v, step)
  if jax.process_index() == 0:  # console line above the progress bar
    tqdm.write(f"{prefix} step {step}: " + "  ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))


def train_and_evaluate(config, workdir) -> dict:
  return Run(config, workdir).train()
