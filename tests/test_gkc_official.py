"""GKC against the official release (yongliu20/GKC @ 21313c8) run on random weights.

tests/data/gkc/ (README.md there: how to regenerate) holds the official model's state dict (tiny
sizes, `OpenSegMaskFormerDenseTextKDSyn`) and its outputs on two images; official_keys_rn50.tsv.gz
lists every key/shape/dtype of the release's RN50 model. Checked here: the key table both ways
(bit-identical round trip, exactly the official keys), our forward on the imported weights equal
to the official one, and `convert from-official/to-official --method=gkc`. In development the
oracle also loaded our export into the official model with strict=True (docs/gkc.md)."""
import gzip
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax.interchange import gkc_official, torch_state
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.methods.gkc import METHOD, Segmenter
from ovs_jax.models.clip import l2_normalize
from ovs_jax.torch_export import gkc_official as gkc_export

DATA = Path(__file__).parent / "data" / "gkc"


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("gkc") / "official_tiny.pth"
  with gzip.open(DATA / "official_tiny.pth.gz", "rb") as f, open(path, "wb") as out:
    shutil.copyfileobj(f, out)
  return path


@pytest.fixture(scope="module")
def official(official_file):
  return gkc_official.read_official_checkpoint(official_file)


def _model(sd):
  return METHOD.build_model(gkc_export.imported_config(sd), {"clip": gkc_export.clip_record(sd)})


@pytest.fixture(scope="module")
def imported(official):
  model = _model(official)
  gkc_export.load_official(model, official, "official_tiny.pth")
  return model


def test_round_trip_is_bit_identical(official, imported):
  back = gkc_official.to_official(torch_state.export_state_dict(imported), num_classes=5,
                                  void_weight=0.1)
  assert sorted(back) == sorted(official)
  for k, v in official.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert np.array_equal(back[k], v), k


def _official_shapes(name):
  lines = gzip.open(DATA / name, "rt").read().splitlines()
  return {k: tuple(int(d) for d in s.split(",") if d)
          for k, s, _ in (ln.split("\t") for ln in lines if not ln.startswith("#"))}


def test_key_table_gives_exactly_the_release_rn50_keys():
  want = _official_shapes("official_keys_rn50.tsv.gz")
  record = gkc_export.clip_record({k: np.zeros(s, np.float32) for k, s in want.items()
                                   if k.startswith(("backbone.conv3", "backbone.layer",
                                                    "vision_clip.attnpool", "text_encoder."))})
  config = gkc_export.imported_config({k: np.zeros(s, np.float32) for k, s in want.items()
                                       if k.startswith("sem_seg_head.")})
  model = nnx.eval_shape(lambda: METHOD.build_model(config, {"clip": record}))
  ours = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]:
    name, value = torch_state.to_torch_layout(tuple(str(k.key) for k in path),
                                              np.broadcast_to(np.float32(0), leaf.shape))
    ours[name] = value
  official = gkc_official.to_official(ours, num_classes=133, void_weight=0.1)
  assert sorted(set(want) - set(official)) == [] and sorted(set(official) - set(want)) == []
  assert {k: tuple(v.shape) for k, v in official.items()} == want
  back = gkc_official.from_official(official, "official layout")
  assert sorted(back) == sorted(ours)


def _rel(got, want):
  """‖got − want‖ / ‖want‖ over the whole tensor."""
  return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def test_forward_equals_the_official_forward(imported):
  z = np.load(DATA / "official_forward.npz")
  pixels = (z["image"].astype(np.float32) - z["pixel_mean"]) / z["pixel_std"]
  sets = Segmenter(imported)(jnp.asarray(pixels, jnp.float32))
  text = l2_normalize(jnp.asarray(z["text_plain"]))
  assert sorted(s["index"] for s in sets) == [0, 1, 2, 3]
  for s in sets:
    i = s["index"]
    want_embed = z[f"embed_{i}"] / np.linalg.norm(z[f"embed_{i}"], axis=-1, keepdims=True)
    assert _rel(s["embedding"], want_embed) < 1e-4, i
    assert _rel(imported.class_path.logits(s["embedding"], text), z[f"logits_{i}"]) < 1e-4, i
    if f"masks_{i}" in z:
      assert _rel(s["pred_masks"], z[f"masks_{i}"]) < 1e-4, i


def test_convert_cli_functions_round_trip(official_file, official, tmp_path):
  """from-official -> workdir -> to-official: the release's keys and values, the module versions
  the release's loader needs, and our 133-class criterion buffer (configs/gkc_r50.py's data)."""
  import torch
  workdir = gkc_export.from_official(official_file, tmp_path / "wd")
  out = gkc_export.to_official(workdir, tmp_path / "back.pth")
  back = torch.load(out, weights_only=True)["model"]
  theirs = torch.load(official_file, weights_only=True)["model"]
  for k, v in gkc_official.MODULE_VERSIONS.items():
    assert back._metadata[k]["version"] == theirs._metadata[k]["version"] == v
  assert sorted(back) == sorted(official)
  for k, v in official.items():
    if k != "criterion.empty_weight":
      assert np.array_equal(back[k].numpy(), v) and back[k].dtype == theirs[k].dtype, k
  assert back["criterion.empty_weight"].tolist() == [1.0] * 133 + [np.float32(0.1)]


def test_not_a_gkc_checkpoint_is_refused(tmp_path):
  import torch
  path = tmp_path / "other.pth"
  torch.save({"model": {"backbone.clip_model.visual.conv1.weight": torch.zeros(1)}}, path)
  with pytest.raises(CheckpointError, match="not an official GKC checkpoint"):
    gkc_official.read_official_checkpoint(path)


def test_an_unknown_key_is_named(official):
  sd = dict(official, **{"sem_seg_head.predictor.extra.weight": np.zeros(1, np.float32)})
  with pytest.raises(CheckpointError, match="sem_seg_head.predictor.extra.weight"):
    gkc_official.from_official(sd, "x.pth")
