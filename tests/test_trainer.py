"""The trainer: frozen groups, gradient accumulation, NaN guard, checkpoints, config errors, resume."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ovs_jax import optim
from ovs_jax.checkpointing import Checkpointer
from ovs_jax.cli import ConfigError
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.methods import maft_plus
from ovs_jax.trainer import NonFiniteError, Run, check_finite
from ovs_jax.train_step import make_train_step
from trainer_helpers import tiny_config, train_command

REPO = Path(__file__).resolve().parents[1]


def _leaves(tree):
  return {optim.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_frozen_groups_stay_bit_identical_and_trainable_ones_move(tmp_path):
  run = Run(tiny_config(), tmp_path)
  before = {k: _leaves(jax.device_get(run.state[k])) for k in ("params", "frozen")}
  frozen_names = set(before["frozen"])
  # The recipe's frozen groups, and nothing of the trainable student tower, are frozen.
  for prefix in ("clip/text_model/", "clip/text_projection/", "clip/logit_scale", "teacher/",
                 "clip/vision_model/post_layernorm/", "clip/visual_projection/"):
    assert any(n.startswith(prefix) for n in frozen_names), prefix
  assert not any(n.startswith("clip/vision_model/encoder/") for n in frozen_names)
  assert any(n.startswith("clip/vision_model/encoder/") for n in before["params"])
  for _ in range(2):
    batch, _ = next(run.data)
    run.state, metrics = run.train_step(run.state, batch, run.context)
  assert bool(metrics["finite"])
  after = {k: _leaves(jax.device_get(run.state[k])) for k in ("params", "frozen")}
  for name, value in before["frozen"].items():
    np.testing.assert_array_equal(after["frozen"][name], value, err_msg=name)
  moved = [n for n, v in before["params"].items() if not np.array_equal(after["params"][n], v)]
  assert len(moved) == len(before["params"]), set(before["params"]) - set(moved)


@pytest.mark.slow
def test_official_mapper_trains_on_several_canvases_with_grad_accum(tmp_path):
  """mask_former_semantic batches change shape with their images: the jitted step (and gradient
  accumulation) compiles once per canvas."""
  cfg = tiny_config(data__train_mapper="mask_former_semantic", data__min_size_train=(64,),
                    data__max_size_train=96, train__grad_accum=2, mesh__data=4)
  run = Run(cfg, tmp_path)
  shapes = []
  for short in (64, 96):  # demo images are 160x160: canvases 64x64, then 96x96
    cfg.data.min_size_train = (short,)
    run.data = run.method.train_data(cfg, run.train_source, run.mesh)
    batch, _ = next(run.data)
    shapes.append(batch["image"].shape[1:3])
    assert (np.asarray(batch["image_hw"]) == short).all()
    run.state, metrics = run.train_step(run.state, batch, run.context)
    assert bool(metrics["finite"])
  assert shapes == [(64, 64), (96, 96)]


class _Toy(nnx.Module):
  def __init__(self):
    self.dense = nnx.Linear(3, 2, rngs=nnx.Rngs(0))


def _toy_loss(model, batch, rng, context):
  err = model.dense(batch["x"]) - batch["y"]
  loss = jnp.mean(err ** 2)
  return loss, {"mse": loss}


def _toy_state(optimizer):
  graphdef, params = nnx.split(_Toy(), nnx.Param)
  pure = nnx.to_pure_dict(params)
  return graphdef, {"step": jnp.zeros((), jnp.int32), "params": pure, "frozen": {},
                    "opt_state": optimizer.init(pure), "rng": jax.random.PRNGKey(0)}


def test_gradient_accumulation_equals_one_large_batch():
  opt = optax.adamw(1e-2)
  rng = np.random.RandomState(0)
  batch = {"x": jnp.asarray(rng.randn(8, 3), jnp.float32), "y": jnp.asarray(rng.randn(8, 2), jnp.float32)}
  results = []
  for accum in (1, 4):
    graphdef, state = _toy_state(opt)
    step = jax.jit(make_train_step(graphdef, _toy_loss, opt, grad_accum=accum))
    for _ in range(3):
      state, metrics = step(state, batch, None)
    results.append((state["params"], float(metrics["loss"])))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), results[0][0], results[1][0])
  assert abs(results[0][1] - results[1][1]) < 1e-5


def test_non_finite_step_is_skipped_and_reported():
  opt = optax.adamw(1e-2)
  graphdef, state = _toy_state(opt)
  step = jax.jit(make_train_step(graphdef, _toy_loss, opt))
  bad = {"x": jnp.full((4, 3), jnp.nan), "y": jnp.zeros((4, 2))}
  new, metrics = step(state, bad, None)
  assert not bool(metrics["finite"])
  jax.tree.map(np.testing.assert_array_equal, new["params"], state["params"])
  with pytest.raises(NonFiniteError, match=r"non-finite .*mse.* at step 7 .* last checkpoint in ckpts is intact"):
    check_finite(7, metrics, "ckpts")


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  state = {"w": jnp.arange(6.0), "step": jnp.zeros((), jnp.int32)}
  ckpt = Checkpointer(tmp_path / "ckpt", use_async=False)
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x: x + step, state), meta={"step": step})
  ckpt.close()
  # Damage every data file of the newest step.
  for f in (tmp_path / "ckpt" / "2").rglob("*"):
    if f.is_file() and f.stat().st_size and "metadata" not in f.name:
      f.write_bytes(b"garbage")
  ckpt = Checkpointer(tmp_path / "ckpt", use_async=False)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  step, restored, meta = ckpt.restore(abstract)
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(restored["w"], np.arange(6.0) + 1)
  assert ckpt.steps() == [1] and list((tmp_path / "ckpt").glob("corrupt-2-*"))
  assert "checkpoint" in caplog.text and "unreadable" in caplog.text
  # A checkpoint that does not fit the model (another config) is an error, and nothing is moved.
  other = {"w": jax.ShapeDtypeStruct((7,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(CheckpointError, match=r"ckpt/1: cannot restore"):
    ckpt.restore(other)
  assert ckpt.steps() == [1]


def test_bad_config_keys_and_missing_inputs_are_named(tmp_path):
  r = subprocess.run(train_command(tmp_path / "w", "--config.train.stepz=3"), cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode != 0 and "stepz" in r.stderr
  with pytest.raises(ValueError, match=r"unknown variant\(s\) \['demoo'\]"):
    tiny_config.__globals__["get_config"]("demoo")
  cfg = tiny_config()
  cfg.clip.weights = ""
  with pytest.raises(ValueError, match=r"config.clip.weights is not set.*--config.clip.weights=PATH"):
    maft_plus.METHOD.build_model(cfg)
  cfg.clip.weights = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"nowhere: not found.*huggingface-cli download"):
    maft_plus.METHOD.build_model(cfg)
  cfg = tiny_config()
  cfg.data.update(train="ade20k_150", root=str(tmp_path / "datasets"))
  with pytest.raises(ConfigError, match=r"config.data.root='.*datasets': expected an existing directory"):
    Run(cfg, tmp_path / "w2")
  (tmp_path / "datasets").mkdir()
  with pytest.raises(Exception, match=r"ADEChallengeData2016"):
    Run(cfg, tmp_path / "w2")


def test_unknown_miou_convention_fails_before_training(tmp_path):
  with pytest.raises(ValueError, match="config.evals.val.miou_convention='published': expected one of "
                                       "maft_plus, detectron2"):
    Run(tiny_config(evals__val__miou_convention="published"), tmp_path)


def _losses(workdir):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


@pytest.mark.slow
def test_sigkill_then_restart_continues_with_identical_losses(tmp_path):
  steps = ["--config.train.steps=10", "--config.train.ckpt_every=3"]
  full = subprocess.run(train_command(tmp_path / "full", *steps), cwd=REPO, capture_output=True, text=True)
  assert full.returncode == 0, full.stderr[-3000:]
  # Kill -9 once step 3 is checkpointed (mid-run), then run the same command again.
  proc = subprocess.Popen(train_command(tmp_path / "killed", *steps), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (tmp_path / "killed" / "checkpoints" / "3").is_dir() and time.time() < deadline:
    time.sleep(0.2)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  again = subprocess.run(train_command(tmp_path / "killed", *steps), cwd=REPO, capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from" in again.stderr + again.stdout
  want, got = _losses(tmp_path / "full"), _losses(tmp_path / "killed")
  assert set(want) == set(range(1, 11))
  for s in range(4, 11):
    assert got[s] == want[s], (s, got[s], want[s])
