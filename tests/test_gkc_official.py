"""GKC against the official release (yongliu20/GKC @ 21313c8) run on random weights.

tests/data/gkc/ (README.md there: how to regenerate) holds the official model's state dict (tiny
sizes, `OpenSegMaskFormerDenseTextKDSyn`) and its outputs on two images; official_keys_rn50.tsv.gz
lists every key/shape/dtype of the release's RN50 model. Checked here: the key table both ways
(bit-identical round trip, exactly the official keys), our forward on the imported weights equal
to the official one, `convert from-official/to-official --method=gkc`, and each loss term of the
release (class CE with its region-dropout draws, synonym CE on its per-image classifiers,
text-guided KD on its crops, caption grounding) on the release's own matches. In development the
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


def test_to_official_refuses_clip_pixel_statistics(official_file, tmp_path):
  """The release normalises with ImageNet statistics: a workdir trained on CLIP's would not
  compute the same outputs in the official code."""
  import json
  workdir = gkc_export.from_official(official_file, tmp_path / "wd")
  run = json.loads((workdir / "config.json").read_text())
  assert run["model"]["pixel_stats"] == "imagenet"
  run["model"]["pixel_stats"] = "clip"
  (workdir / "config.json").write_text(json.dumps(run))
  with pytest.raises(CheckpointError, match="pixel_stats='clip'"):
    gkc_export.to_official(workdir, tmp_path / "x.pth")


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


# ---- loss terms on the release's own matches and region-dropout draws ----

def _targets(z, b_count=2):
  """Per image: the release's labels and synonym labels, split by num_targets."""
  bounds = np.cumsum([0, *z["num_targets"]])
  return ([z["labels"][a:e] for a, e in zip(bounds[:-1], bounds[1:])],
          [z["syn_labels"][a:e] for a, e in zip(bounds[:-1], bounds[1:])])


def _ce_targets(z, s, labels, void, draws):
  """(B, Q) targets (void for unmatched) and (B, Q) dropped, as the release's loss_labels
  (model 869-902): matched pairs in the matcher's order, dropped where the draw < 0.5."""
  b, q = z[f"logits_{s}"].shape[:2]
  target = np.full((b, q), void)
  dropped = np.zeros((b, q), bool)
  for img, src, tgt, d in zip(z[f"img_{s}"], z[f"src_{s}"], z[f"tgt_{s}"], draws):
    target[img, src] = labels[img][tgt]
    dropped[img, src] = d < 0.5
  return jnp.asarray(target), jnp.asarray(dropped)


def test_class_ce_with_region_dropout_equals_the_release(imported):
  from ovs_jax.losses.mask_losses import classification_loss
  z = np.load(DATA / "official_forward.npz")
  labels, _ = _targets(z)
  pixels = (z["image"].astype(np.float32) - z["pixel_mean"]) / z["pixel_std"]
  sets = Segmenter(imported)(jnp.asarray(pixels, jnp.float32))
  text = l2_normalize(jnp.asarray(z["text_plain"]))
  for s in sets:
    i = s["index"]
    target, dropped = _ce_targets(z, i, labels, text.shape[0], z[f"drop_ce_{i}"])
    logits = imported.class_path.logits(s["embedding"], text)
    got = classification_loss(logits, target, 0.1, dropped)
    np.testing.assert_allclose(got, z[f"ce_{i}"], rtol=1e-4)


def test_synonym_ce_on_the_release_classifiers_equals_the_release(imported):
  """Each image's own classifier (its synonym rows, zero-token padding included), the release's
  synonym targets, its second region-dropout draws (model 834-866)."""
  from ovs_jax.losses.mask_losses import classification_loss
  z = np.load(DATA / "official_forward.npz")
  _, syn = _targets(z)
  pixels = (z["image"].astype(np.float32) - z["pixel_mean"]) / z["pixel_std"]
  sets = Segmenter(imported)(jnp.asarray(pixels, jnp.float32))
  per_image = l2_normalize(jnp.asarray(z["text_syn"]))  # (B, K, E)
  k = per_image.shape[1]
  for s in sets:
    i = s["index"]
    target, dropped = _ce_targets(z, i, syn, k, z[f"drop_syn_{i}"])
    logits = jnp.stack([imported.class_path.logits(s["embedding"][b:b + 1], per_image[b])[0]
                        for b in range(per_image.shape[0])])
    got = classification_loss(logits, target, 0.1, dropped)
    np.testing.assert_allclose(got, z[f"syn_{i}"], rtol=1e-4)


def test_text_guided_kd_equals_the_release_on_its_crops(imported):
  """Crops in the release's order (final set's matches); every set's student embedding of the
  query it matched to the crop's target (model 568-656, `indice2main`), the release's teacher and
  text embeddings, our kd_proj on the imported weights, `pairwise_kd` (model 925-952)."""
  from ovs_jax.losses.gkc_distillation import pairwise_kd
  z = np.load(DATA / "official_forward.npz")
  pixels = (z["image"].astype(np.float32) - z["pixel_mean"]) / z["pixel_std"]
  sets = Segmenter(imported)(jnp.asarray(pixels, jnp.float32))
  last = len(sets) - 1
  crops = list(zip(z[f"img_{last}"], z[f"tgt_{last}"]))
  teacher, text = jnp.asarray(z["kd_teacher"])[None], jnp.asarray(z["kd_text"])[None]
  image = jnp.asarray([b for b, _ in crops])[None]
  ok = jnp.ones_like(image, bool)
  for s in sets:
    i = s["index"]
    query = {(b, t): q for b, q, t in zip(z[f"img_{i}"], z[f"src_{i}"], z[f"tgt_{i}"])}
    shared = jnp.stack([s["shared"][b, query[(b, t)]] for b, t in crops])
    v = imported.kd_proj(shared, i)[None]
    if i == last:
      np.testing.assert_allclose(v[0], z["kd_student_final"], rtol=1e-4, atol=1e-5)
    got = pairwise_kd(v, teacher, text, image, ok, imported.kd_scale[...])
    np.testing.assert_allclose(got, z[f"kd_{i}"], rtol=1e-4)


def test_caption_grounding_equals_the_release_head(imported):
  """Every set's matched queries (≤ 25: all here) against the captions' word embeddings, learned
  temperature exp(logit_scale) (model 963-1015, loss.py GroundingHead)."""
  from ovs_jax.losses.caption_grounding import grounding_loss
  z = np.load(DATA / "official_forward.npz")
  pixels = (z["image"].astype(np.float32) - z["pixel_mean"]) / z["pixel_std"]
  sets = Segmenter(imported)(jnp.asarray(pixels, jnp.float32))
  words = jnp.asarray(z["text_caption"])
  word_valid = jnp.asarray(z["caption_mask"] > 0)
  temperature = jnp.exp(imported.class_path.logit_scale[...])
  for s in sets:
    i = s["index"]
    rows = [[q for b, q in zip(z[f"img_{i}"], z[f"src_{i}"]) if b == img] for img in range(2)]
    r = max(map(len, rows))
    regions = jnp.stack([jnp.concatenate([s["embedding"][img, jnp.asarray(q, jnp.int32)],
                                          jnp.zeros((r - len(q), s["embedding"].shape[-1]))])
                         for img, q in enumerate(rows)])
    region_valid = jnp.asarray([[k < len(q) for k in range(r)] for q in rows])
    got = grounding_loss(words, word_valid, regions, region_valid, temperature)
    np.testing.assert_allclose(got, z[f"ground_{i}"], rtol=1e-4)
