"""Official MAFT+ checkpoints both ways: the key table against the real checkpoints' key lists, bit-exact
round trips, clear errors, the official CDT input reading, and the CLI through evaluate and predict.

tests/data/maft_plus_official_keys_{base,large}.tsv.gz list every key and shape of the state dict the
official code builds (MAFT_Plus from configs/semantic/train_semantic_{base,large}.yaml). In
development the oracle (../shared/oracle) also checked: the official Base checkpoint (random weights)
imported here gives the official semantic scores to 7.7e-4 (of 6.7); our export loads into the
official model with strict=True and gives the same outputs (docs/maft_plus.md)."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ovs_jax.config_utils import recipe_config
from ovs_jax.interchange import maft_official, torch_state
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.methods.maft_plus import METHOD, nchw_rows
from trainer_helpers import TINY, apply_overrides

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def _official_shapes(size):
  lines = gzip.open(DATA / f"maft_plus_official_keys_{size}.tsv.gz", "rt").read().splitlines()
  return {k: tuple(int(d) for d in s.split(",") if d) for k, s in
          (ln.split("\t") for ln in lines if not ln.startswith("#"))}


def _abstract_export(model):
  sd = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat))))[0]:
    p = tuple(str(k.key) for k in path)
    stacked = torch_state._stacked_at(p)
    assert stacked is None  # no scan in these recipes
    name, value = torch_state.to_torch_layout(p, np.broadcast_to(np.float32(0), leaf.shape))
    sd[name] = value
  return sd


@pytest.mark.parametrize("size,recipe", [("base", "maft_plus_convnext_b.py"),
                                         ("large", "maft_plus_convnext_l.py")])
def test_key_table_gives_exactly_the_official_keys_and_shapes(size, recipe):
  config = recipe_config(REPO / "configs" / recipe)
  config.clip.weights = "random"
  model = nnx.eval_shape(lambda: METHOD.build_model(config))
  ours = _abstract_export(model)
  official = maft_official.to_official(ours, num_classes=171, void_weight=0.1)
  want = _official_shapes(size)
  assert sorted(set(want) - set(official)) == [] and sorted(set(official) - set(want)) == []
  assert {k: tuple(v.shape) for k, v in official.items()} == want
  # ... and every official key comes back to exactly our parameters (teacher text, buffer: dropped).
  back = maft_official.from_official(official, "official layout")
  assert sorted(back) == sorted(ours)


# The head sizes a state dict fixes (from-official infers them); heads and sampling points keep the
# recipe's values, as a state dict cannot tell heads x points apart.
SIZES = {k: v for k, v in TINY.items() if k.split(".")[-1] in (
    "num_queries", "hidden_dim", "enc_layers", "enc_ffn_dim", "dec_layers", "dec_ffn_dim")}


def _tiny_model(seed=0):
  config = apply_overrides(recipe_config(REPO / "configs/maft_plus_convnext_b.py", "demo"), SIZES)
  config.clip.weights = "random"
  config.seed = seed
  model = METHOD.build_model(config)
  rng = np.random.default_rng(seed)  # every value distinct from its init
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x + jnp.asarray(rng.standard_normal(x.shape), x.dtype) * 0.01,
                                 state))
  return config, model


def test_round_trips_are_bit_identical_both_ways():
  _, model = _tiny_model()
  ours = torch_state.export_state_dict(model)
  official = maft_official.to_official(ours, num_classes=10, void_weight=0.1)
  back = maft_official.from_official(official, "round trip")
  assert sorted(back) == sorted(ours)
  for k in ours:
    np.testing.assert_array_equal(back[k], ours[k], err_msg=k)
  again = maft_official.to_official(back, num_classes=10, void_weight=0.1)
  assert sorted(again) == sorted(official)
  for k in official:
    np.testing.assert_array_equal(again[k], official[k], err_msg=k)
  # q/k/v rows of nn.MultiheadAttention's in_proj, in that order.
  w = official["sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn.in_proj_weight"]
  d = w.shape[1]
  np.testing.assert_array_equal(w[d:2 * d], ours["head.predictor.layers.0.self_attn.k_proj.weight"])


def test_bad_official_files_get_one_clear_error(tmp_path):
  _, model = _tiny_model()
  official = maft_official.to_official(torch_state.export_state_dict(model), num_classes=10, void_weight=0.1)
  broken = dict(official)
  broken["sem_seg_head.predictor.extra_thing.weight"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError, match=r"not part of an official MAFT\+ checkpoint.*extra_thing"):
    maft_official.from_official(broken, "x.pth")
  # Missing and mis-shaped keys: the strict import lists both in one message.
  broken = dict(official)
  del broken["cdt.cross_atten.norm.weight"]
  broken["void_embedding.weight"] = np.zeros((1, 7), np.float32)
  target = nnx.eval_shape(lambda: model)
  with pytest.raises(CheckpointError, match=r"missing key 'cdt\.norm\.weight'.*void_embedding.*\(1, 7\)"):
    torch_state.import_state_dict(target, maft_official.from_official(broken, "x.pth"), source="x.pth")
  torch.save({"model": {"backbone.foo": torch.zeros(2)}, "note": "x"}, tmp_path / "partial.pth")
  with pytest.raises(CheckpointError, match="partial.pth"):
    maft_official.from_official(maft_official.read_official_checkpoint(tmp_path / "partial.pth"), "p")
  (tmp_path / "not_torch.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointError, match="not_torch.pth"):
    maft_official.read_official_checkpoint(tmp_path / "not_torch.pth")


def test_cdt_reads_the_dense_map_as_the_official_code_does():
  """Re-derivation of `visual_prediction_forward_convnext` (maft/maft_plus.py): an NCHW map reshaped
  to (B*h*w, C) without a permute, through the head, reshaped to (B, h, w, D)."""
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)  # NHWC, non-square
  nchw = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
  official = nchw.reshape(2 * 3 * 5, 4).reshape(2, 3, 5, 4).numpy()
  np.testing.assert_array_equal(np.asarray(nchw_rows(jnp.asarray(x))), official)
  assert not np.array_equal(official, x)  # it is not the per-pixel map


def test_from_official_then_evaluate_predict_and_back(tmp_path):
  config, model = _tiny_model()
  # A tiny official-layout checkpoint as detectron2 writes it: {'model': ..., 'iteration': ...}.
  official = maft_official.to_official(torch_state.export_state_dict(model), num_classes=10, void_weight=0.1)
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in official.items()},
              "iteration": 7}, tmp_path / "maftp_tiny.pth")
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, cwd=REPO)
  r = run("ovs_jax.convert", "from-official", f"--src={tmp_path / 'maftp_tiny.pth'}",
          f"--workdir={tmp_path / 'wd'}", "--recipe=maft_plus_convnext_b.py:demo")
  assert r.returncode == 0, r.stderr[-2000:]
  saved = json.loads((tmp_path / "wd" / "config.json").read_text())
  assert saved["model"]["cdt_dense"] == "official" and saved["model"]["num_queries"] == TINY["model.num_queries"]
  # the official evaluation runs in float32: evaluate/predict default to it (issue 31, case 14)
  assert json.loads((tmp_path / "wd" / "imported.json").read_text())["precision"] == "float32"
  r = run("ovs_jax.evaluate", f"--checkpoint={tmp_path / 'wd'}", "--demo", "--max_images=2",
          "--short_side=128", f"--workdir={tmp_path / 'eval'}")
  assert r.returncode == 0, r.stderr[-2000:]
  r = run("ovs_jax.predict", f"--checkpoint={tmp_path / 'wd'}", "--demo", "--num_demo=1",
          "--short_side=128", f"--out={tmp_path / 'pred'}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert list((tmp_path / "pred").glob("*_label.png"))
  r = run("ovs_jax.convert", "to-official", f"--checkpoint={tmp_path / 'wd'}", f"--out={tmp_path / 'back.pth'}")
  assert r.returncode == 0, r.stderr[-2000:]
  back = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
  assert sorted(back) == sorted(official)
  for k, v in official.items():
    if k != "criterion.empty_weight":  # the demo vocabulary's size, not the official 171
      np.testing.assert_array_equal(back[k].numpy(), v, err_msg=k)
