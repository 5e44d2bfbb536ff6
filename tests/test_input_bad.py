"""Bad input raises one clear DataError naming the file and problem, or is skipped and counted."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline import datasets, loader, synthetic
from input_pipeline.files import DataError
from ovs_jax.inference.batching import ResizeForEval


@pytest.fixture
def ade(tmp_path):
  """A 4-record ADE-150 val split; returns (root, image dir, label dir)."""
  synthetic.write_fake_split("ade20k_150", str(tmp_path), "val", num=4, hw=(16, 16))
  base = tmp_path / "ADEChallengeData2016"
  return str(tmp_path), base / "images" / "validation", base / "annotations_detectron2" / "validation"


def _get(root, **kw):
  return datasets.get_dataset("ade20k_150", "val", root=root, **kw)


@pytest.mark.parametrize("damage,match", [
    ("garbage", "val_000001.jpg: cannot decode image"),
    ("truncated", "val_000001.jpg: cannot decode image"),
])
def test_corrupt_image(ade, damage, match):
  root, images, _ = ade
  path = images / "val_000001.jpg"
  data = path.read_bytes()
  path.write_bytes(b"not an image at all" if damage == "garbage" else data[:len(data) // 2])
  src = _get(root)
  src[0]  # good records still read
  with pytest.raises(DataError, match=match):
    src[1]


def test_label_problems(ade):
  root, _, labels = ade
  Image.fromarray(np.zeros((16, 20), np.uint8)).save(labels / "val_000000.png")
  Image.fromarray(np.full((16, 16), 150, np.uint8)).save(labels / "val_000001.png")
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(labels / "val_000002.png")
  src = _get(root)
  with pytest.raises(DataError, match=r"val_000000.png: label map is 16x20 \(HxW\) but its image is 16x16"):
    src[0]
  with pytest.raises(DataError, match=r"val_000001.png: label values \[150\] are outside the class "
                                      r"range \[0, 150\) and not the ignore label 255"):
    src[1]
  with pytest.raises(DataError, match="val_000002.png: label map is RGB colour"):
    src[2]
  src[3]


def test_missing_label_file(ade):
  root, _, labels = ade
  os.remove(labels / "val_000002.png")
  with pytest.raises(DataError, match=r"annotations_detectron2/validation/val_000002.png: missing label "
                                      r"file for .*images/validation/val_000002.jpg"):
    _get(root)
  src = _get(root, skip_bad=True)
  assert len(src) == 3 and src.skips.count == 1


def test_empty_folder_and_wrong_name(tmp_path):
  (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
  (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
  with pytest.raises(DataError, match=r"images/validation: no '\*.jpg' files; ade20k_150/val is empty"):
    _get(str(tmp_path))
  with pytest.raises(KeyError, match="unknown dataset 'ade_150'"):
    datasets.get_dataset("ade_150", "val", root=str(tmp_path))


def test_skip_bad_records_are_counted_and_logged(ade, caplog):
  root, images, labels = ade
  (images / "val_000001.jpg").write_bytes(b"garbage")
  Image.fromarray(np.full((16, 16), 200, np.uint8)).save(labels / "val_000003.png")
  src = _get(root, skip_bad=True)
  with caplog.at_level(logging.WARNING):
    assert src[1] is None and src[3] is None and src[0] is not None
  assert src.skips.count == 2
  assert "skipping bad record (2 skipped so far" in caplog.text and "val_000003.png" in caplog.text
  # Eval marks skipped records invalid (every record slot still appears once).
  batches = list(loader.make_eval_loader(src, 4, [ResizeForEval(16, 16)], shard_index=0, shard_count=1))
  assert batches[0]["valid"].tolist() == [True, False, True, False]
  # Training replaces them with the next good record: batches keep their size.
  it = iter(loader.make_train_loader(src, 2, min_size=(16,), num_epochs=1,
                                     shard_index=0, shard_count=1))
  assert [b["image"].shape[0] for b in it] == [2, 2]


def test_bad_record_without_skip_stops_the_loader(ade):
  root, images, _ = ade
  (images / "val_000002.jpg").write_bytes(b"garbage")
  it = iter(loader.make_train_loader(_get(root), 4, min_size=(16,), shuffle=False,
                                     shard_index=0, shard_count=1))
  with pytest.raises(DataError, match="val_000002.jpg: cannot decode image"):
    next(it)
