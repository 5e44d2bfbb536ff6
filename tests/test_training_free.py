"""The training-free family as methods: registered, reached by --method, options checked, scoring
rules (background threshold, PAMR on), scanned towers equal to unrolled ones, ResNets refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clip_helpers import ours_from_hf, random_hf_clip, small_hf_config
from ovs_jax.cli import ConfigError
from ovs_jax.methods.registry import get_method
from ovs_jax.methods.training_free import (BACKGROUND_SCORE, class_scores, clip_method,
                                           parse_options)
from ovs_jax.models.clip_last_block import last_block_input

FAMILY = ("sclip", "clearclip", "naclip", "proxyclip")
VOCAB = [["cat"], ["dog", "puppy"], ["sky"]]


@pytest.fixture(scope="module")
def clip():
  return ours_from_hf(random_hf_clip(small_hf_config(image_size=64, layers=2)))


@pytest.mark.parametrize("name", FAMILY)
def test_registered_training_free(name):
  method = get_method(name)
  assert method.name == name and not method.trainable


@pytest.mark.parametrize("name", FAMILY + ("maskclip",))
def test_method_model_scores_every_pixel(clip, name):
  model = clip_method(name)(clip, VOCAB, templates=("a photo of a {}.",), cache_dir=None, name=name)
  pixels = jnp.asarray(np.random.RandomState(0).randn(1, 64, 48, 3).astype(np.float32))
  scores = model.apply(model.params, pixels, jnp.ones((1, 64, 48), bool))
  assert scores.shape == (1, 64, 48, 3) and bool(jnp.isfinite(scores).all())
  assert model.class_names == ["cat", "dog", "sky"]


def test_methods_give_different_maps(clip):
  pixels = jnp.asarray(np.random.RandomState(1).randn(1, 64, 64, 3).astype(np.float32))
  maps = {}
  for name in FAMILY:
    model = clip_method(name)(clip, VOCAB, templates=("{}",), cache_dir=None, name=name)
    maps[name] = np.asarray(model.apply(model.params, pixels, None))
  for a in FAMILY:
    for b in FAMILY:
      if a < b:
        assert not np.allclose(maps[a], maps[b], atol=1e-3), (a, b)


def test_background_threshold_follows_the_official_rule():
  """softmax(scale · cos) over classes; label 0 where the top probability < prob_thd
  (clip_segmentor.py:148-170), else the argmax."""
  cos = jnp.asarray(np.random.RandomState(2).uniform(-0.2, 0.3, (2, 5, 4, 3)).astype(np.float32))
  p = jax.nn.softmax(40 * cos, -1)
  want = np.where(np.asarray(p.max(-1)) < 0.6, 0, np.asarray(p.argmax(-1)))
  got = class_scores(cos, logit_scale=40, prob_thd=0.6)
  assert (np.asarray(got.argmax(-1)) == want).all()
  assert 0 < (want == 0).mean() < 1 and (got[..., 0] == BACKGROUND_SCORE).any()
  plain = class_scores(cos, logit_scale=40)
  np.testing.assert_allclose(np.asarray(plain), 40 * np.asarray(cos), rtol=1e-6)


def test_options_are_checked():
  with pytest.raises(ValueError, match="unknown option.*nope"):
    clip_method("sclip", {"nope": 1})
  with pytest.raises(ValueError, match="is trained"):
    clip_method("gkc")
  with pytest.raises(ValueError, match="not registered"):
    clip_method("sclipp")
  assert parse_options(["prob_thd=0.1", "pamr_dilations=[1,2]", "vfm=/a/b"]) == {
      "prob_thd": 0.1, "pamr_dilations": [1, 2], "vfm": "/a/b"}
  with pytest.raises(ValueError, match="key=value"):
    parse_options(["prob_thd"])


def test_option_overrides_reach_the_model(clip):
  """logit_scale and PAMR steps from the options change the scores as their rules say."""
  pixels = jnp.asarray(np.random.RandomState(3).randn(1, 64, 64, 3).astype(np.float32))
  base = clip_method("naclip", {"pamr_steps": 0})(clip, VOCAB, templates=("{}",), cache_dir=None)
  scaled = clip_method("naclip", {"pamr_steps": 0, "logit_scale": 80})(clip, VOCAB, templates=("{}",),
                                                                       cache_dir=None)
  a, b = (np.asarray(m.apply(m.params, pixels, None)) for m in (base, scaled))
  np.testing.assert_allclose(b, 2 * a, rtol=1e-5, atol=1e-6)
  refined = clip_method("naclip")(clip, VOCAB, templates=("{}",), cache_dir=None)  # PAMR 10 steps
  assert not np.allclose(np.asarray(refined.apply(refined.params, pixels, None)), a, atol=1e-4)


def test_scanned_tower_equals_unrolled():
  hf = random_hf_clip(small_hf_config(image_size=64, layers=3))
  pixels = jnp.asarray(np.random.RandomState(4).randn(1, 64, 64, 3).astype(np.float32))
  outs = []
  for scan in (False, True):
    model = clip_method("sclip")(ours_from_hf(hf, scan=scan), VOCAB, templates=("{}",), cache_dir=None)
    outs.append(np.asarray(model.apply(model.params, pixels, None)))
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)


def test_resnet_clip_is_refused():
  from ovs_jax.models import clip_family
  rn = clip_family.build_clip(clip_family.get_arch("resnet_tiny"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ViT"):
    last_block_input(rn, jnp.zeros((1, 64, 64, 3)))


def test_evaluate_refuses_a_bad_method_before_loading(tmp_path):
  from ovs_jax.evaluation import model_factories
  with pytest.raises(ValueError, match="unknown option"):
    model_factories(["/does/not/exist"], [], [], templates=("{}",), method="clearclip",
                    method_options={"beta": 1})
  assert issubclass(ConfigError, ValueError)


def test_checkpoint_directory_names_the_method(clip, tmp_path):
  """A directory with config.json {"method": "naclip", "clip": ..., options} opens as --checkpoint."""
  import json
  from ovs_jax.inference.segmentation_model import open_checkpoint
  from ovs_jax.interchange.clip_weights import save_hf_clip
  save_hf_clip(clip, tmp_path / "clip")
  (tmp_path / "config.json").write_text(json.dumps(
      {"method": "naclip", "clip": "clip", "gaussian_std": 3.0, "pamr_steps": 0}))
  model = open_checkpoint(tmp_path, templates=("{}",))(VOCAB)
  direct = clip_method("naclip", {"gaussian_std": 3.0, "pamr_steps": 0})(clip, VOCAB, templates=("{}",),
                                                                         cache_dir=None)
  pixels = jnp.asarray(np.random.RandomState(5).randn(1, 32, 32, 3).astype(np.float32))
  np.testing.assert_allclose(np.asarray(model.apply(model.params, pixels, None)),
                             np.asarray(direct.apply(direct.params, pixels, None)), atol=1e-5)
  (tmp_path / "config.json").write_text(json.dumps({"method": "naclip", "clip": "clip", "std": 3}))
  with pytest.raises(ValueError, match="unknown option"):
    open_checkpoint(tmp_path, templates=("{}",))


def test_evaluate_and_predict_cli_take_a_method(tmp_path):
  import subprocess
  import sys
  from clip_helpers import random_hf_clip, small_hf_config
  clip_dir = tmp_path / "clip"
  random_hf_clip(small_hf_config()).save_pretrained(clip_dir)
  run = lambda mod, *a: subprocess.run([sys.executable, "-m", f"ovs_jax.{mod}", *a], capture_output=True,
                                       text=True)
  r = run("evaluate", "--demo", "--method=clearclip", f"--clip={clip_dir}", "--max_images=2",
          "--short_side=64", "--templates=plain", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 0, r.stderr
  assert "| clearclip (clip) |" in r.stdout
  r = run("predict", "--demo", "--method=naclip", "--method_options=pamr_steps=2", f"--clip={clip_dir}",
          "--num_demo=1", "--short_side=64", "--templates=plain", f"--out={tmp_path / 'p'}")
  assert r.returncode == 0, r.stderr
  r = run("evaluate", "--demo", "--method=sclip", "--method_options=std=3", f"--clip={clip_dir}")
  assert r.returncode == 2 and "unknown option(s) ['std']" in r.stderr and "Traceback" not in r.stderr
