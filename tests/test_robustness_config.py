"""Config mistakes are refused before anything is built or written: one message naming the key,
the value and what is allowed, exit code 2 and no traceback from the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovs_jax import config_check
from ovs_jax.cli import ConfigError
from ovs_jax.config_utils import recipe_config
from ovs_jax.trainer import Run
from trainer_helpers import apply_overrides, tiny_config, train_command

REPO = Path(__file__).resolve().parents[1]

# key, bad value, what the message must say is allowed
BAD = [
    ("train.steps", -5, "an integer ≥ 1"),
    ("train.steps", 0, "an integer ≥ 1"),
    ("train.batch_size", 0, "an integer ≥ 1"),
    ("train.grad_accum", 0, "an integer ≥ 1"),
    ("train.log_every", -1, "an integer ≥ 0 (0: the last step only)"),
    ("train.ckpt_every", -1, "an integer ≥ 0 (0: after the last step (and on SIGTERM) only)"),
    ("train.keep_checkpoints", 0, "an integer ≥ 1"),
    ("optim.lr", 0.0, "a number > 0"),
    ("optim.lr", -1e-4, "a number > 0"),
    ("optim.lr", float("nan"), "a number > 0"),
    ("optim.lr", float("inf"), "a number > 0"),
    ("optim.weight_decay", -0.1, "a number ≥ 0"),
    ("optim.b2", 1.0, "a number in [0, 1)"),
    ("optim.eps", 0.0, "a number > 0"),
    ("optim.clip_norm", -1.0, "a number ≥ 0 (0: no clipping)"),
    ("optim.schedule", "linear", "one of 'poly', 'cosine', 'step'"),
    ("optim.decay_steps", (300, 200), "increasing step numbers ≥ 0"),
    ("optim.warmup_steps", -1, "an integer ≥ 0"),
    ("optim.poly_power", 0.0, "a number > 0"),
    ("data.crop_size", 0, "an integer ≥ 1"),
    ("data.scale_range", (1.25, 0.8), "(lo, hi) with 0 < lo ≤ hi"),
    ("data.cat_max_ratio", 0.0, "a number in (0, 1]"),
    ("data.num_masks", 0, "an integer ≥ 1"),
    ("data.worker_count", -1, "an integer ≥ 0"),
    ("data.train_max_images", -1, "an integer ≥ 0 (0: every image)"),
    ("data.train_mapper", "mask_former", "one of 'mask_former_semantic', 'lsj'"),
    ("data.min_size_train", (), "a non-empty list of integers ≥ 1"),
    ("data.root", "/no/such/dir", "an existing directory, or ''"),
    ("data.train", "ade20k", "one of 'ade20k_150'"),
    ("evals.val.every", -2, "an integer ≥ -1 (N: every N steps and after the last; 0: after the last only; -1: never)"),
    ("evals.val.batch_size", -1, "an integer ≥ 0 (0: one image per device)"),
    ("evals.val.split", "test", "one of 'train', 'val'"),
    ("evals.pictures.num", -1, "an integer ≥ 0"),
    ("loss.class_weight", -1.0, "a number ≥ 0"),
    ("loss.importance_sample_ratio", 1.5, "a number in [0, 1]"),
    ("model.num_queries", 0, "an integer ≥ 1"),
    ("model.dtype", "float64", "one of 'float32', 'bfloat16'"),
    ("model.ensemble_alpha", 1.5, "a number in [0, 1]"),
    ("mesh.data", 0, "an integer ≥ 1, or -1 (the remaining devices)"),
    ("mesh.fsdp", -2, "an integer ≥ 1, or -1"),
    ("clip.weights", "", "existing CLIP weights given with --config.clip.weights=PATH"),
    ("clip.weights", "/no/such/clip", "existing CLIP weights"),
    ("clip.templates", "coco", "one of 'vild', 'imagenet', 'maskclip', 'plain'"),
    ("method", "segformer", "one of "),
    ("seed", -1, "an integer ≥ 0"),
]


@pytest.mark.parametrize("key,value,allowed", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_config_value_matrix(key, value, allowed):
  found = config_check.problems(apply_overrides(tiny_config(), {key: value}))
  assert len(found) == 1, found
  assert found[0].startswith(f"config.{key}={value!r}: expected {allowed}"), found[0]


@pytest.mark.parametrize("overrides", [
    {"train.ckpt_every": 0}, {"train.log_every": 0}, {"evals.val.every": 0}, {"evals.val.every": -1},
    {"optim.clip_norm": 0.0}, {"data.worker_count": 0}, {"data.train_max_images": 0},
    {"mesh.data": -1, "mesh.fsdp": 1}, {"optim.decay_steps": ()}, {"clip.weights": "demo"},
])
def test_documented_special_values_are_accepted(overrides):
  assert config_check.problems(apply_overrides(tiny_config(), overrides)) == []


def test_rules_between_keys_and_every_shipped_recipe():
  cfg = apply_overrides(tiny_config(), {"mesh.data": -1, "mesh.fsdp": -1,
                                        "data.min_size_train_sampling": "range"})
  assert config_check.problems(cfg) == [
      "config.mesh={'data': -1, 'fsdp': -1, 'tensor': 1}: at most one axis may be -1",
      "config.data.min_size_train=(800,): expected (lo, hi) with min_size_train_sampling='range'"]
  for recipe in sorted((REPO / "configs").glob("maft_plus_*.py")):
    for variant in ("", "demo", "panoptic", "demo,panoptic"):
      cfg = recipe_config(recipe, variant)
      if not variant.startswith("demo"):
        cfg.clip.weights = "random"  # the real recipes need weights: a required value
      assert config_check.problems(cfg) == [], (recipe.name, variant)


def test_workdir_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(ConfigError, match=r"workdir .*/file: .*/file is a file, not a directory"):
    config_check.validate(tiny_config(), tmp_path / "file")
  with pytest.raises(ConfigError, match=r"workdir .*/file/run: cannot be created, .*/file is a file"):
    config_check.validate(tiny_config(), tmp_path / "file" / "run")
  (tmp_path / "ro").mkdir()
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("ro") else real(p, mode))
  with pytest.raises(ConfigError, match=r"workdir .*/ro: not writable \(permission denied\)"):
    config_check.validate(tiny_config(), tmp_path / "ro")
  with pytest.raises(ConfigError, match=r"workdir .*/ro/run: cannot be created, .*/ro is not writable"):
    config_check.validate(tiny_config(), tmp_path / "ro" / "run")
  # Several problems, one message; nothing created.
  with pytest.raises(ConfigError, match=r"(?s)optim.lr=0.0.*train.steps=-5.*workdir .*/new: cannot"):
    Run(apply_overrides(tiny_config(), {"train.steps": -5, "optim.lr": 0.0}), tmp_path / "ro" / "new")
  assert not (tmp_path / "ro" / "new").exists()


def test_cli_reports_a_config_mistake_in_one_line_with_exit_code_2(tmp_path):
  r = subprocess.run(train_command(tmp_path / "w", "--config.train.steps=-5", "--config.train.ckpt_every=-1"),
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert r.stderr.splitlines()[0] == "error: invalid config:"
  assert "config.train.steps=-5: expected an integer ≥ 1" in r.stderr
  assert "config.train.ckpt_every=-1: expected an integer ≥ 0" in r.stderr
  assert not (tmp_path / "w").exists()


def test_evaluate_and_predict_flags_are_checked_first(tmp_path):
  r = subprocess.run([sys.executable, "-m", "ovs_jax.evaluate", "--demo", "--short_side=0",
                      "--batch_size=3", "--max_images=-1", f"--workdir={tmp_path / 'e'}"],
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "error: invalid flags:\n  --short_side=0: expected an integer ≥ 1\n" in r.stderr
  assert "--batch_size=3: expected 0 (one image per device) or a multiple of the 8 devices" in r.stderr
  assert "--max_images=-1: expected an integer ≥ 0 (0: all)" in r.stderr
  r = subprocess.run([sys.executable, "-m", "ovs_jax.predict", "--demo", "--mode=slide", "--window=32",
                      "--stride=64", f"--out={tmp_path / 'p'}"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.strip() == "error: stride 64 must be in (0, window=32]", r.stderr[-2000:]


@pytest.mark.parametrize("batch,mesh,accum,shards", [(6, {"data": -1}, 1, 8), (8, {"data": 4, "fsdp": 2}, 2, 16),
                                                     (4, {"fsdp": 8}, 1, 8)])
def test_batch_not_divisible_by_the_devices_is_refused_before_the_workdir(tmp_path, batch, mesh, accum, shards):
  import jax
  assert jax.device_count() == 8  # conftest simulates 8 CPU devices
  config = apply_overrides(tiny_config(), {"train.batch_size": batch, "train.grad_accum": accum,
                                           **{f"mesh.{k}": v for k, v in mesh.items()}})
  with pytest.raises(ConfigError, match=rf"config.train.batch_size={batch} must be a multiple of data×fsdp "
                                        rf"devices × grad_accum = {shards}"):
    Run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()
