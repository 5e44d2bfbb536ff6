"""The zero-shot protocol: seen/unseen/hIoU metrics vs numpy, training data without the unseen
classes (labels, panoptic segments, vocabulary), and the evaluator and CLI options that use it."""
import ml_collections
import numpy as np
import pytest

from input_pipeline import vocab
from input_pipeline.demo import demo_dataset
from input_pipeline.zero_shot import SeenOnly, training_vocabulary, unseen_for
from ovs_jax import evaluators, metrics


def _reference(counts, unseen, convention):
  """IoU per class, then the mean over each subset's counted classes, then the harmonic mean."""
  c = len(counts)
  out = {}
  for key, subset in (("mIoU_seen", [k for k in range(c) if k not in unseen]), ("mIoU_unseen", unseen)):
    ious, n = [], 0
    for k in subset:
      gt, pred, tp = counts[k].sum(), counts[:, k].sum(), counts[k, k]
      if gt > 0:
        ious.append(tp / (gt + pred - tp))
      if gt > 0 or (convention == "maft_plus" and pred > 0):
        n += 1
    out[key] = 100 * sum(ious) / n
  s, u = out["mIoU_seen"], out["mIoU_unseen"]
  out["hIoU"] = 2 * s * u / (s + u)
  return out


@pytest.mark.parametrize("convention", ["maft_plus", "detectron2"])
def test_seen_unseen_and_hiou_equal_numpy(convention):
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 50, (9, 9))
  counts[2] = 0            # a seen class without ground truth but predicted
  counts[7] = 0            # an unseen class without ground truth but predicted
  counts[:, 8] = 0
  counts[8] = 0            # a class neither labelled nor predicted
  unseen = [1, 7, 8]
  got = metrics.zero_shot_metrics(counts, unseen, convention)
  want = _reference(counts, unseen, convention)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)
  # Both subsets together give the overall mIoU's numerator over its denominator.
  assert metrics.zero_shot_metrics(counts, [], convention)["mIoU_seen"] == pytest.approx(
      metrics.segmentation_metrics(counts, convention)["mIoU"])


def test_splits_cover_the_protocols():
  names = vocab.class_names("pc_59")
  assert [names[i] for i in vocab.unseen_classes("pc_59")] == [
      "aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard", "motorbike", "sofa", "tvmonitor"]
  assert vocab.unseen_classes("pc_59") == [0, 6, 7, 14, 19, 24, 31, 33, 48, 54]  # DESIGN §7
  assert vocab.unseen_classes("coco_stuff_171") == [19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133,
                                                     136, 137, 157, 160]
  assert [vocab.class_names("demo")[i] for i in vocab.unseen_classes("demo")] == [
      "snow", "tiled floor", "star", "kite", "car", "mushroom", "umbrella"]
  assert unseen_for("ade20k_150", "") == []
  with pytest.raises(ValueError, match="ade20k_150 has no seen/unseen split.*voc_20"):
    unseen_for("ade20k_150", "zero_shot")
  with pytest.raises(ValueError, match="'zero-shot'.*expected"):
    unseen_for("voc_20", "zero-shot")


def test_training_data_keeps_only_seen_classes():
  source = demo_dataset("val")
  unseen = vocab.unseen_classes("demo")
  seen_source = SeenOnly(source, unseen)
  assert seen_source.num_classes == source.num_classes - len(unseen) and len(seen_source) == len(source)
  data = ml_collections.ConfigDict(dict(train="demo", unseen="zero_shot"))
  names = vocab.class_names("demo")
  assert [v[0] for v in training_vocabulary(data)] == [n for i, n in enumerate(names) if i not in unseen]
  for i in range(8):
    before, after = source[i]["label"], seen_source[i]["label"]
    for old in range(source.num_classes):
      want = 255 if old in unseen else old - sum(u < old for u in unseen)
      assert (after[before == old] == want).all()
    assert ((after == 255) == ((before == 255) | np.isin(before, unseen))).all()


def test_panoptic_segments_of_unseen_classes_become_void():
  class Panoptic:  # one record in the decoded panoptic form (input_pipeline/source.py)
    meta = demo_dataset("val").meta
    def __len__(self):
      return 1
    def __getitem__(self, i):
      pan = np.array([[0, 1, 1], [2, 2, 3]], np.int32)
      classes = np.array([4, 5, 9], np.int32)
      lut = np.array([255, 4, 5, 9], np.uint8)
      return {"image": np.zeros((2, 3, 3), np.uint8), "label": lut[pan], "pan_seg": pan,
              "segment_classes": classes, "segment_iscrowd": np.zeros(3, bool)}
  rec = SeenOnly(Panoptic(), [5, 7, 8])[0]
  np.testing.assert_array_equal(rec["pan_seg"], [[0, 1, 1], [0, 0, 3]])
  np.testing.assert_array_equal(rec["label"], [[255, 4, 4], [255, 255, 6]])
  assert rec["segment_classes"][0] == 4 and rec["segment_classes"][2] == 6


def test_evaluator_config_errors_name_the_key():
  cfg = ml_collections.ConfigDict(dict(evals=dict(zs=dict(type="zero_shot", dataset="ade20k_150"))))
  with pytest.raises(ValueError, match="config.evals.zs: ade20k_150 has no seen/unseen split"):
    evaluators.from_config(cfg)
  cfg.evals.zs.update(dataset="voc_20", baseline="clip")
  with pytest.raises(ValueError, match="config.evals.zs.baseline='clip'"):
    evaluators.from_config(cfg)


def test_evaluate_reports_seen_unseen_and_hiou(tmp_path):
  from ovs_jax.evaluation import evaluate, model_factories
  from ovs_jax.inference.batching import InferenceConfig
  from ovs_jax.templates import VILD_TEMPLATES
  models = model_factories(["random:tiny"], [], [], templates=VILD_TEMPLATES[:1], cache_dir=None)
  results = evaluate(models, ["demo"], InferenceConfig(short_side=64), tmp_path, max_images=8,
                     protocol="zero_shot")
  r = next(iter(results.values()))["demo"]
  assert r["unseen_classes"] == ["snow", "tiled floor", "star", "kite", "car", "mushroom",
                                 "umbrella"]
  assert {"mIoU_seen", "mIoU_unseen", "hIoU"} <= set(r)
  assert "hIoU" in (tmp_path / "results.md").read_text()
