"""Runs that stop and start again: preemption exits with the code schedulers requeue on, interval 0
means "at the end", a changed config is refused before the workdir is touched, config.json is
written only once the state is restored, and a damaged checkpoint of a real run is refused."""
import json
import os
import shutil
import signal
from pathlib import Path

import jax.numpy as jnp
import pytest

from ovs_jax import cli
from ovs_jax.cli import ConfigError
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.restore import check_resume, restore_workdir, write_run_config
from ovs_jax.trainer import Run, outcome
from trainer_helpers import file_digests, tiny_config

# orbax leaves the coroutines of a failed restore un-awaited
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _stand_in_step(sigterm_at, sig=signal.SIGTERM):
  """Returns the state unchanged (no compilation); sends this process `sig` during a step."""
  calls = []

  def step(state, batch, context):
    calls.append(batch)
    if len(calls) == sigterm_at:
      os.kill(os.getpid(), sig)
    one = jnp.float32(1.0)
    return state, {"loss": one, "grad_norm": one, "finite": jnp.bool_(True)}
  return step


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
  """A tiny 5-step run with ckpt_every=0 and log_every=0, preempted by SIGTERM during step 2."""
  workdir = tmp_path_factory.mktemp("run") / "w"
  config = tiny_config(train__steps=5, train__ckpt_every=0, train__log_every=0)
  run = Run(config, workdir)
  run.train_step = _stand_in_step(sigterm_at=2)
  return config, workdir, run.train()


def _copy(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / "w")
  return tmp_path / "w"


def test_preemption_checkpoints_and_exits_with_the_requeue_code(preempted):
  config, workdir, result = preempted
  assert result["preempted"] is True and result["step"] == 2
  # ckpt_every=0: no periodic checkpoint, only the one SIGTERM asked for.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert json.loads((workdir / "train_result.json").read_text())["preempted"] is True
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == config.optim.lr
  message, code = outcome(result)
  assert code == cli.PREEMPTED == 75 and message.startswith("preempted at step 2: checkpoint saved")
  assert outcome({"step": 5}) == ("done: step 5", 0)


def test_changed_config_is_refused_before_the_workdir_is_touched(preempted, tmp_path):
  _, workdir, _ = preempted
  workdir = _copy(workdir, tmp_path)
  before = file_digests(workdir)
  changed = tiny_config(train__steps=5, train__ckpt_every=0, train__log_every=0, optim__lr=1e-3,
                        seed=1, model__hidden_dim=64)
  with pytest.raises(ConfigError) as e:
    Run(changed, workdir)
  assert "  model.hidden_dim: 32 (saved) -> 64 (now)\n  optim.lr: 0.0003 (saved) -> 0.001 (now)\n" \
         "  seed: 0 (saved) -> 1 (now)\n" in str(e.value)
  assert str(e.value).endswith("--allow_config_change=model.hidden_dim,optim.lr,seed")
  assert file_digests(workdir) == before
  # How a run is logged, checkpointed, evaluated and laid out on devices may change freely.
  safe = tiny_config(train__steps=5, train__ckpt_every=7, train__log_every=3, evals__val__every=2,
                     mesh__data=2, mesh__fsdp=4, model__remat=True, data__worker_count=1)
  assert check_resume(workdir, safe) == []


def test_allowed_changes_are_listed_and_the_previous_config_kept(preempted, tmp_path):
  _, workdir, _ = preempted
  workdir = _copy(workdir, tmp_path)
  old = (workdir / "config.json").read_text()
  longer = tiny_config(train__steps=10, train__ckpt_every=0, train__log_every=0, optim__lr=1e-4)
  with pytest.raises(ConfigError, match=r"--allow_config_change=optim.lr$"):
    check_resume(workdir, longer, allow=["train.steps"])
  changes = check_resume(workdir, longer, allow=["train.steps", "optim.*"])
  assert changes == [("optim.lr", 3e-4, 1e-4), ("train.steps", 5, 10)]
  write_run_config(workdir, longer, json.loads(old)["architecture"], keep_previous_as="config.step_2.json")
  assert (workdir / "config.step_2.json").read_text() == old
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 10


