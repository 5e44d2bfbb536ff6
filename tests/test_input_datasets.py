"""Each registered dataset reads a small generated copy of its real layout, value for value."""
import numpy as np
import pytest

from input_pipeline import datasets, synthetic
from input_pipeline.files import DataError

SEMANTIC = ["ade20k_150", "ade20k_847", "pc_59", "pc_459", "voc_20", "voc_21", "coco_stuff_171",
            "cityscapes_19", "demo"]
COUNTS = {"ade20k_150": 150, "ade20k_847": 847, "pc_59": 59, "pc_459": 459, "voc_20": 20,
          "voc_21": 21, "coco_stuff_171": 171, "coco_panoptic_133": 133, "cityscapes_19": 19,
          "demo": 30}


@pytest.mark.parametrize("name", SEMANTIC)
def test_semantic_layout(name, tmp_path):
  want = synthetic.write_fake_split(name, str(tmp_path), "val", num=3, seed=1)
  synthetic.write_fake_split(name, str(tmp_path), "train", num=2, seed=2)  # must not leak into val
  src = datasets.get_dataset(name, "val", root=str(tmp_path))
  assert len(src) == 3 and src.num_classes == COUNTS[name] and len(src.class_names) == COUNTS[name]
  for i, w in enumerate(want):
    r = src[i]
    assert w["key"] in r["file_name"]
    np.testing.assert_array_equal(r["image"], w["image"])
    assert r["label"].dtype == (np.uint16 if src.ignore_label == 65535 else np.uint8)
    np.testing.assert_array_equal(r["label"], w["label"])


def test_label_conventions(tmp_path):
  # 16-bit ids pass 255 in ADE-847/PC-459, whose ignore label is 65535 (detectron2's convention).
  for name in ("ade20k_847", "pc_459"):
    synthetic.write_fake_split(name, str(tmp_path), "val", num=2, hw=(64, 64))
    src = datasets.get_dataset(name, "val", root=str(tmp_path))
    labels = np.concatenate([src[i]["label"].ravel() for i in range(2)])
    assert src.ignore_label == 65535 and labels.max() == 65535
    assert (labels[labels != 65535] > 255).any() and labels[labels != 65535].max() == src.num_classes - 1
  # VOC-21 keeps background as class 0; VOC-20 and the rest ignore with 255.
  synthetic.write_fake_split("voc_21", str(tmp_path), "val", num=1)
  src = datasets.get_dataset("voc_21", "val", root=str(tmp_path))
  assert src.class_names[0] == "background" and (src[0]["label"] == 0).any()


def test_coco_panoptic(tmp_path):
  want = synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=2, hw=(16, 24))
  src = datasets.get_dataset("coco_panoptic_133", "train", root=str(tmp_path))
  assert len(src) == 2 and src.num_classes == 133 and src.meta.kind == "panoptic"
  for i, w in enumerate(want):
    r = src[i]
    for k in ("image", "label", "pan_seg", "segment_classes", "segment_iscrowd"):
      np.testing.assert_array_equal(r[k], w[k], err_msg=k)


def test_cityscapes_tfds_label_mapping(tmp_path, monkeypatch):
  """TFDS cityscapes stores labelIds; they map to the 19 trainIds."""
  import tensorflow_datasets as tfds
  label_ids = np.array([[7, 8, 11, 0], [26, 33, 255, 23]], np.uint8)[..., None]
  example = {"image_left": np.zeros((2, 4, 3), np.uint8), "segmentation_label": label_ids}
  monkeypatch.setattr(tfds, "data_source", lambda name, split, data_dir: [example])
  src = datasets.get_dataset("cityscapes_19", "val", root=str(tmp_path), source="tfds")
  np.testing.assert_array_equal(src[0]["label"], [[0, 1, 2, 255], [13, 18, 255, 10]])


def test_wrong_names(tmp_path):
  with pytest.raises(KeyError, match="unknown dataset 'ade150'.*ade20k_150"):
    datasets.get_dataset("ade150", "val", root=str(tmp_path))
  with pytest.raises(KeyError, match="unknown split 'validation'"):
    datasets.get_dataset("ade20k_150", "validation", root=str(tmp_path))
  with pytest.raises(DataError, match="ADEChallengeData2016/images/validation: dataset folder not found"):
    datasets.get_dataset("ade20k_150", "val", root=str(tmp_path))
