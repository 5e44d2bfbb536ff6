"""COCO Captions (SimZSS's data): the folder layout and its ArrayRecord preparation give the same
records; bad input is a DataError naming the file (skipped with skip_bad); the grain loader's
batches have SimZSS's shapes, split across hosts as one global batch, and resume exactly."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline import captions as cap
from input_pipeline import loader
from input_pipeline.concepts import ConceptMatcher, load_bank
from input_pipeline.demo import write_coco_captions
from input_pipeline.files import DataError
from input_pipeline.mappers import Mapper
from input_pipeline.transforms import RandomResizedCrop
from ovs_jax.preprocess import CLIP_MEAN, CLIP_STD
from ovs_jax.tokenizer import tokenize

CAPTIONS = [["a red ball on the grass", "a ball", "grass and a ball"],
            ["a tree under the blue sky", "the sky above a tree"],
            ["a brown box on the road", "a box"],
            ["the sea and the sand", "a beach"],
            ["a wall", "a brick wall behind a ball"],
            ["the sun over the water", "sunshine on the lake"]]


def _coco(root, n=6, size=(40, 56)):
  """A COCO Captions folder of n coloured images with CAPTIONS."""
  images = []
  os.makedirs(root, exist_ok=True)
  for i in range(n):
    path = os.path.join(root, f"src{i}.png")
    Image.fromarray(np.full((*size, 3), 30 * i, np.uint8)).save(path)
    images.append((f"{i:012d}.png", path, CAPTIONS[i % len(CAPTIONS)]))
  write_coco_captions(root, "train", images)
  return root


def _annotations(root):
  return os.path.join(root, "annotations", "captions_train2017.json")


def test_folder_layout_records(tmp_path):
  src = cap.caption_source("coco", "train", root=_coco(str(tmp_path)))
  assert len(src) == 6 and src.meta.kind == "captions"
  rec = src[1]
  assert rec["image"].shape == (40, 56, 3) and rec["image"].dtype == np.uint8 and rec["image"][0, 0, 0] == 30
  assert rec["captions"] == CAPTIONS[1] and rec["file_name"].endswith("train2017/000000000001.png")


def test_prepared_shards_equal_the_folder(tmp_path):
  root, out = _coco(str(tmp_path / "coco")), str(tmp_path / "prepared")
  assert cap.main(["prepare", "--root", root, "--split", "train", "--out", out, "--num_shards", "2"]) == 0
  folder = cap.caption_source("coco", "train", root=root, source="folder")
  prepared = cap.caption_source("coco", "train", root=out)  # auto: the manifest is there
  assert isinstance(prepared, cap.PreparedCaptions) and len(prepared) == len(folder)
  for i in range(len(folder)):
    a, b = folder[i], prepared[i]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["captions"] == b["captions"] and a["file_name"] == b["file_name"]


@pytest.mark.parametrize("damage,message", [
    (lambda root: os.remove(_annotations(root)), "caption annotations not found"),
    (lambda root: open(_annotations(root), "w").write('{"images": [1, '), "invalid JSON"),
    (lambda root: open(_annotations(root), "w").write('{"images": []}'), "lists 'images' and 'annotations'"),
    (lambda root: open(_annotations(root), "w").write(
        '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 7, "caption": "x"}]}'),
     r"annotations\[0\] needs the 'image_id' of a listed image"),
])
def test_broken_annotation_files_are_named(tmp_path, damage, message):
  root = _coco(str(tmp_path))
  damage(root)
  with pytest.raises(DataError, match=message) as e:
    cap.caption_source("coco", "train", root=root, skip_bad=True)  # a broken index is never skipped
  assert _annotations(root) in str(e.value)


def test_missing_image_and_empty_caption_are_named_and_skipped(tmp_path):
  root = _coco(str(tmp_path))
  os.remove(os.path.join(root, "train2017", "000000000002.png"))
  with open(_annotations(root)) as f:
    data = json.load(f)
  next(a for a in data["annotations"] if a["image_id"] == 4)["caption"] = "  "
  with open(_annotations(root), "w") as f:
    json.dump(data, f)
  src = cap.caption_source("coco", "train", root=root)
  with pytest.raises(DataError, match=r"000000000002.png: cannot read file"):
    src[2]
  with pytest.raises(DataError, match=r"captions_train2017.json \(image id 4, .*\): caption 0 is empty"):
    src[4]
  lenient = cap.caption_source("coco", "train", root=root, skip_bad=True)
  assert lenient[2] is None and lenient[4] is None and lenient.skips.count == 2
  # Training replaces a skipped record by the next good one: full batches, no bad record.
  it = iter(loader.make_train_loader(lenient, 6, Mapper(cap.caption_transforms(32)), shuffle=False,
                                     shard_index=0, shard_count=1))
  assert next(it)["image"].shape == (6, 32, 32, 3)


def test_random_resized_crop_box_is_torchvision_s():
  crop, rng = RandomResizedCrop((8, 8), (0.9, 1.0)), np.random.default_rng(0)
  for _ in range(50):
    top, left, ch, cw = crop.box(100, 120, rng)
    assert 0 <= top <= 100 - ch and 0 <= left <= 120 - cw
    assert 0.88 <= ch * cw / 12000 <= 1.0 and 3 / 4 <= cw / ch <= 4 / 3 + 0.02
  # 10 failed draws (no 90% box of aspect ≤ 4/3 fits 60×200): centre crop at the nearest ratio.
  assert crop.box(60, 200, rng) == (0, 60, 60, 80)


def test_batches_hosts_resume_and_a_caption_per_epoch(tmp_path):
  src = cap.caption_source("coco", "train", root=_coco(str(tmp_path)))
  ops = cap.caption_transforms(32, (0.9, 1.0))
  make = lambda **kw: iter(loader.make_train_loader(src, 4, Mapper(ops), seed=3, **kw))
  it = make(shard_index=0, shard_count=1)
  batches = [next(it) for _ in range(6)]  # 4 epochs of 6 records
  b = batches[0]
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
      "image": ((4, 32, 32, 3), np.float32), "text_ids": ((4, 77), np.int32),
      "concept_ids": ((4, 32), np.int32), "concept_starts": ((4, 32), np.int32),
      "concept_ends": ((4, 32), np.int32)}
  # CLIP normalisation: a uniform grey image is (v/255 - mean)/std everywhere.
  grey = (np.unique(b["image"][..., 0]) * CLIP_STD[0] + CLIP_MEAN[0]) * 255
  assert np.all(np.abs(grey - np.round(grey)) < 1e-3)
  # Every text is one of its image's captions, with that caption's concepts.
  texts = {tuple(tokenize(c)[0]): c for cs in CAPTIONS for c in cs}
  matcher = ConceptMatcher(load_bank())
  drawn = []
  for batch in batches:
    for ids, cid in zip(batch["text_ids"], batch["concept_ids"]):
      assert tuple(ids) in texts
      np.testing.assert_array_equal(cid, matcher(ids[None])["concept_ids"][0])
      drawn.append(texts[tuple(ids)])
  # Image 0 appears once per epoch; its caption is drawn again each time (3 captions, 4 epochs).
  per_image = [c for c in drawn if c in CAPTIONS[0]]
  assert len(per_image) == 4 and len(set(per_image)) > 1
  # Two hosts: their local batches side by side are the one-host global batch.
  hosts = [make(shard_index=i, shard_count=2) for i in range(2)]
  for k in range(3):
    parts = [next(h) for h in hosts]
    for key in b:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batches[k][key])
  # Exact resume: the state after 2 batches gives batches 3.. in a new iterator.
  it = make(shard_index=0, shard_count=1)
  next(it), next(it)
  state = it.get_state()
  resumed = make(shard_index=0, shard_count=1)
  resumed.set_state(state)
  for k in range(2, 6):
    got = next(resumed)
    for key in b:
      np.testing.assert_array_equal(got[key], batches[k][key])