def test_allowed_model_change_fails_restore_and_leaves_config_json(preempted, tmp_path):
  """A different model size, even when allowed, cannot restore: the workdir stays usable."""
  _, workdir, _ = preempted
  workdir = _copy(workdir, tmp_path)
  before = file_digests(workdir)
  run = Run(tiny_config(train__steps=5, train__ckpt_every=0, train__log_every=0, model__hidden_dim=64),
            workdir, allow_config_change=["model.hidden_dim"])
  try:
    with pytest.raises(CheckpointError, match=r"(?s)checkpoints/2: cannot restore .*another model or "
                                              r"config.*mv .*checkpoints .*checkpoints.bad-"):
      run.restore()
  finally:
    run.ckpt.close()
  after = file_digests(workdir)
  assert {k: after[k] for k in before} == before  # every file as it was, config.json included


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_of_a_real_run_is_refused(preempted, tmp_path, damage):
  _, workdir, _ = preempted
  workdir = _copy(workdir, tmp_path)
  data = max((p for p in (workdir / "checkpoints" / "2" / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  if damage == "flip":  # same size, 64 bytes inverted: restores without an error in orbax alone
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:len(raw) // 2 + 64])
  else:
    raw = raw[:len(raw) // 2]
  data.write_bytes(bytes(raw))
  before = file_digests(workdir)
  with pytest.raises(CheckpointError, match=r"(?s)checkpoints/2: cannot restore.*move them aside"):
    restore_workdir(workdir)
  assert file_digests(workdir) == before  # the only checkpoint is reported, not moved


def test_ctrl_c_saves_the_step_and_exits_130(tmp_path):
  """SIGINT used to leave only an orbax temp dir and a KeyboardInterrupt traceback (exit 130)."""
  run = Run(tiny_config(train__steps=5, train__ckpt_every=0, train__log_every=0), tmp_path / "w")
  run.train_step = _stand_in_step(sigterm_at=2, sig=signal.SIGINT)
  result = run.train()
  assert result["interrupted"] is True and result["step"] == 2 and "preempted" not in result
  assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == ["2"]
  message, code = outcome(result)
  assert code == cli.INTERRUPTED == 130 and message.startswith("interrupted (Ctrl-C) at step 2: checkpoint saved")
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_metrics_after_a_resume_hold_one_record_per_step(tmp_path):
  """A run killed after step 4 but whose newest checkpoint is step 2 runs steps 3-4 again:
  metrics.jsonl must not hold them twice (plots would jump back)."""
  config = tiny_config(train__steps=4, train__ckpt_every=2, train__log_every=1)
  workdir = tmp_path / "w"
  run = Run(config, workdir)
  run.train_step = _stand_in_step(sigterm_at=0)
  run.train()
  shutil.rmtree(workdir / "checkpoints" / "4")  # killed before step 4's checkpoint
  first = (workdir / "metrics.jsonl").read_text().splitlines()
  run = Run(config, workdir)
  run.train_step = _stand_in_step(sigterm_at=0)
  run.train()
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["kind"] == "train"]
  assert steps == [1, 2, 3, 4]
  discarded = (workdir / "metrics.discarded.jsonl").read_text().splitlines()
  assert discarded == [line for line in first if json.loads(line)["step"] > 2]


def test_a_full_disk_mid_save_is_one_error_and_the_run_resumes(tmp_path, monkeypatch):
  """A write that fails inside a save (ENOSPC after the arrays are written) used to end in orbax's
  OSError traceback; the newest complete checkpoint must stay usable."""
  import errno
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
  real, calls = jh.JsonCheckpointHandler._save_fn, []

  async def full_disk_on_second_save(self, x, directory):
    calls.append(directory)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return await real(self, x, directory)
  monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full_disk_on_second_save)
  config = tiny_config(train__steps=4, train__ckpt_every=2, train__log_every=0)
  run = Run(config, tmp_path / "w")
  run.train_step = _stand_in_step(sigterm_at=0)
  with pytest.raises(CheckpointError, match=r"cannot write a checkpoint in .*checkpoints \(No space left on "
                                            r"device\); the newest complete one is step 2"):
    run.train()
  monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", real)
  run = Run(config, tmp_path / "w")
  run.train_step = _stand_in_step(sigterm_at=0)
  assert run.train()["step"] == 4
  assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == ["2", "4"]
