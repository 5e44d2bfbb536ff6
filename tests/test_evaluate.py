"""python -m ovs_jax.evaluate end to end: tables, JSON, oracle predictors and clear errors."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from clip_helpers import random_hf_clip, small_hf_config
from input_pipeline.demo import demo_dataset
from input_pipeline.files import DataError
from input_pipeline.source import DatasetMeta
from input_pipeline.synthetic import write_fake_split
from ovs_jax import evaluation as ev
from ovs_jax import preprocess
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.segmentation_model import SegmentationModel
from ovs_jax.interchange.errors import CheckpointError


class ListSource:
  """Records in memory, with a source's metadata."""

  def __init__(self, records, num_classes, ignore):
    self.records = records
    self.meta = DatasetMeta("listed", "val", "demo", num_classes, ignore)
    self.num_classes, self.ignore_label = num_classes, ignore
    self.class_names = [f"c{i}" for i in range(num_classes)]

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return dict(self.records[i], file_name=f"r{i}")


def oracle(apply, num_classes):
  """A factory of SegmentationModels around `apply` (pixels, valid) -> scores."""
  return lambda vocab: SegmentationModel("oracle", lambda p, x, v: apply(x, v),
                                         jnp.zeros(()), [f"c{i}" for i in range(num_classes)])


def test_perfect_predictor_scores_100(tmp_path):
  demo = demo_dataset("val")
  # the image *is* the label map (grey levels): the predictor decodes it back into one-hot scores
  records = [{"image": np.repeat(demo[i]["label"][..., None], 3, -1), "label": demo[i]["label"]}
             for i in range(12)]
  mean, std = jnp.asarray(preprocess.CLIP_MEAN), jnp.asarray(preprocess.CLIP_STD)
  c = demo.num_classes
  decode = lambda x, v: jnp.eye(c)[jnp.clip(jnp.round((x * std + mean) * 255)[..., 0], 0, c - 1).astype(int)]
  res = ev.evaluate({"perfect": oracle(decode, c)}, ["demo"],
                    InferenceConfig(short_side=160, bucket=32, label_bucket=32), tmp_path,
                    sources={"demo": ListSource(records, c, 255)})
  m = res["perfect"]["demo"]
  assert m["mIoU"] == m["pACC"] == m["mACC"] == m["fwIoU"] == 100.0 and m["num_images"] == 12


@pytest.mark.parametrize("num_classes,ignore,mode", [(150, 255, "whole"), (847, 65535, "slide")])
def test_constant_predictor_on_mixed_sizes(tmp_path, num_classes, ignore, mode):
  rng = np.random.default_rng(0)
  dtype = np.uint16 if ignore > 255 else np.uint8
  records = []
  for h, w in [(30, 41), (52, 20), (17, 17), (40, 64), (33, 35)]:  # 5 images: padded to 8
    label = rng.integers(0, 6, (h, w)).astype(dtype)
    label[rng.random((h, w)) < 0.1] = ignore
    records.append({"image": rng.integers(0, 256, (h, w, 3), np.uint8), "label": label})
  k = 3
  const = lambda x, v: jnp.broadcast_to(jnp.eye(num_classes)[k], x.shape[:3] + (num_classes,))
  cfg = InferenceConfig(mode=mode, short_side=48, window=32, stride=16, bucket=32, label_bucket=32)
  m = ev.evaluate({"const": oracle(const, num_classes)}, ["x"], cfg, tmp_path,
                  sources={"x": ListSource(records, num_classes, ignore)})["const"]["x"]
  lab = np.concatenate([r["label"].ravel() for r in records])
  lab = lab[lab != ignore]
  present = np.unique(lab)
  n_k = np.sum(lab == k)
  # IoU_k = n_k / N (every labelled pixel predicted k); other present classes 0
  np.testing.assert_allclose(m["mIoU"], 100 * n_k / len(lab) / len(present))
  np.testing.assert_allclose(m["pACC"], 100 * n_k / len(lab))
  np.testing.assert_allclose(m["fwIoU"], 100 * (n_k / len(lab)) ** 2)
  assert m["per_class"]["c7"]["IoU"] is None and m["per_class"]["c3"]["pixels"] == n_k


def test_images_scored_and_skipped_are_reported(tmp_path):
  root = tmp_path / "data"
  write_fake_split("voc_20", str(root), "val", num=3, hw=(24, 32))
  images = sorted((root / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))
  images[1].write_bytes(b"garbage")
  const = oracle(lambda x, v: jnp.broadcast_to(jnp.eye(20)[0], x.shape[:3] + (20,)), 20)
  cfg = InferenceConfig(short_side=32, bucket=32, label_bucket=32)
  m = ev.evaluate({"c": const}, ["voc_20"], cfg, tmp_path / "w", root=str(root), skip_bad=True)["c"]["voc_20"]
  assert (m["num_images"], m["num_skipped"]) == (2, 1)
  saved = json.loads((tmp_path / "w" / "results.json").read_text())["results"]["c"]["voc_20"]
  assert (saved["num_images"], saved["num_skipped"]) == (2, 1)
  for image in images:
    image.write_bytes(b"garbage")
  with pytest.raises(DataError, match=r"voc_20/val: no image could be read \(3 skipped"):
    ev.evaluate({"c": const}, ["voc_20"], cfg, tmp_path / "w", root=str(root), skip_bad=True)


