"""The generic trainer loop: config -> method (data, model, loss) -> sharded jitted steps ->
checkpoints, evaluators and metrics. State and step are built by `ovs_jax.train_step`.

Checks the config (`config_check`) and, for a workdir that holds a run, compares it with the saved
one (`restore.check_resume`) before building or writing anything. Resumes automatically from the
newest checkpoint in `workdir/checkpoints` that restores and passes its checksums, runs the
config's evaluators (`config.evals`), writes TensorBoard events and console logs (progress bar, step time, images/s,
ETA), saves a checkpoint on SIGTERM at the next step boundary, and stops with a diagnostic on a
non-finite loss or gradient (the state is never updated with it, the last checkpoint stays good).
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from ovs_jax import cli, distributed, evaluators, optim, sharding
from ovs_jax.checkpointing import Checkpointer
from ovs_jax.config_check import validate
from ovs_jax.methods.registry import get_method
from ovs_jax.restore import check_resume, write_run_config
from ovs_jax.templates import get_templates
from ovs_jax.train_step import init_train_state, jit_train_step


class NonFiniteError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient."""


class Run:
  """Everything a training run holds: built once from the config, then `train()`. The method
  (`config.method`, `ovs_jax/methods/registry.py`) supplies model, data, loss and inference."""

  def __init__(self, config, workdir, allow_config_change=()):
    # Nothing is built or written before the config is checked and, when `workdir` holds a run,
    # compared with the one saved there (changes outside `allow_config_change` are refused).
    validate(config, workdir)
    self.config, self.workdir = config, epath.Path(workdir)
    self.config_changes = check_resume(self.workdir, config, allow_config_change)
    self.method = get_method(config.method)
    if not self.method.trainable:
      raise cli.ConfigError(f"config.method={config.method!r} is training-free; evaluate it with "
                            "python -m ovs_jax.evaluate")
    try:
      self.evaluators = evaluators.from_config(config)  # checked now, not hours later
      self.mesh = sharding.make_mesh(config.mesh.to_dict())
    except ValueError as e:  # unknown evaluator types/keys, a mesh the devices do not fit
      raise cli.ConfigError(str(e)) from None
    shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"] * config.train.grad_accum
    if config.train.batch_size % shards:
      raise cli.ConfigError(f"config.train.batch_size={config.train.batch_size} must be a multiple of "
                            f"data×fsdp devices × grad_accum = {shards} (mesh {dict(self.mesh.shape)})")
    # Checkpoints, config.json and train_result.json go to `workdir` (local or gs://); logs,
    # TensorBoard events, pictures and caches need a local filesystem and go to `local_dir`.
    self.workdir.mkdir(parents=True, exist_ok=True)
    remote = "://" in str(workdir)
    self.local_dir = (Path(tempfile.gettempdir()) / "ovs_jax" / self.workdir.name) if remote else Path(workdir)
    self.local_dir.mkdir(parents=True, exist_ok=True)
    if remote:
      tqdm.write(f"workdir {workdir} is remote: logs, TensorBoard and pictures go to {self.local_dir}")
    try:
      self.train_source = self.method.train_source(config)
    except ValueError as e:  # a zero-shot protocol the training set has no split for
      raise cli.ConfigError(str(e)) from None
    self.train_vocab = self.method.training_vocabulary(config)
    self.templates = get_templates(config.clip.templates)
    self.cache_dir = self.local_dir / "cache"
    model = self.method.build_model(config)
    self.architecture = self.method.architecture(model)  # config.json, written once restored
    self.context = jax.device_put(
        self.method.train_context(model, config, self.train_vocab, self.templates, self.cache_dir),
        sharding.replicated(self.mesh))
    ts = init_train_state(self.method, config, self.mesh, model=model)
    self.graphdef, self.state, self.state_sharding = ts.graphdef, ts.state, ts.shardings
    for path, shape, nbytes in sharding.replicated_parameters(self.state, self.state_sharding):
      logging.warning("replicated on all %d devices: %s %s (%.1f MiB); add a logical-axis rule or "
                      "resize the mesh", self.mesh.size, path, shape, nbytes / 2**20)
    self.train_step = jit_train_step(self.method, config, ts, self.mesh)
    self.data = self.method.train_data(config, self.train_source, self.mesh)
    self.ckpt = Checkpointer(self.workdir / "checkpoints", keep=config.train.keep_checkpoints)
    self._stop_requested = self._config_written = False
    self._stop_signal = "SIGTERM"  # multi-host: JAX's preemption notice

  # ---- checkpoints ----
  def abstract_state(self):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.state, self.state_sharding)

  def restore(self) -> int:
    """The newest good checkpoint's step (0: none), then config.json for restore, evaluate,
    predict and convert: written only now, so a start that fails leaves the workdir as it was."""
    found = self.ckpt.restore(self.abstract_state(), self.data)
    step = 0 if found is None else found[0]
    if found is not None:
      self.state = found[1]
      tqdm.write(f"resumed from {self.ckpt.directory}/{step}")
    for key, old, new in self.config_changes:
      tqdm.write(f"config change allowed on resume: {key}: {old!r} -> {new!r}")
    self._write_config(step)
    return step

  def _write_config(self, step):
    if jax.process_index() == 0:
      write_run_config(self.workdir, self.config, self.architecture,
                       keep_previous_as=f"config.step_{step}.json" if self.config_changes else None)
    self._config_written = True

  def save(self, step, force=False):
    if not self._config_written:  # saved without a restore first (library use): still readable
      self._write_config(step)
    self.ckpt.save(step, self.state, self.data, {"config": self.config.to_dict(), "step": step}, force=force)

  # ---- evaluation ----
  def segmentation_model(self, vocabulary, name=None):
    """The current model over `vocabulary`, as the method does inference."""
    return self.method.segmentation_model(
        self.graphdef, (self.state["params"], self.state["frozen"]), self.config, vocabulary,
        templates=self.templates, cache_dir=self.cache_dir, train_vocabulary=self.train_vocab,
        name=name)

  def run_evaluators(self, step: int, total: int, writer=None) -> dict:
    """Every evaluator due at `step` -> {name: results}; scalars logged under `eval/<name>`."""
    results = {}
    for name, ev in self.evaluators.items():
      if not evaluators.due(ev.every, step, total):
        continue
      results[name] = r = ev.run(self.segmentation_model, step, self.local_dir)
      if writer is not None:
        _log(writer, step, {k: v for k, v in r.items() if isinstance(v, (int, float))}, f"eval/{name}")
      if "mIoU" in r:
        tqdm.write(f"step {step}: {name} ({ev.dataset}) mIoU ({r['miou_convention']}) "
                   f"{r['mIoU']:.2f}  pAcc {r['pACC']:.2f}  ({r['num_images']} images"
                   + (f", {r['num_skipped']} unreadable skipped)" if r.get("num_skipped") else ")"))
        for label, z in (("", r), ("MaskCLIP baseline ", r.get("baseline", {}))):
          if "hIoU" in z:
            pct = lambda k: "–" if z[k] is None else f"{z[k]:.2f}"
            setting = f"{z['setting']}; " if z.get("setting") else ""  # zero-shot setting
            tqdm.write(f"step {step}: {name} {label}mIoU seen {pct('mIoU_seen')}  unseen "
                       f"{pct('mIoU_unseen')}  hIoU {pct('hIoU')}  ({setting}unseen: {', '.join(z['unseen_classes'])})")
    return results

  # ---- the loop ----
  def train(self) -> dict:
    config, t = self.config, self.config.train
    writer = _summary_writer(self.local_dir)
    start = self.restore()
    # One process: our handler. Several: JAX's preemption notice, agreed on a step by all of them.
    multi = jax.process_count() > 1
    old_handlers = {} if multi else {sig: signal.signal(sig, self._on_stop_signal)
                                     for sig in (signal.SIGTERM, signal.SIGINT)}
    self._keep_metrics_up_to(start)
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
        if evaluators.due(t.log_every, done, t.steps):
          self._check(*pending, history)
          pending = None
          dt = (time.perf_counter() - tic) / (done - last_logged)
          tic, last_logged = time.perf_counter(), done
          m = history[-1]
          m.update(step_time=dt, images_per_s=t.batch_size / dt,
                   lr=float(optim.learning_rate(config.optim, t.steps, done)))
          _log(writer, done, m, "train")
          pbar.set_postfix(loss=f"{m['loss']:.3f}", s_per_step=f"{dt:.2f}", img_s=f"{m['images_per_s']:.1f}")
        if evaluators.due(t.ckpt_every, done, t.steps) or self._stop_requested:
          self.save(done, force=True)
        if self._stop_requested:
          logging.warning("%s: saved a checkpoint at step %d; exiting", self._stop_signal, done)
          result["preempted" if self._stop_signal == "SIGTERM" else "interrupted"] = True
          result["step"] = done  # the step of the checkpoint just saved
          break
        evals = self.run_evaluators(done, t.steps, writer)
        if evals:
          result.setdefault("evals", {}).update(evals)
          result["eval"] = next((r for r in evals.values() if "mIoU" in r), result.get("eval"))
        result["step"] = done
      if pending is not None:
        self._check(*pending, history)
    finally:
      pbar.close()
      for sig, handler in old_handlers.items():
        signal.signal(sig, handler)
      self.ckpt.close()
      writer.close()
    result["history"] = history
    (self.workdir / "train_result.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k != "history"}, indent=2, default=_jsonable))
    return result

  def _check(self, step, metrics, history):
    history.append(check_finite(step + 1, metrics, self.ckpt.directory))

  def _on_stop_signal(self, signum, frame):
    """SIGTERM (preemption) and SIGINT (Ctrl-C): checkpoint at the next step boundary and stop. A
    second Ctrl-C stops at once (KeyboardInterrupt; the newest complete checkpoint stays good)."""
    if signum == signal.SIGINT:
      if self._stop_requested:
        raise KeyboardInterrupt
      tqdm.write("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)")
    self._stop_requested, self._stop_signal = True, signal.Signals(signum).name

  def _keep_metrics_up_to(self, step: int):
    """On resume, `metrics.jsonl` keeps only records up to the restored `step` (the steps after it
    run again): later ones move to `metrics.discarded.jsonl`, so readers see one value per step."""
    path = self.local_dir / "metrics.jsonl"
    if jax.process_index() != 0 or not path.exists():
      return
    keep, drop = [], []
    for line in path.read_text().splitlines(keepends=True):
      try:
        later = json.loads(line).get("step", 0) > step
      except (ValueError, AttributeError):
        later = False  # not ours to judge: keep it
      (drop if later else keep).append(line)
    if drop:
      with open(path.with_name("metrics.discarded.jsonl"), "a") as f:
        f.writelines(drop)
      tmp = path.with_suffix(".jsonl.tmp")
      tmp.write_text("".join(keep))
      os.replace(tmp, path)
    if step:
      tqdm.write(f"resuming at step {step}" + (f": {len(drop)} metrics records after it moved to "
                                              f"{path.with_name('metrics.discarded.jsonl')}" if drop else ""))


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


def outcome(result: dict) -> tuple[str, int]:
  """How a run ends the program: (message, exit code). Preemption is `cli.PREEMPTED` (75), the
  code schedulers requeue on (ovs_jax/cli.py, docs/robustness.md), never 0 ("done")."""
  if result.get("preempted"):
    return (f"preempted at step {result['step']}: checkpoint saved; re-run the same command to resume "
            f"(exit code {cli.PREEMPTED})", cli.PREEMPTED)
  if result.get("interrupted"):
    return (f"interrupted (Ctrl-C) at step {result['step']}: checkpoint saved; re-run the same command to "
            f"resume (exit code {cli.INTERRUPTED})", cli.INTERRUPTED)
  ev = result.get("eval", {})
  return (f"done: step {result['step']}" + (f", mIoU ({ev['miou_convention']}) {ev['mIoU']:.2f}" if ev else ""),
          cli.OK)


def train_and_evaluate(config, workdir, allow_config_change=()) -> dict:
  return Run(config, workdir, allow_config_change).train()
