"""What GKC's loader adds to the default one, on data in the real COCO panoptic layout: the
un-augmented teacher view and each target's filtered synonyms (`loss.synonym_filter`)."""
import json

import numpy as np
import pytest

from input_pipeline import synthetic
from input_pipeline.synonyms import FILTER_FORMAT, load_synonyms
from ovs_jax.config_utils import recipe_config
from ovs_jax.methods import gkc


def _config(root, **loss):
  config = recipe_config("configs/gkc_r50.py")
  config.data.update(root=str(root), crop_size=32, num_masks=6, worker_count=0)
  config.loss.update(caption_weight=0.0, kd_canvas=64, **loss)
  return config


def _apply(ops, el, seed=0):
  rng = np.random.default_rng(seed)
  for op in ops:
    el = op.random_map(el, rng) if hasattr(op, "random_map") else op.map(el)
  return el


def _filter_file(tmp_path, anns, keep):
  """A filter file as `python -m input_pipeline.synonyms filter` writes it; keep(png, k) -> the
  synonym indices of segment k of that image, or None to leave the segment out of the file."""
  sets = load_synonyms("coco_panoptic_133")
  segments = {}
  for png, infos in anns.items():
    for k, seg in enumerate(infos):
      if keep(png, k) is not None:
        segments.setdefault(png, {})[str(seg["id"])] = keep(png, k)
  path = tmp_path / "filter.json"
  path.write_text(json.dumps({"format": FILTER_FORMAT, "vocabulary": "coco_panoptic_133",
                              "synonyms_sha256": sets.sha256, "segments": segments}))
  return str(path)


def test_targets_carry_their_segments_filtered_synonyms_and_the_unaugmented_view(tmp_path):
  want = synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=3,
                                    hw=(40, 56), seed=1)
  with open(tmp_path / "coco" / "annotations" / "panoptic_train2017.json") as f:
    anns = {a["file_name"]: a["segments_info"] for a in json.load(f)["annotations"]}
  keep = {("000000000000.png", 0): [0, 2], ("000000000000.png", 1): [1],
          ("000000000001.png", 1): [0]}  # image 2 is not in the file: every synonym
  path = _filter_file(tmp_path, anns, lambda png, k: keep.get((png, k)))
  config = _config(tmp_path, synonym_filter=path)
  source = gkc.METHOD.train_source(config)
  mapper = gkc.METHOD.train_mapper(config, source)
  for i, w in enumerate(want):
    png = f"{i:012d}.png"
    record = source[i]
    expected_bits = [sum(1 << j for j in keep[png, k]) if (png, k) in keep else -1
                     for k in range(len(anns[png]))]
    assert record["segment_synonyms"].tolist() == expected_bits
    for seed in range(3):  # several crops / flips: the view never moves, the bits follow the slots
      out = _apply(mapper.ops, record, seed)
      np.testing.assert_array_equal(out["teacher_image"][:40, :56], w["image"])
      np.testing.assert_array_equal(out["teacher_segments"][:40, :56], w["pan_seg"])
      assert (out["teacher_segments"][40:] == 0).all()
      slots = np.flatnonzero(out["mask_valid"])
      assert out["mask_synonyms"][slots].tolist() == [expected_bits[s - 1] for s in out["mask_ids"][slots]]
      assert (out["mask_synonyms"][~out["mask_valid"]] == 0).all()
  spec = gkc.METHOD.batch_spec(config, 2, 32, 32)
  assert spec["teacher_image"] == ((2, 64, 64, 3), "uint8")
  assert spec["mask_synonyms"] == ((2, 6), "int32")


def test_a_filter_needs_panoptic_segments(tmp_path):
  config = recipe_config("configs/gkc_vitb.py", "demo")
  config.loss.synonym_filter = str(tmp_path / "filter.json")
  with pytest.raises(ValueError, match="synonym filter needs a COCO panoptic training set"):
    gkc.METHOD.train_source(config)


def test_the_full_recipe_refuses_to_train_unfiltered_synonyms_unless_told(tmp_path):
  """The recipe (no overrides) needs the per-segment filter file or the explicit opt-out; the
  refusal prints the command that makes the file. The demos opt out explicitly."""
  synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=1, hw=(40, 56))
  config = _config(tmp_path)
  with pytest.raises(ValueError, match=r"(?s)synonym_filter is empty.*python -m "
                                       r"input_pipeline.synonyms filter --clip=.*--out="):
    gkc.METHOD.train_source(config)
  config.loss.unfiltered_synonyms = True
  assert len(gkc.METHOD.train_source(config)) == 1
  config.loss.update(unfiltered_synonyms=False, synonym_weight=0.0)  # no synonym loss: no need
  assert len(gkc.METHOD.train_source(config)) == 1
  for recipe in ("gkc_r50", "gkc_vitb"):
    assert not recipe_config(f"configs/{recipe}.py").loss.unfiltered_synonyms
    assert recipe_config(f"configs/{recipe}.py", "demo").loss.unfiltered_synonyms


def test_without_a_filter_no_bits_and_no_view_without_distillation(tmp_path):
  synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=1, hw=(40, 56))
  config = _config(tmp_path, kd_weight=0.0, unfiltered_synonyms=True)
  source = gkc.METHOD.train_source(config)
  out = _apply(gkc.METHOD.train_mapper(config, source).ops, source[0])
  assert not {"mask_synonyms", "teacher_image", "teacher_segments"} & set(out)


def test_loss_runs_on_a_loader_batch_with_filter_and_view(tmp_path):
  """Loader -> loss on COCO panoptic: the step reads the teacher view by panoptic segment id and
  the filter's bits, and every term is finite."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=2, hw=(40, 56), seed=2)
  with open(tmp_path / "coco" / "annotations" / "panoptic_train2017.json") as f:
    anns = {a["file_name"]: a["segments_info"] for a in json.load(f)["annotations"]}
  path = _filter_file(tmp_path, anns, lambda png, k: [0] if k == 0 else None)
  config = recipe_config("configs/gkc_r50.py", "demo")
  config.data.update(train="coco_panoptic_133", root=str(tmp_path), crop_size=64, num_masks=6)
  config.clip.weights = "random"
  config.model.update(num_queries=8, hidden_dim=32, enc_layers=1, enc_ffn_dim=32, dec_layers=1,
                      dec_ffn_dim=32, num_heads=2, deform_points=1)
  config.loss.update(caption_weight=0.0, kd_canvas=64, kd_max_crops=8, kd_crop_size=32,
                     num_points=64, synonym_filter=path)
  method = gkc.METHOD
  source = method.train_source(config)
  ops = method.train_mapper(config, source).ops
  records = [_apply(ops, source[i], seed=i) for i in range(2)]
  batch = {k: jnp.asarray(np.stack([r[k] for r in records])) for k in records[0]}
  assert {"teacher_image", "teacher_segments", "mask_synonyms", "mask_ids", "masks"} <= set(batch)
  model = method.build_model(config)
  context = method.train_context(model, config, method.training_vocabulary(config), None, None)
  loss, terms = jax.jit(lambda m, b: method.loss(m, b, jax.random.PRNGKey(0), context, config))(
      model, batch)
  assert np.isfinite(float(loss)) and {"loss_kd", "loss_synonym"} <= set(terms)
  assert all(np.isfinite(float(v)) for v in terms.values())
  assert float(terms["loss_kd"]) > 0
