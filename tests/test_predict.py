"""The predict CLI runs end to end on user images and on the demo images, writing pictures."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clip_helpers import random_hf_clip, small_hf_config
from ovs_jax.methods.maskclip import clip_from_spec
from ovs_jax.inference.segmenter import Segmenter, list_images
from input_pipeline.vocab import parse_vocabulary


def _run(*args):
  return subprocess.run([sys.executable, "-m", "ovs_jax.predict", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("clip")
  random_hf_clip(small_hf_config()).save_pretrained(d)
  return d


def test_predict_cli_writes_overlay_and_labels(clip_dir, tmp_path):
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  rng = np.random.RandomState(0)
  for i, size in enumerate([(70, 90), (64, 64)]):
    Image.fromarray(rng.randint(0, 255, (*size, 3), np.uint8)).save(imgs / f"im{i}.png")
  r = _run(f"--clip={clip_dir}", f"--images={imgs}", "--classes=sofa, couch; lamp; cat",
           "--short_side=64", f"--out={tmp_path / 'out'}", "--templates=plain")
  assert r.returncode == 0, r.stderr
  for i, size in enumerate([(70, 90), (64, 64)]):
    label = np.asarray(Image.open(tmp_path / "out" / f"im{i}_label.png"))
    assert label.shape == size and label.max() < 3
    overlay = Image.open(tmp_path / "out" / f"im{i}_overlay.png")
    assert overlay.height >= size[0] and overlay.width > size[1]  # legend at the right


def test_segmenter_agrees_with_its_own_argmax_and_demo_cli(clip_dir, tmp_path):
  model = clip_from_spec(str(clip_dir))
  seg = Segmenter(model, parse_vocabulary("sofa; lamp"), ("{}",), short_side=32, cache_dir=None)
  label = seg(np.zeros((40, 50, 3), np.uint8))
  assert label.shape == (40, 50) and set(np.unique(label)) <= {0, 1}
  r = _run("--demo", "--clip=random:tiny", "--num_demo=2", f"--out={tmp_path / 'demo'}", "--short_side=64")
  assert r.returncode == 0, r.stderr
  assert len(list((tmp_path / "demo").glob("*_compare.png"))) == 2


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jpg: no such image file or folder"):
    list_images(str(tmp_path / "nope.jpg"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty: folder has no images"):
    list_images(str(tmp_path / "empty"))
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  r = _run("--clip=random:tiny", f"--images={tmp_path / 'bad.jpg'}", "--classes=cat",
           f"--out={tmp_path / 'o'}")
  assert r.returncode == 1 and "bad.jpg: cannot decode image" in r.stderr and "--skip_bad" in r.stderr
  assert "Traceback" not in r.stderr


def test_sliding_window_mode_and_checkpoints(clip_dir, tmp_path):
  import json
  img = tmp_path / "wide.png"
  Image.fromarray(np.random.RandomState(1).randint(0, 255, (40, 100, 3), np.uint8)).save(img)
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "config.json").write_text(json.dumps({"method": "maskclip", "clip": str(clip_dir)}))
  r = _run(f"--checkpoint={ckpt}", f"--images={img}", "--vocab=demo", "--mode=slide",
           "--window=32", "--stride=16", "--short_side=48", f"--out={tmp_path / 'o'}", "--templates=plain")
  assert r.returncode == 0, r.stderr
  label = np.asarray(Image.open(tmp_path / "o" / "wide_label.png"))
  from input_pipeline.vocab import load_vocabulary
  assert label.shape == (40, 100) and label.max() < len(load_vocabulary("demo"))
  (ckpt / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
  r = _run(f"--checkpoint={ckpt}", f"--images={img}", "--classes=cat", f"--out={tmp_path / 'o'}")
  assert r.returncode != 0 and "checkpoint of another architecture (dinov2)" in r.stderr
