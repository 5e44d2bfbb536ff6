"""Our CLIP equals transformers' PyTorch CLIPModel on the same random weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from clip_helpers import nhwc, ours_from_hf, random_hf_clip, random_inputs, small_hf_config
from ovs_jax.models import clip_config


def _outputs(model, pixels, ids):
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, pixels, ids):
    m = nnx.merge(graphdef, state)
    return m.get_image_features(pixels), m.get_text_features(ids), m(pixels, ids)
  return [np.asarray(x) for x in run(state, jnp.asarray(nhwc(pixels)), jnp.asarray(ids))]


def _reference(hf, pixels, ids, **kw):
  """Unnormalised image and text embeddings and the logits, from transformers."""
  px, ids = torch.tensor(pixels), torch.tensor(ids)
  with torch.no_grad():
    return [hf.get_image_features(pixel_values=px, **kw).pooler_output,
            hf.get_text_features(input_ids=ids).pooler_output,
            hf(input_ids=ids, pixel_values=px, **kw).logits_per_image]


def _close(ours, ref, tol=1e-4):
  for a, b in zip(ours, ref):
    b = b.numpy()
    np.testing.assert_allclose(a, b, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def vit_b16():
  cfg = transformers.CLIPConfig(**{k: v for k, v in clip_config.to_hf_dict(
      clip_config.get_preset("vit_b16")).items() if k != "architectures"})
  hf = random_hf_clip(cfg)
  return hf, ours_from_hf(hf)


@pytest.mark.slow
def test_full_size_vit_b16_matches_transformers(vit_b16):
  hf, ours = vit_b16
  pixels, ids = random_inputs(batch=2, size=224, seq=77)
  ref = _reference(hf, pixels, ids)
  _close(_outputs(ours, pixels, ids), ref)


@pytest.mark.slow
def test_full_size_interpolated_position_embeddings(vit_b16):
  hf, ours = vit_b16
  pixels, ids = random_inputs(batch=1, size=(288, 240), seq=16, seed=1)
  ref = _reference(hf, pixels, ids, interpolate_pos_encoding=True)
  _close(_outputs(ours, pixels, ids), ref)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_small_config_matches_for_each_activation(act):
  hf = random_hf_clip(small_hf_config(act=act))
  ours = ours_from_hf(hf)
  pixels, ids = random_inputs()
  _close(_outputs(ours, pixels, ids), _reference(hf, pixels, ids), tol=1e-5)


def test_dense_and_maskclip_features_match_a_torch_derivation():
  hf = random_hf_clip(small_hf_config())
  ours = ours_from_hf(hf)
  pixels, _ = random_inputs(batch=2, size=(64, 80))
  with torch.no_grad():
    vm = hf.vision_model
    out = vm(pixel_values=torch.tensor(pixels), output_hidden_states=True, interpolate_pos_encoding=True)
    head = lambda t: hf.visual_projection(vm.post_layernorm(t))
    dense_ref = head(out.last_hidden_state[:, 1:]).reshape(2, 4, 5, -1).numpy()
    # MaskCLIP: the last block with attention replaced by each token's own value.
    x, last = out.hidden_states[-2], vm.encoder.layers[-1]
    x = x + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))
    x = x + last.mlp(last.layer_norm2(x))
    maskclip_ref = head(x[:, 1:]).reshape(2, 4, 5, -1).numpy()
  px = jnp.asarray(nhwc(pixels))
  np.testing.assert_allclose(np.asarray(ours.dense_features(px)), dense_ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ours.dense_features(px, maskclip=True)), maskclip_ref, atol=1e-5)


def test_scan_and_remat_give_the_same_outputs_and_bf16_stays_close():
  hf = random_hf_clip(small_hf_config(layers=3))
  pixels, ids = random_inputs()
  plain = _outputs(ours_from_hf(hf), pixels, ids)
  for kw in (dict(scan=True, remat=True), dict(remat=True)):
    for a, b in zip(plain, _outputs(ours_from_hf(hf, **kw), pixels, ids)):
      np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(kw))
  remat_maskclip = ours_from_hf(hf, remat=True).dense_features(jnp.asarray(nhwc(pixels)), maskclip=True)
  scanned_maskclip = ours_from_hf(hf, scan=True).dense_features(jnp.asarray(nhwc(pixels)), maskclip=True)
  plain_maskclip = ours_from_hf(hf).dense_features(jnp.asarray(nhwc(pixels)), maskclip=True)
  np.testing.assert_allclose(scanned_maskclip, plain_maskclip, atol=1e-6)
  np.testing.assert_allclose(remat_maskclip, plain_maskclip, atol=1e-6)
  bf16 = _outputs(ours_from_hf(hf, dtype=jnp.bfloat16), pixels, ids)
  for a, b in zip(plain[:2], bf16[:2]):
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99, cos


def test_gradients_flow_through_scanned_remat_towers():
  hf = random_hf_clip(small_hf_config(layers=2))
  pixels, ids = random_inputs()
  grads = {}
  for name, kw in (("plain", {}), ("scan+remat", dict(scan=True, remat=True)), ("remat", dict(remat=True))):
    graphdef, state = nnx.split(ours_from_hf(hf, **kw))

    def loss(state):
      return nnx.merge(graphdef, state)(jnp.asarray(nhwc(pixels)), jnp.asarray(ids)).sum()
    grads[name] = jax.grad(loss)(state)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["scan+remat"])]
  assert all(n > 0 for n in norms)
  for a, b in zip(jax.tree.leaves(grads["plain"]), jax.tree.leaves(grads["remat"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
