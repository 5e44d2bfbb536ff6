"""Masked attention: a query reads only inside its predicted mask, and everywhere when it is empty."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ovs_jax.heads.transformer_decoder import masked_cross_attention_mask
from ovs_jax.layers import MultiHeadAttention as Attention

H, W, C = 4, 6, 8


def _setup():
  attn = Attention(C, 2, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  logits = np.full((1, 3, 2 * H, 2 * W), -5.0, np.float32)  # predictions at twice the level size
  logits[0, 0, :4, :6] = 5.0  # query 0: top-left quarter
  logits[0, 1, 4:, 2:] = 5.0  # query 1: a bottom block; query 2: empty
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(1, 3, C)).astype(np.float32)
  memory = rng.normal(size=(1, H * W, C)).astype(np.float32)
  return attn, logits, queries, memory


def test_mask_is_the_resized_prediction_and_empty_rows_attend_everywhere():
  _, logits, _, _ = _setup()
  attend = np.asarray(masked_cross_attention_mask(logits, H, W))[0, 0].reshape(3, H, W)
  expect0 = np.zeros((H, W), bool)
  expect0[:2, :3] = True
  np.testing.assert_array_equal(attend[0], expect0)
  assert attend[1, 2:, 1:].all() and not attend[1, :2].any()
  assert attend[2].all()


def test_query_attends_only_inside_its_mask():
  attn, logits, queries, memory = _setup()
  attend = masked_cross_attention_mask(logits, H, W)
  run = jax.jit(lambda mem: attn(queries, mem, mem, attend))
  base = np.asarray(run(memory))
  inside0 = np.asarray(attend)[0, 0, 0]
  outside = memory.copy()
  outside[0, ~inside0] += 10.0
  changed = np.asarray(run(outside))
  np.testing.assert_allclose(changed[0, 0], base[0, 0], atol=1e-5)  # query 0 blind outside
  assert np.abs(changed[0, 2] - base[0, 2]).max() > 1e-2  # empty-mask query sees everything
  inside = memory.copy()
  inside[0, inside0] += 10.0
  assert np.abs(np.asarray(run(inside))[0, 0] - base[0, 0]).max() > 1e-2
  # The empty-mask query equals unmasked attention.
  free = np.asarray(attn(queries, memory, memory))
  np.testing.assert_allclose(base[0, 2], free[0, 2], atol=1e-5)
