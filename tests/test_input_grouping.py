"""Orientation-grouped global batches on planned canvases: one orientation per batch, canvases that
fit every image and are multiples of the bucket, identical for any host count."""
import numpy as np

from input_pipeline import grouping, loader
from input_pipeline.source import DatasetMeta, Source


def _orientations(hws):
  return {"landscape" if w > h else "portrait" for h, w in hws}


def test_plan_window_groups_orientations_and_bounds_canvases():
  rng = np.random.default_rng(0)
  hws = np.stack([rng.integers(10, 100, 64), rng.integers(10, 100, 64)], 1)
  bound = lambda hw: (hw[0] // 2 + 1, hw[1] // 2 + 1)
  order, canvases = grouping.plan_window(hws, 8, bound, 32, np.random.default_rng(1))
  assert sorted(order) == list(range(64))
  batches = order.reshape(8, 8)
  assert sum(len(_orientations(hws[b])) > 1 for b in batches) <= 1  # only at the boundary
  for b, canvas in zip(batches, canvases):
    need = np.max([bound(hw) for hw in hws[b]], 0)
    assert (canvas % 32 == 0).all() and (canvas >= need).all() and (canvas - need < 32).all()


class _Mixed(Source):
  """In-memory records of mixed sizes and orientations; label = the record's id everywhere."""

  def __init__(self, n=16):
    super().__init__(DatasetMeta("mixed", "train", "demo", 32))
    rng = np.random.default_rng(3)
    self.hws = [(int(rng.integers(20, 40)), int(rng.integers(41, 60)))[::1 if i % 3 else -1]
                for i in range(n)]

  def __len__(self):
    return len(self.hws)

  def raw(self, index):  # no file bytes: image_hw falls back to decoding
    h, w = self.hws[index]
    return {"image": np.full((h, w, 3), 7 * index % 256, np.uint8),
            "label": np.full((h, w), index, np.uint8), "file_name": f"r{index}"}

  def decode(self, raw):
    return raw


def test_loader_batches_one_orientation_with_canvases_equal_for_any_host_count():
  src = _Mixed()
  kw = dict(min_size=(24,), max_size=48, num_masks=2, num_epochs=2, seed=4, group_window=2)
  one = list(loader.make_train_loader(src, 4, shard_index=0, shard_count=1, **kw))
  assert len(one) == 8
  mixed, ids = 0, []
  for b in one:
    ids += b["label"][:, 0, 0].tolist()
    hws = b["image_hw"]
    mixed += len(_orientations(hws)) > 1
    canvas = np.array(b["image"].shape[1:3])
    # The short side is fixed (24), so the planned canvas is exactly detectron2's: the largest
    # image rounded up to 32. Padding: 0 after normalisation, ignore in the label.
    np.testing.assert_array_equal(canvas, -(-hws.max(0) // 32) * 32)
    for img, lab, (h, w) in zip(b["image"], b["label"], hws):
      assert (img[h:] == 0).all() and (img[:, w:] == 0).all() and (img[:h, :w] != 0).any()
      assert (lab[h:] == 255).all() and (lab[:, w:] == 255).all() and (lab[:h, :w] != 255).all()
  assert mixed <= 4  # at most one per window of 2 batches
  assert sorted(ids[:16]) == sorted(ids[16:]) == list(range(16))  # each epoch covers the split
  # Two hosts: host i reads the i-th half of every global batch; the batches are the same.
  hosts = [list(loader.make_train_loader(src, 4, shard_index=i, shard_count=2, **kw)) for i in range(2)]
  for step, b in enumerate(one):
    for k in b:
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][k], hosts[1][step][k]]), b[k], err_msg=k)
