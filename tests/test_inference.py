"""Whole-image and sliding-window inference, the resize to label size, and bucketing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clip_helpers import ours_from_hf, random_hf_clip, small_hf_config
from ovs_jax.inference import batching, engine, windows
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.methods.maskclip import maskclip_model


def test_scores_to_labels_matches_torch_bilinear_then_argmax():
  rng = np.random.default_rng(0)
  canvas, in_hw = (24, 32), np.array([[20, 31], [9, 14], [24, 32]], np.int32)
  out_hw = np.array([[37, 50], [9, 7], [13, 64]], np.int32)  # up, mixed, down/up
  scores = rng.normal(size=(3, *canvas, 5)).astype(np.float32)
  got = np.asarray(windows.scores_to_labels(jnp.asarray(scores), jnp.asarray(in_hw),
                                            jnp.asarray(out_hw), (40, 64), row_chunk=8))
  for i, ((h, w), (ho, wo)) in enumerate(zip(in_hw, out_hw)):
    t = torch.from_numpy(scores[i, :h, :w]).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(t, size=(ho, wo), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(got[i, :ho, :wo], ref[0].argmax(0).numpy())
    assert (got[i, ho:] == 0).all() and (got[i, :, wo:] == 0).all()


def test_overlap_averaging_on_a_constructed_example():
  """Each window scores its own mean pixel value; a pixel gets the mean over its windows."""
  def apply(params, pixels, valid):
    del params
    m = jnp.sum(pixels[..., :1] * valid[..., None], (1, 2, 3)) / jnp.sum(valid, (1, 2))
    return jnp.broadcast_to(m[:, None, None, None], pixels.shape[:3] + (1,))

  window, stride, canvas = 4, 3, (12, 12)
  hw = np.array([[10, 12], [4, 7], [3, 3]], np.int32)  # needs 3x4, 1x2 and 1x1 windows
  rng = np.random.default_rng(1)
  pixels = np.zeros((3, *canvas, 3), np.float32)
  for i, (h, w) in enumerate(hw):
    pixels[i, :h, :w] = rng.normal(size=(h, w, 3))
  got = np.asarray(windows.sliding_window_scores(apply, None, jnp.asarray(pixels), jnp.asarray(hw),
                                                 window, stride))[..., 0]
  for i, (h, w) in enumerate(hw):
    def starts(n):  # mmseg: y1 = i*stride, y2 = min(y1 + window, n), y1 = max(y2 - window, 0)
      k = max(n - window + stride - 1, 0) // stride + 1
      return [max(min(j * stride + window, n) - window, 0) for j in range(k)]
    total, count = np.zeros(canvas), np.zeros(canvas)
    for y in starts(h):
      for x in starts(w):
        region = pixels[i, y:y + window, x:x + window, 0][:h - y, :w - x]  # valid part only
        total[y:y + window, x:x + window] += region.mean()
        count[y:y + window, x:x + window] += 1
    np.testing.assert_allclose(got[i, :h, :w], (total / np.maximum(count, 1))[:h, :w], rtol=1e-5)
  assert windows.num_windows(12, window, stride) == 4


@pytest.fixture(scope="module")
def tiny_maskclip():
  clip = ours_from_hf(random_hf_clip(small_hf_config()))
  return maskclip_model(clip, [["cat"], ["dog", "puppy"], ["sky"]], templates=("{}",))


def test_sliding_window_equals_whole_image_when_the_window_covers_it(tiny_maskclip):
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in [(64, 48), (40, 64), (64, 64)]]
  labels = [np.zeros((h + 5, w + 3), np.uint8) for h, w in [(64, 48), (40, 64), (64, 64)]]
  outs = {}
  for mode in ("whole", "slide"):
    cfg = InferenceConfig(mode=mode, window=64, stride=32, bucket=64, label_bucket=32)
    b = batching.pad_batch({"image": np.array(images, object), "label": np.array(labels, object)},
                           cfg, 255)
    assert b["image"].shape == (3, 64, 64, 3) and b["label"].shape == (3, 96, 96)
    scores = jax.jit(lambda p, im, hw, cfg=cfg: engine.class_scores(tiny_maskclip, cfg, p, im, hw))(
        tiny_maskclip.params, b["image"], b["image_hw"])
    labels_fn = engine.make_label_fn(tiny_maskclip, cfg)
    outs[mode] = scores, labels_fn(tiny_maskclip.params, b["image"], b["image_hw"], b["orig_hw"], (96, 96))
  np.testing.assert_allclose(outs["whole"][0], outs["slide"][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(outs["whole"][1], outs["slide"][1])


def test_images_of_different_sizes_share_one_compilation(tiny_maskclip):
  cfg = InferenceConfig(mode="slide", short_side=48, window=32, stride=16, bucket=32, label_bucket=64)
  fn = engine.make_label_fn(tiny_maskclip, cfg)
  rng = np.random.default_rng(3)
  for h, w in [(50, 60), (60, 50), (64, 40), (33, 63)]:  # all fit the 64x96-ish buckets below
    size = batching.inference_size((h, w), 48, None)
    img = batching.resize_image(rng.integers(0, 256, (h, w, 3), np.uint8), size)
    b = batching.pad_batch({"image": [img], "label": [np.zeros((h, w), np.uint8)]}, cfg, 255)
    b["image"] = np.pad(b["image"], ((0, 0), (0, 96 - b["image"].shape[1]), (0, 96 - b["image"].shape[2]), (0, 0)))
    out = fn(tiny_maskclip.params, b["image"], b["image_hw"], b["orig_hw"], (64, 64))
    assert out.shape == (1, 64, 64) and int(out[0, h:].max(initial=0)) == 0
  assert fn._cache_size() == 1


def test_config_errors_are_named(tiny_maskclip):
  with pytest.raises(ValueError, match="mode 'tiles'"):
    InferenceConfig(mode="tiles")
  with pytest.raises(ValueError, match="window=40 is not a multiple of the model's input multiple 16"):
    engine.make_label_fn(tiny_maskclip, InferenceConfig(mode="slide", window=40, stride=20, bucket=32))


def test_padding_is_the_mean_colour_and_defaults_are_the_test_protocol():
  """detectron2's ImageList pads the normalised image with 0; MAFT+ tests at 800/1333, one image
  per GPU."""
  import ml_collections
  from configs.cdt_vitb import get_config
  from ovs_jax import preprocess
  from ovs_jax.inference.segmentation_model import SegmentationModel
  cfg = InferenceConfig()
  assert (cfg.mode, cfg.short_side, cfg.max_size) == ("whole", 800, 1333)
  assert batching.inference_size((480, 640), cfg.short_side, cfg.max_size) == (800, 1067)
  assert batching.inference_size((200, 1000), cfg.short_side, cfg.max_size) == (267, 1333)
  probe = SegmentationModel("probe", lambda params, pixels, valid: pixels, None, ["a", "b", "c"], 32)
  cfg = cfg.for_model(probe.input_multiple)
  image = np.random.default_rng(4).integers(0, 256, (20, 30, 3), np.uint8)
  b = batching.pad_batch({"image": [image]}, cfg, 255)
  seen = np.asarray(engine.class_scores(probe, cfg, None, jnp.asarray(b["image"]), jnp.asarray(b["image_hw"])))
  assert seen.shape == (1, 32, 32, 3)
  np.testing.assert_allclose(seen[0, :20, :30], preprocess.normalize(image), atol=1e-5)
  assert (seen[0, 20:] == 0).all() and (seen[0, :, 30:] == 0).all()
  val = get_config().evals.val  # the recipe's evaluator: the test protocol, one image per device
  assert (val.short_side, val.max_size, val.batch_size) == (800, 1333, 0)
  assert (get_config("demo").evals.val.short_side, get_config("demo").evals.val.batch_size) == (128, 8)
