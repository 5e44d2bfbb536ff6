"""SIGTERM during training: a checkpoint at the next step boundary, exit code 75 (requeue), and a
restart that continues from it."""
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.scale_helpers import ROOT, config_flags, python_env, run_python


def _train_cmd(workdir, steps):
  return ["-m", "ovs_jax.train", "--config=configs/cdt_vitb.py:demo", f"--workdir={workdir}",
          *config_flags({"data": -1}, steps)]


@pytest.mark.slow
def test_sigterm_saves_at_step_boundary_and_restart_resumes(tmp_path):
  workdir = tmp_path / "run"
  log = open(tmp_path / "first.log", "w")
  proc = subprocess.Popen([sys.executable, *_train_cmd(workdir, 1000)], cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT, env=python_env())
  try:
    deadline = time.time() + 400
    while "train step 2:" not in (tmp_path / "first.log").read_text():  # compiled and stepping
      assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
      assert time.time() < deadline, "training did not start"
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, (tmp_path / "first.log").read_text()[-3000:]  # requeue me
  finally:
    if proc.poll() is None:
      proc.kill()
  result = json.loads((workdir / "train_result.json").read_text())
  assert result["preempted"] is True
  saved = result["step"]
  assert f"preempted at step {saved}: checkpoint saved" in (tmp_path / "first.log").read_text()
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [saved] and 2 <= saved < 1000  # only the preemption checkpoint (ckpt_every=1000)

  out = run_python(_train_cmd(workdir, saved + 1) + ["--allow_config_change=train.steps"], timeout=500)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  text = out.stdout + out.stderr
  assert f"train step {saved + 1}:" in text and f"train step {saved}:" not in text  # resumed, not redone
  result = json.loads((workdir / "train_result.json").read_text())
  assert result["step"] == saved + 1 and not result.get("preempted")
