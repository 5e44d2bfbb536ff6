"""Head remat (`remat=True`): the same outputs and gradients as without it, in less memory."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.heads.feature_pyramid import SimpleFeaturePyramid
from ovs_jax.heads.mask_former import MaskFormerHead
from ovs_jax.heads.pixel_decoder import MSDeformAttnPixelDecoder

DIM = 32
TINY = dict(conv_dim=DIM, mask_dim=16, num_layers=3, ffn_dim=48, num_heads=4, num_points=2)


def _decoder(remat):
  return MSDeformAttnPixelDecoder(SimpleFeaturePyramid.channels(DIM), remat=remat, rngs=nnx.Rngs(0),
                                  **TINY)


def _features(size):
  """Pyramid levels of a (size·4)² image, random."""
  rng = np.random.default_rng(1)
  return {k: rng.normal(size=(2, size // s, size // s, DIM)).astype(np.float32)
          for k, s in (('res2', 1), ('res3', 2), ('res4', 4), ('res5', 8))}


def _loss(graphdef):
  """A fixed random read-out of both outputs (mask features and every encoder level)."""
  def loss(params, features):
    mask_features, outs = nnx.merge(graphdef, params)(features)
    return sum(jnp.sum(jnp.sin(3.0 * x)) for x in (mask_features, *outs))
  return loss


def test_remat_gives_the_same_outputs_and_gradients():
  features = _features(16)
  plain, rematted = _decoder(False), _decoder(True)
  graphdef, params = nnx.split(plain, nnx.Param)
  rgraphdef, rparams = nnx.split(rematted, nnx.Param)
  # Trained-like parameters: the zero-initialised deformable offsets/weights would hide wiring bugs.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.normal(size=p.shape).astype(np.float32),
                        params)
  assert jax.tree.structure(params) == jax.tree.structure(rparams)  # same tree, one entry per layer

  out = nnx.merge(graphdef, params)(features)
  rout = nnx.merge(rgraphdef, params)(features)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), out, rout)

  grad = jax.jit(jax.grad(_loss(graphdef), argnums=(0, 1)))(params, features)
  rgrad = jax.jit(jax.grad(_loss(rgraphdef), argnums=(0, 1)))(params, features)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad, rgrad)
  per_layer = [np.abs(np.asarray(g.self_attn.value_proj.kernel)).sum() for g in grad[0]['layers'].values()]
  assert all(v > 0 for v in per_layer)  # every encoder layer is reached, not only the stack's last


def test_remat_lowers_the_backward_pass_memory():
  # Without remat the backward pass keeps every layer's deformable-attention samples; with it, one
  # layer's at a time. A Python-loop `nnx.remat` would fail here on XLA:CPU (see ops/remat.py).
  features = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _features(16))

  def temp_bytes(remat):
    graphdef, params = nnx.split(_decoder(remat), nnx.Param)
    compiled = jax.jit(jax.grad(_loss(graphdef))).lower(params, features).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes(True) < 0.6 * temp_bytes(False)


def test_mask_former_head_threads_remat_to_the_pixel_decoder():
  head = nnx.eval_shape(lambda: MaskFormerHead(SimpleFeaturePyramid.channels(DIM), hidden_dim=DIM,
                                               remat=True, rngs=nnx.Rngs(0)))
  assert head.pixel_decoder.remat


def test_maft_plus_with_remat_has_the_same_loss_and_gradients(tmp_path):
  """`config.model.remat` (CLIP layers + pixel decoder) on the whole MAFT+ training loss."""
  import sys
  import os
  sys.path.insert(0, os.path.dirname(__file__))
  from trainer_helpers import tiny_config
  from ovs_jax.methods import maft_plus
  from ovs_jax.trainer import Run
  run = Run(tiny_config(model__enc_layers=2, model__dtype="float32"), tmp_path)
  batch, _ = next(run.data)
  text, index = run.context
  state = (run.state["params"], run.state["frozen"])
  remat_model = maft_plus.METHOD.build_model(tiny_config(model__enc_layers=2, model__dtype="float32",
                                                  model__remat=True))
  results = []
  for model in (nnx.merge(run.graphdef, *state), remat_model):
    nnx.update(model, *state)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
      return maft_plus.loss_fn(nnx.merge(graphdef, params, rest), batch, jax.random.PRNGKey(0), text,
                               index, run.config.loss)[0]
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  (l0, g0), (l1, g1) = results
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-3, atol=1e-5)