def test_summaries_and_tables_name_the_miou_convention():
  # class c2 predicted once but absent from the ground truth: IoU c0 = 2/3, c1 = 1
  counts = np.array([[2, 0, 1], [0, 1, 0], [0, 0, 0]])
  for convention, miou in [("maft_plus", 100 * (2 / 3 + 1) / 3), ("detectron2", 100 * (2 / 3 + 1) / 2)]:
    row = ev.summarize(counts, ["c0", "c1", "c2"], 1, convention)
    assert row["miou_convention"] == convention and row["per_class"]["c2"]["IoU"] is None
    np.testing.assert_allclose(row["mIoU"], miou)
    table = ev.results_table({"m": {"x": row}}, ["x"])
    assert table.startswith(f"| model (mIoU, {convention} convention) | x |")
    assert f"| m | {miou:.1f} |" in table
    assert ev.results_table({"m": {"x": row}}, ["x"], "pACC").startswith("| model (pACC) | x |")
  assert ev.summarize(counts, ["c0", "c1", "c2"], 1)["miou_convention"] == "maft_plus"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("clip")
  random_hf_clip(small_hf_config()).save_pretrained(d)
  return d


def _run(*args):
  return subprocess.run([sys.executable, "-m", "ovs_jax.evaluate", *args], capture_output=True,
                        text=True)


def test_demo_end_to_end_writes_table_and_json(tmp_path, clip_dir):
  # two rows: plain CLIP weights, and a maskclip checkpoint found through the method registry
  ckpt = tmp_path / "run1"
  ckpt.mkdir()
  (ckpt / "config.json").write_text(json.dumps({"method": "maskclip", "clip": str(clip_dir)}))
  r = _run("--demo", f"--clip={clip_dir}", f"--checkpoint={ckpt}", "--names=base,ckpt",
           "--max_images=16", "--short_side=64", "--templates=plain", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 0, r.stderr
  assert "| model (mIoU, maft_plus convention) | demo |" in r.stdout
  assert "| base |" in r.stdout and "| ckpt |" in r.stdout
  out = json.loads((tmp_path / "w" / "results.json").read_text())
  row, row2 = out["results"]["base"]["demo"], out["results"]["ckpt"]["demo"]
  assert out["miou_convention"] == row["miou_convention"] == "maft_plus"
  assert row["num_images"] == 16 and 0 <= row["mIoU"] <= 100 and row["mIoU"] == row2["mIoU"]
  assert set(row["per_class"]) == set(demo_dataset("val").class_names)
  assert out["inference"]["short_side"] == 64
  assert (tmp_path / "w" / "per_class" / "base__demo.md").read_text().startswith("| class | IoU")
  assert "| model (fwIoU) | demo |" in (tmp_path / "w" / "results.md").read_text()


def test_bad_inputs_raise_clear_errors(tmp_path, clip_dir):
  factory = ev.model_factories([str(clip_dir)], [], [], templates=("{}",), cache_dir=None)
  cfg = InferenceConfig(short_side=32)
  with pytest.raises(ValueError, match="miou_convention='published': expected one of maft_plus"):
    ev.evaluate(factory, ["demo"], cfg, tmp_path, miou_convention="published")
  with pytest.raises(ValueError, match=r"has 2 classes but demo has \d+"):
    ev.evaluate(factory, ["demo"], cfg, tmp_path, vocabulary="cat; dog", max_images=8)
  # an image that cannot be read
  root = tmp_path / "data"
  write_fake_split("voc_20", str(root), "val", num=3)
  bad = next((root / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))
  bad.write_bytes(b"garbage")
  with pytest.raises(DataError, match=f"{bad.name}: cannot decode image"):
    ev.evaluate(factory, ["voc_20"], cfg, tmp_path, root=str(root))
  # an empty folder
  (tmp_path / "empty/ADEChallengeData2016/images/validation").mkdir(parents=True)
  (tmp_path / "empty/ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
  with pytest.raises(DataError, match="ade20k_150/val is empty"):
    ev.evaluate(factory, ["ade20k_150"], cfg, tmp_path, root=str(tmp_path / "empty"))
  # checkpoints of other architectures
  other = tmp_path / "dino"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
  with pytest.raises(CheckpointError, match="dino: checkpoint of another architecture \\(dinov2\\)"):
    ev.model_factories([], [str(other)], [], templates=("{}",))
  (other / "config.json").write_text(json.dumps({"method": "segformer"}))
  with pytest.raises(CheckpointError, match="another architecture \\(method 'segformer'\\); supported"):
    ev.model_factories([], [str(other)], [], templates=("{}",))
  with pytest.raises(CheckpointError, match="plain CLIP weights .* --clip="):
    ev.model_factories([], [str(clip_dir)], [], templates=("{}",))
  r = _run("--demo", "--miou_convention=published")
  assert r.returncode != 0 and "maft_plus|detectron2" in r.stderr
  r = _run(f"--checkpoint={tmp_path / 'nowhere'}", "--datasets=demo")
  assert r.returncode != 0 and "nowhere: checkpoint not found" in r.stderr
