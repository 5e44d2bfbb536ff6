"""img2dataset webdataset shards (SimZSS's data format) read directly: shard lists with brace
ranges, one record per image–caption pair, exact resume of the grain loader after a kill, and bad
shards (truncated tar, missing caption, undecodable image) named one line each and counted."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from input_pipeline import loader
from input_pipeline import webdataset as wds
from input_pipeline.captions import caption_transforms
from input_pipeline.files import DataError
from input_pipeline.mappers import Mapper

CAPTIONS = ["a red ball on the grass", "a tree under the blue sky", "a brown box on the road",
            "the sea and the sand", "a brick wall behind a ball", "the sun over the water"]


def _jpeg(value, size=(24, 32)):
  buf = io.BytesIO()
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shards(root, shards=3, per_shard=4, skip=()):
  """img2dataset's webdataset layout: root/NNNNN.tar with KEY.jpg, KEY.txt, KEY.json per sample
  (KEY = shard and index, 9 digits), plus the shard's NNNNN_stats.json beside it. `skip`: (key,
  ext) members left out."""
  os.makedirs(root, exist_ok=True)
  n = 0
  for s in range(shards):
    with tarfile.open(os.path.join(root, f"{s:05d}.tar"), "w") as tar:
      for i in range(per_shard):
        key = f"{s:05d}{i:04d}"
        caption = CAPTIONS[n % len(CAPTIONS)]
        members = {"jpg": _jpeg(20 * n % 250), "txt": caption.encode(),
                   "json": json.dumps({"key": key, "caption": caption, "status": "success"}).encode()}
        for ext, data in members.items():
          if (key, ext) not in skip:
            _add(tar, f"{key}.{ext}", data)
        n += 1
    with open(os.path.join(root, f"{s:05d}_stats.json"), "w") as f:
      json.dump({"count": per_shard, "successes": per_shard}, f)
  return os.path.join(root, "{00000..%05d}.tar" % (shards - 1))


def test_shard_lists_and_keys():
  assert wds.expand_shards("d/{00008..00011}.tar") == [f"d/{i:05d}.tar" for i in range(8, 12)]
  assert wds.expand_shards("a/{1,2}/x{0..1}.tar::b.tar") == ["a/1/x0.tar", "a/1/x1.tar", "a/2/x0.tar",
                                                              "a/2/x1.tar", "b.tar"]
  assert wds.split_key("dir/000012.JPG") == ("dir/000012", "jpg")
  assert wds.split_key("000012.tensor_concept_indices.pyd") == ("000012", "tensor_concept_indices.pyd")


def test_records_are_image_caption_pairs(tmp_path):
  src = wds.WebDatasetSource(write_shards(str(tmp_path)))
  assert len(src) == 12 and not src.problems and len(src.shards) == 3
  for i in (0, 5, 11):
    rec = src[i]
    assert rec["captions"] == [CAPTIONS[i % len(CAPTIONS)]]
    assert rec["image"].shape == (24, 32, 3) and abs(int(rec["image"][5, 5, 0]) - 20 * i % 250) <= 2
    assert rec["file_name"].endswith(f"{i // 4:05d}.tar#{i // 4:05d}{i % 4:04d}.jpg")


def test_loader_resumes_exactly_after_a_kill(tmp_path):
  spec = write_shards(str(tmp_path))
  ops = caption_transforms(28, (0.9, 1.0))
  make = lambda: iter(loader.make_train_loader(wds.WebDatasetSource(spec), 4, Mapper(ops), seed=1,
                                               shard_index=0, shard_count=1))
  it = make()
  batches = [next(it) for _ in range(7)]  # over two epochs
  it = make()
  next(it), next(it), next(it)
  state = it.get_state()
  del it  # killed; a new process indexes the shards again and restores the iterator state
  resumed = make()
  resumed.set_state(state)
  for k in range(3, 7):
    got = next(resumed)
    for key in batches[0]:
      np.testing.assert_array_equal(got[key], batches[k][key])
  assert {tuple(t) for t in batches[0]["text_ids"]} != {tuple(t) for t in batches[1]["text_ids"]}


def json_member_blocks(root):
  """Bytes of sample 0's KEY.json payload in shard 0, padded to tar blocks."""
  with tarfile.open(os.path.join(root, "00001.tar")) as tar:  # same sizes as shard 0's (untouched)
    return -(-tar.getmember("000010000.json").size // 512) * 512


def test_bad_shards_are_named_and_counted(tmp_path, caplog):
  root = str(tmp_path)
  spec = write_shards(root, skip={("000010001", "txt"), ("000020002", "jpg")})
  with open(os.path.join(root, "00000.tar"), "r+b") as f:  # cut shard 0 inside sample 1's first header
    first = 3 * 512 + sum(-(-len(m) // 512) * 512 for m in (_jpeg(0), b"a red ball on the grass"))
    f.truncate(first + json_member_blocks(root) + 200)
  with tarfile.open(os.path.join(root, "00003.tar"), "w") as tar:  # an undecodable image
    _add(tar, "000030000.jpg", b"not a jpeg at all")
    _add(tar, "000030000.txt", b"a ball")
  spec = spec.replace("00002}", "00003}")
  with pytest.raises(DataError, match=r"3 problem\(s\) in 4 shard\(s\), first: .*00000.tar: truncated"):
    wds.WebDatasetSource(spec)
  caplog.clear()
  src = wds.WebDatasetSource(spec, skip_bad=True)
  assert len(src.problems) == 3
  assert "00000.tar: truncated" in src.problems[0]
  assert "00001.tar: sample 000010001: no caption" in src.problems[1]
  assert "00002.tar: sample 000020002: no image" in src.problems[2]
  assert sum("webdataset: " in r.getMessage() for r in caplog.records) >= 3
  # Shard 0 keeps the sample before the cut; shards 1, 2 lose one sample each; shard 3 has one.
  assert len(src) == 1 + 3 + 3 + 1
  assert src[len(src) - 1] is None and src.skips.count == 1  # undecodable: skipped, counted
  assert "00003.tar#000030000.jpg" in src.skips.messages[0]
  strict = wds.WebDatasetSource(spec.replace("{00000..00003}", "00003"))
  with pytest.raises(DataError, match="00003.tar#000030000.jpg"):
    strict[0]


def test_missing_shard_and_empty_list(tmp_path):
  with pytest.raises(DataError, match="cannot open shard"):
    wds.WebDatasetSource(str(tmp_path / "{00000..00001}.tar"))
  with pytest.raises(DataError, match="names no shard"):
    wds.WebDatasetSource("::")


def _recording_step(batches, sigterm_at=None):
  """Keeps each step's batch and the state unchanged (no compilation); SIGTERM during a step."""
  import signal
  import jax.numpy as jnp

  def step(state, batch, context):
    batches.append({k: np.asarray(v) for k, v in batch.items()})
    if len(batches) == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    one = jnp.float32(1.0)
    return state, {"loss": one, "grad_norm": one, "finite": jnp.bool_(True)}
  return step


def test_simzss_trains_on_shards_and_resumes_exactly_after_a_kill(tmp_path):
  """The recipe's data path (captions="webdataset") through the shared trainer: a run killed
  (SIGTERM) at step 2 and restarted sees exactly the batches of an uninterrupted run."""
  from ovs_jax.trainer import Run
  from test_simzss import tiny_config
  config = tiny_config()
  config.data.update(captions="webdataset", shards=write_shards(str(tmp_path / "shards")))
  config.train.update(steps=5, ckpt_every=0, log_every=0)
  config.evals = {}
  whole = []
  run = Run(config, tmp_path / "whole")
  run.train_step = _recording_step(whole)
  assert run.train()["step"] == 5
  before, after = [], []
  run = Run(config, tmp_path / "killed")
  run.train_step = _recording_step(before, sigterm_at=2)
  assert run.train()["preempted"] is True
  run = Run(config, tmp_path / "killed")
  run.train_step = _recording_step(after)
  assert run.train()["step"] == 5
  assert len(before) == 2 and len(after) == 3
  for got, want in zip(before + after, whole):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
