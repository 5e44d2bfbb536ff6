"""The mask head end to end: gradient flow on a tiny config, and the cdt_vitb sizes by eval_shape."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax.heads.cosine_classifier import CosineClassifier
from ovs_jax.heads.feature_pyramid import SimpleFeaturePyramid
from ovs_jax.heads.mask_former import MaskFormerHead, prediction_sets


class _Model(nnx.Module):
  """ViT map -> pyramid -> head -> cosine classifier, as MAFT+'s in-vocabulary branch composes it."""

  def __init__(self, vit_dim, embed_dim, rngs, **head_kw):
    self.pyramid = SimpleFeaturePyramid(vit_dim, head_kw.get('hidden_dim', 256), rngs=rngs)
    self.head = MaskFormerHead(self.pyramid.channels(head_kw.get('hidden_dim', 256)), rngs=rngs,
                               **head_kw)
    self.classifier = CosineClassifier(head_kw.get('hidden_dim', 256), embed_dim, rngs=rngs)

  def __call__(self, vit_map, text_classifier):
    return self.head(self.pyramid(vit_map), classify=lambda s, _: self.classifier(s['class_features'], text_classifier))


TINY = dict(num_queries=6, hidden_dim=32, mask_dim=16, enc_layers=1, enc_ffn_dim=32, dec_layers=3,
            dec_ffn_dim=32, num_heads=4, num_points=2)


@pytest.mark.slow  # one fwd+bwd compile of the whole head: ~25 s on 2 idle cores
def test_gradients_reach_every_parameter():
  model = _Model(16, 12, nnx.Rngs(0), **TINY)
  rng = np.random.default_rng(0)
  vit_map = rng.normal(size=(2, 4, 4, 16)).astype(np.float32)  # a 64×64 image at stride 16
  text = rng.normal(size=(5, 12)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  graphdef, params = nnx.split(model, nnx.Param)
  # Zero-initialised kernels (deformable offsets/weights) block some gradients at step 0 exactly
  # as in Mask2Former; perturb all parameters to test the wiring of a trained-like state.
  params = jax.tree.map(lambda p: np.asarray(p) + 0.02 * rng.normal(size=p.shape).astype(np.float32),
                        params)
  # A random linear read-out of every prediction set (deep supervision) stands in for the loss,
  # which tests/test_loss_mask.py covers; it keeps this compile small.
  out_shapes = nnx.eval_shape(lambda m: m(vit_map, text), model)
  readout = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), out_shapes)

  def loss_fn(params):
    out = nnx.merge(graphdef, params)(vit_map, text)
    assert len(prediction_sets(out)) == TINY['dec_layers'] + 1
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(readout)))

  grads = jax.jit(jax.grad(loss_fn))(params)
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g) != 0)]
  assert not dead, f'parameters with an all-zero gradient: {dead}'


def _expected_cdt_vitb_params(d=512, c=256, q=100, enc=6, dec=9, heads=8, levels=3, points=4,
                              enc_ffn=1024, dec_ffn=2048):
  """Parameter count re-derived layer by layer from the architecture description."""
  conv = lambda k, i, o, bias=True: k * k * i * o + (o if bias else 0)
  norm = lambda n: 2 * n
  pyramid = (conv(2, d, d // 2) + norm(d // 2) + conv(2, d // 2, d // 4) + conv(2, d, d // 2)
             + sum(conv(1, i, c, False) for i in (d // 4, d // 2, d, d))
             + 4 * conv(3, c, c, False) + 8 * norm(c))
  deform = (conv(1, c, heads * levels * points * 2) + conv(1, c, heads * levels * points)
            + 2 * conv(1, c, c))
  encoder_layer = deform + conv(1, c, enc_ffn) + conv(1, enc_ffn, c) + 2 * norm(c)
  pixel_decoder = (levels * (conv(1, c, c) + norm(c)) + levels * c + enc * encoder_layer
                   + conv(1, c, c, False) + norm(c) + conv(3, c, c, False) + norm(c) + conv(1, c, c))
  decoder_layer = 2 * 4 * conv(1, c, c) + conv(1, c, dec_ffn) + conv(1, dec_ffn, c) + 3 * norm(c)
  decoder = 2 * q * c + levels * c + dec * decoder_layer + norm(c) + 3 * conv(1, c, c)
  return pyramid, pixel_decoder + decoder


def test_cdt_vitb_head_shapes_and_parameter_count():
  b, image = 2, 640
  pyramid = nnx.eval_shape(lambda: SimpleFeaturePyramid(512, 256, rngs=nnx.Rngs(0)))
  head = nnx.eval_shape(lambda: MaskFormerHead(SimpleFeaturePyramid.channels(256),
                                               rngs=nnx.Rngs(0)))
  count = lambda m: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  expect_pyramid, expect_head = _expected_cdt_vitb_params()
  assert count(pyramid) == expect_pyramid
  assert count(head) == expect_head

  vit_map = jax.ShapeDtypeStruct((b, image // 16, image // 16, 512), jnp.float32)
  features = nnx.eval_shape(lambda m, x: m(x), pyramid, vit_map)
  assert {k: v.shape[1:3] for k, v in features.items()} == {
      'res2': (160, 160), 'res3': (80, 80), 'res4': (40, 40), 'res5': (20, 20)}
  out = nnx.eval_shape(lambda m, f: m(f), head, features)
  assert out['class_features'].shape == (b, 100, 256)
  assert out['pred_masks'].shape == (b, 100, image // 4, image // 4)
  assert len(out['aux']) == 9
  assert all(s['pred_masks'].shape == (b, 100, 160, 160) for s in out['aux'])
