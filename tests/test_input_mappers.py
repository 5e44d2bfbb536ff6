"""The official MAFT+ train mapper (mask_former_semantic) against detectron2's formulas."""
import numpy as np
import pytest

from input_pipeline import mappers, transforms as T
from input_pipeline.source import DatasetMeta


class _Src:
  meta = DatasetMeta("x", "train", "demo", 10)
  ignore_label = 255


def _d2_output_shape(h, w, short, max_size):
  """detectron2 ResizeShortestEdge.get_output_shape, re-derived: scale the short side to `short`,
  then shrink both sides if the long one passes max_size; round half up."""
  scale = short / min(h, w)
  new = [h * scale, w * scale]
  new[int(h >= w)] = float(short)  # detectron2 sets the short side exactly (h == w: the width)
  if max(new) > max_size:
    s = max_size / max(new)
    new = [v * s for v in new]
  return tuple(int(np.floor(v + 0.5)) for v in new)


@pytest.mark.parametrize("hw,short,max_size,want", [
    ((480, 640), 800, 1333, (800, 1067)),    # COCO landscape
    ((640, 480), 800, 1333, (1067, 800)),    # portrait
    ((512, 683), 800, 1333, (800, 1067)),    # ADE
    ((200, 1000), 800, 1333, (267, 1333)),   # 1:5 panorama: the max-size cap decides
    ((500, 500), 800, 1333, (800, 800)),
    ((2, 3), 1, 1333, (1, 2)),               # 1.5 rounds half up (Python round() would give 2 too)
    ((2, 5), 1, 1333, (1, 3)),               # 2.5 -> 3 (round() would give 2)
])
def test_shortest_edge_size_is_detectron2s(hw, short, max_size, want):
  assert T.shortest_edge_size(hw, short, max_size) == want == _d2_output_shape(*hw, short, max_size)


def test_shortest_edge_size_on_many_shapes():
  rng = np.random.default_rng(0)
  for h, w, short in zip(rng.integers(1, 3000, 300), rng.integers(1, 3000, 300), rng.integers(1, 1200, 300)):
    assert T.shortest_edge_size((h, w), short, 1333) == _d2_output_shape(h, w, short, 1333)


def test_short_side_sampling():
  el = {"image": np.zeros((30, 40, 3), np.uint8)}
  rng = np.random.default_rng(0)
  choice = T.ResizeShortestEdge((10, 20), 1000, "choice")
  assert {choice.random_map(el, rng)["image"].shape[0] for _ in range(40)} == {10, 20}
  span = T.ResizeShortestEdge((10, 14), 1000, "range")
  assert {span.random_map(el, rng)["image"].shape[0] for _ in range(80)} == set(range(10, 15))
  with pytest.raises(ValueError, match="sample_style 'range' with sizes \\(10, 12, 14\\)"):
    T.ResizeShortestEdge((10, 12, 14), 1000, "range")


def _apply(ops, el, rng):
  for op in ops:
    el = op.random_map(el, rng) if hasattr(op, "random_map") else op.map(el)
  return el


def _record(h=20, w=30):
  label = np.kron(np.arange(6).reshape(2, 3) % 5, np.ones((h // 2, w // 3), np.int64)).astype(np.uint8)
  image = np.stack([label * 40, np.tile(np.arange(w, dtype=np.uint8) * 8, (h, 1)), 255 - label], -1)
  return {"image": image, "label": label, "file_name": "x.png"}


def test_mask_former_semantic_resize_flip_and_pad_after_normalisation():
  m = mappers.mask_former_semantic(_Src, min_size=(16,), max_size=20, num_masks=6)
  el = _record()                                      # 20x30 -> short 16 -> 16x24 -> cap 20: 13x20
  hw = T.shortest_edge_size((20, 30), 16, 20)
  assert hw == (13, 20) and m.size_bound((20, 30)) == hw
  resized = T.resize(el, hw)
  rng, flips = np.random.default_rng(0), []
  for _ in range(40):
    out = _apply(m.ops, dict(el, canvas_hw=np.array([32, 32])), rng)
    h, w = out["image_hw"]
    assert (h, w) == hw and out["image"].shape == (32, 32, 3) and out["image"].dtype == np.float32
    flipped = not np.array_equal(out["label"][:h, :w], resized["label"])
    flips.append(flipped)
    want = resized["label"][:, ::-1] if flipped else resized["label"]
    np.testing.assert_array_equal(out["label"][:h, :w], want)
    img = T.Normalize().map({"image": resized["image"][:, ::-1] if flipped else resized["image"]})["image"]
    np.testing.assert_allclose(out["image"][:h, :w], img, atol=1e-6)
    assert (out["image"][h:] == 0).all() and (out["image"][:, w:] == 0).all()   # mean colour
    assert (out["label"][h:] == 255).all() and (out["label"][:, w:] == 255).all()
    valid = out["mask_valid"]
    assert not out["masks"][:, h:].any() and not out["masks"][:, :, w:].any()  # targets 0 there
    np.testing.assert_array_equal(out["masks"][valid].sum(0)[:h, :w], 1)  # they tile the image
  assert 10 < sum(flips) < 30                           # p = 0.5


def test_mask_former_semantic_crop_and_config():
  import ml_collections
  from configs.cdt_vitb import get_config
  d = get_config().data
  assert (d.train_mapper, tuple(d.min_size_train), d.min_size_train_sampling, d.max_size_train,
          d.crop_enabled, d.train_bucket) == ("mask_former_semantic", (800,), "choice", 1333, False, 32)
  m = mappers.from_config(_Src, d, with_masks=False)
  assert m.size_bound((480, 640)) == (800, 1067) and not any(isinstance(o, T.RandomCrop) for o in m.ops)
  d = ml_collections.ConfigDict(dict(d, crop_enabled=True, crop_size=512))
  m = mappers.from_config(_Src, d, with_masks=False)
  assert m.size_bound((480, 640)) == (512, 512) and m.size_bound((100, 640)) == (208, 512)
  assert get_config("demo").data.train_mapper == "lsj" and mappers.from_config(
      _Src, get_config("demo").data, False).size_bound is None
  with pytest.raises(ValueError, match="train mapper 'nope'; expected one of"):
    mappers.build("nope", _Src)
