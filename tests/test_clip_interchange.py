"""Import/export of CLIP weights: HF directories, pytorch_model.bin, OpenCLIP, our format, errors."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from clip_helpers import (nhwc, openclip_config_of, random_hf_clip, random_inputs, small_hf_config,
                          to_openclip_names)
from ovs_jax.interchange.clip_weights import load_clip, save_hf_clip, save_orbax_clip
from ovs_jax.interchange.errors import CheckpointError


def _logits(model, pixels, ids):
  return np.asarray(model(jnp.asarray(nhwc(pixels)), jnp.asarray(ids)))


def _hf_logits(hf, pixels, ids):
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits_per_image.numpy()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  hf = random_hf_clip(small_hf_config())
  d = tmp_path_factory.mktemp("hf")
  hf.save_pretrained(d)
  return hf, d


def test_hf_to_ours_to_hf_round_trip(hf_dir, tmp_path):
  hf, d = hf_dir
  pixels, ids = random_inputs()
  ours = load_clip(d)
  np.testing.assert_allclose(_logits(ours, pixels, ids), _hf_logits(hf, pixels, ids), atol=1e-5)
  save_hf_clip(ours, tmp_path / "export")
  back = transformers.CLIPModel.from_pretrained(tmp_path / "export").eval()
  for (k, v), (k2, v2) in zip(sorted(hf.state_dict().items()), sorted(back.state_dict().items())):
    assert k == k2 and torch.equal(v, v2), k
  np.testing.assert_array_equal(_hf_logits(back, pixels, ids), _hf_logits(hf, pixels, ids))


def test_pytorch_model_bin_and_scan_layout(hf_dir, tmp_path):
  hf, d = hf_dir
  (tmp_path / "config.json").write_text((d / "config.json").read_text())
  torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  pixels, ids = random_inputs()
  scanned = load_clip(tmp_path, scan=True)
  np.testing.assert_allclose(_logits(scanned, pixels, ids), _hf_logits(hf, pixels, ids), atol=1e-5)
  # Export from a scanned model writes ordinary per-layer keys.
  save_hf_clip(scanned, tmp_path / "export")
  back = transformers.CLIPModel.from_pretrained(tmp_path / "export").eval()
  np.testing.assert_array_equal(_hf_logits(back, pixels, ids), _hf_logits(hf, pixels, ids))


def test_openclip_layout_gives_the_same_model(tmp_path):
  hf = random_hf_clip(small_hf_config(width=128, heads=2))
  sd = to_openclip_names(hf.state_dict())
  save_file(sd, str(tmp_path / "open_clip.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "open_clip.pt")
  # Heads are not in a state dict: the OpenCLIP config next to the weights gives them.
  (tmp_path / "open_clip_config.json").write_text(json.dumps(openclip_config_of(hf.config)))
  pixels, ids = random_inputs()
  want = _hf_logits(hf, pixels, ids)
  for f in ("open_clip.safetensors", "open_clip.pt"):
    ours = load_clip(tmp_path / f)
    assert ours.config.vision.num_hidden_layers == 2 and ours.config.vision.patch_size == 16
    np.testing.assert_allclose(_logits(ours, pixels, ids), want, atol=1e-5)


def test_our_orbax_format_round_trip(hf_dir, tmp_path):
  hf, d = hf_dir
  ours = load_clip(d, scan=True)
  save_orbax_clip(ours, tmp_path / "ours")
  back = load_clip(tmp_path / "ours")
  pixels, ids = random_inputs()
  np.testing.assert_array_equal(_logits(back, pixels, ids), _logits(load_clip(d), pixels, ids))


def test_convert_cli_both_directions(hf_dir, tmp_path):
  hf, d = hf_dir
  run = lambda *a: subprocess.run([sys.executable, "-m", "ovs_jax.convert", "clip", *a],
                                  capture_output=True, text=True)
  r = run(f"--src={d}", "--to=ours", f"--out={tmp_path / 'ours'}")
  assert r.returncode == 0, r.stderr
  r = run(f"--src={tmp_path / 'ours'}", f"--out={tmp_path / 'hf'}")
  assert r.returncode == 0, r.stderr
  back = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
  pixels, ids = random_inputs()
  np.testing.assert_array_equal(_hf_logits(back, pixels, ids), _hf_logits(hf, pixels, ids))


# ---- every bad checkpoint gives one clear error naming the key or file ----

def _broken_dir(hf_dir, tmp_path, edit=None, config_edit=None):
  hf, d = hf_dir
  tmp_path.mkdir(parents=True, exist_ok=True)
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  if edit:
    edit(sd)
  cfg = json.loads((d / "config.json").read_text())
  if config_edit:
    config_edit(cfg)
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  save_file(sd, str(tmp_path / "model.safetensors"))
  return tmp_path


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("vision_model.encoder.layers.1.mlp.fc2.weight"),
     r"missing key 'vision_model.encoder.layers.1.mlp.fc2.weight' \(expected shape \(64, 128\)\)"),
    (lambda sd: sd.update({"vision_model.extra.weight": np.zeros(3, np.float32)}),
     r"unexpected key 'vision_model.extra.weight'"),
    (lambda sd: sd.update({"text_projection.weight": np.zeros((32, 48), np.float32)}),
     r"key 'text_projection.weight' has shape \(32, 48\), expected \(32, 64\)"),
])
def test_mismatched_checkpoint_errors(hf_dir, tmp_path, edit, message):
  d = _broken_dir(hf_dir, tmp_path, edit)
  with pytest.raises(CheckpointError, match=message) as e:
    load_clip(d)
  assert str(d) in str(e.value)


def test_unknown_architecture_and_unreadable_files(hf_dir, tmp_path):
  d = _broken_dir(hf_dir, tmp_path / "a", config_edit=lambda c: c.update(model_type="siglip"))
  with pytest.raises(CheckpointError, match=r"config.json: unsupported architecture.*'clip'"):
    load_clip(d)
  d = _broken_dir(hf_dir, tmp_path / "b", config_edit=lambda c: c["vision_config"].update(hidden_act="relu"))
  with pytest.raises(CheckpointError, match=r"hidden_act='relu'"):
    load_clip(d)
  save_file({"encoder.weight": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
  with pytest.raises(CheckpointError, match=r"other.safetensors: unknown architecture"):
    load_clip(tmp_path / "other.safetensors")
  # A truncated weights file.
  d = _broken_dir(hf_dir, tmp_path / "c")
  data = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable checkpoint"):
    load_clip(d)
  with pytest.raises(CheckpointError, match=r"nowhere: CLIP weights not found"):
    load_clip(tmp_path / "nowhere")
  (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint at all")
  with pytest.raises(CheckpointError, match=r"garbage.bin: unreadable checkpoint"):
    load_clip(tmp_path / "garbage.bin")


class _Payload:
  def __reduce__(self):
    return (print, ("this code must never run",))


def test_pickled_code_is_refused_not_executed(tmp_path, capsys):
  torch.save({"visual.conv1.weight": _Payload()}, tmp_path / "evil.pt")
  with pytest.raises(CheckpointError, match=r"evil.pt: unreadable checkpoint \(UnpicklingError"):
    load_clip(tmp_path / "evil.pt")
  assert "must never run" not in capsys.readouterr().out
