"""Loaders: exact resume from saved iterator state, disjoint host shards, padded eval, global batches."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from input_pipeline import demo, loader, transforms as T
from ovs_jax.inference.batching import ResizeForEval

SMALL = dict(num_train=12, num_val=5, hw=(40, 48))
TRAIN_KW = dict(min_size=(32, 36), max_size=48, num_masks=4, seed=3)  # the default mapper


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("demo"))
  demo.demo_root(path, **SMALL)
  return path


def _train(cache, **kw):
  src = demo.demo_dataset("train", cache_dir=cache, **SMALL)
  return loader.make_train_loader(src, 4, shard_index=0, shard_count=1, **TRAIN_KW, **kw)


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


_RESUME = """
import json, sys
import numpy as np
from input_pipeline import demo, loader
if __name__ == "__main__":
  cache, state_file, out = sys.argv[1:]
  src = demo.demo_dataset("train", cache_dir=cache, **{small})
  it = iter(loader.make_train_loader(src, 4, shard_index=0, shard_count=1, worker_count=1, **{kw}))
  with open(state_file) as f:
    it.set_state(json.load(f))
  batches = [next(it) for _ in range(3)]
  np.savez(out, **{{f"{{i}}/{{k}}": v for i, b in enumerate(batches) for k, v in b.items()}})
  it.close()
"""


def test_resume_in_a_new_process(cache, tmp_path):
  it = iter(_train(cache, worker_count=1))
  for _ in range(4):  # 4 batches of 4 > one 12-record epoch
    next(it)
  with open(tmp_path / "state.json", "w") as f:
    json.dump(it.get_state(), f)
  want = [next(it) for _ in range(3)]
  it.close()
  script = tmp_path / "resume.py"
  script.write_text(textwrap.dedent(_RESUME.format(small=SMALL, kw=TRAIN_KW)))
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, str(script), cache, str(tmp_path / "state.json"),
                  str(tmp_path / "out.npz")], check=True, env=env, timeout=120)
  got = np.load(tmp_path / "out.npz")
  _assert_batches_equal(want, [{k: got[f"{i}/{k}"] for k in want[0]} for i in range(3)])


def test_batches_do_not_depend_on_worker_count(cache):
  it0, it1 = iter(_train(cache)), iter(_train(cache, worker_count=1))
  a, b = [next(it0) for _ in range(4)], [next(it1) for _ in range(4)]
  it1.close()
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["image"], a[3]["image"])  # epoch 2 is reshuffled and re-augmented


def test_hosts_get_disjoint_shards_covering_the_split(cache):
  src = demo.demo_dataset("train", cache_dir=cache, **SMALL)
  names = []
  for host in range(2):
    ds = loader.make_train_loader(src, 4, [T.SelectKeys(["file_name"])], num_epochs=1, seed=5,
                                  shard_index=host, shard_count=2)
    names.append([n for b in ds for n in b["file_name"]])
  assert len(names[0]) == len(names[1]) == 6 and not set(names[0]) & set(names[1])
  assert sorted(names[0] + names[1]) == sorted(p[0] for p in src.pairs)


def test_eval_hosts_padded_and_covering(cache):
  src = demo.demo_dataset("val", cache_dir=cache, **SMALL)  # 5 records, 2 hosts x 2 per step
  seen = []
  for host in range(2):
    batches = list(loader.make_eval_loader(src, 4, [ResizeForEval(32, 32)], shard_index=host,
                                           shard_count=2))
    assert len(batches) == 2  # every host runs the same number of steps
    for b in batches:  # resized images, labels at their original size
      assert b["image"].shape == (2, 27, 32, 3) and b["label"].shape == (2, 40, 48)
      seen += [n for n, v in zip(b["file_name"], b["valid"]) if v]
  assert sorted(seen) == sorted(p[0] for p in src.pairs)
  with pytest.raises(ValueError, match="global_batch_size 5 is not divisible by the 2 hosts"):
    loader.make_eval_loader(src, 5, [ResizeForEval(32, 32)], shard_index=0, shard_count=2)


def test_global_batch_and_device_prefetch_state(cache, tmp_path):
  import jax
  import grain
  from input_pipeline import global_batch
  mesh = jax.make_mesh((jax.device_count(), 1), ("data", "fsdp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharding = global_batch.batch_sharding(mesh)
  src = demo.demo_dataset("train", cache_dir=cache, **SMALL)
  make = lambda: loader.make_train_loader(src, 8, shard_index=0, shard_count=1,
                                          transforms=[T.SelectKeys(["image", "label", "file_name"])])
  pf = global_batch.DevicePrefetcher(iter(make()), sharding, size=2)
  dev, host = next(pf)
  assert dev["image"].shape == (8, 40, 48, 3) and dev["image"].sharding == sharding
  assert len(dev["image"].addressable_shards) == jax.device_count() and host["file_name"].shape == (8,)
  next(pf)
  handler = grain.checkpoint.CheckpointHandler()  # what orbax calls inside CheckpointManager
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(pf))
  want = next(pf)
  pf2 = global_batch.DevicePrefetcher(iter(make()), sharding, size=2)
  handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(pf2))
  got = next(pf2)
  for k in ("image", "label"):
    np.testing.assert_array_equal(np.asarray(got[0][k]), np.asarray(want[0][k]))
  assert list(got[1]["file_name"]) == list(want[1]["file_name"])


def test_default_shard_follows_jax_process(monkeypatch, cache):
  import jax
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  src = demo.demo_dataset("val", cache_dir=cache, **SMALL)
  batches = list(loader.make_eval_loader(src, 4, [T.SelectKeys(["file_name"])]))
  # Host 1 of 2 takes padded records 1, 3, 5, 7 (5 and 7 are padding).
  assert [n for b in batches for n in b["file_name"]][:2] == [src.pairs[1][0], src.pairs[3][0]]
  assert [v for b in batches for v in b["valid"]] == [True, True, False, False]


def test_panoptic_training_batches(tmp_path):
  from input_pipeline import datasets, synthetic
  synthetic.write_fake_split("coco_panoptic_133", str(tmp_path), "train", num=4, hw=(20, 24))
  src = datasets.get_dataset("coco_panoptic_133", "train", root=str(tmp_path))
  b = next(iter(loader.make_train_loader(src, 2, min_size=(16,), num_masks=5, shard_index=0,
                                         shard_count=1)))
  assert b["masks"].shape == (2, 5, 32, 32) and b["pan_seg"].shape == (2, 32, 32)
  assert (b["image_hw"] == [16, 19]).all() and (b["pan_seg"][:, 16:] == 0).all()  # void padding
  assert not b["masks"][:, :, 16:].any() and not b["masks"][:, :, :, 19:].any()
  for i in range(2):  # each valid mask is exactly its segment, labelled with its class
    for m, c, sid, v in zip(b["masks"][i], b["mask_classes"][i], b["mask_ids"][i], b["mask_valid"][i]):
      if v:
        np.testing.assert_array_equal(m, b["pan_seg"][i] == sid)
        assert (b["label"][i][m] == c).all()
    assert b["mask_valid"][i].sum() <= 2  # the third segment of every fake image is crowd
