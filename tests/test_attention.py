"""Every attention implementation (ops/attention.py) against a plain einsum-softmax reference: values
and gradients of q, k, v, with no mask, causal, boolean (masked-attention) and key-padding masks, odd
lengths, float32 (1e-5) and bfloat16 (2e-2). "pallas" is JAX's TPU flash-attention kernel run in
Pallas TPU interpret mode on the CPU; "cudnn" needs a CUDA GPU and is skipped without one.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax import layers
from ovs_jax.ops import attention

GPU = jax.default_backend() == "gpu"
NO_GPU = "cuDNN flash attention needs a CUDA GPU; this machine has none (its selection logic is tested below)"
B, LQ, LK, H, D = 2, 37, 150, 2, 16  # odd lengths; 150 keys = two of the Pallas kernel's 128-key blocks
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def reference(q, k, v, mask=None, causal=False):
  """softmax(q kᵀ/√D) v in float32 with masked logits at a large negative number."""
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(q.shape[-1])
  if mask is not None:
    s = jnp.where(mask, s, -1e30)
  if causal:
    s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -1e30)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v, precision="highest")


def make_inputs(dtype, lq=LQ, lk=LK, seed=0):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.standard_normal((B, n, H, D)), dtype) for n in (lq, lk, lk))
  return q, k, v


def make_mask(kind, lq=LQ, lk=LK, seed=1):
  r = np.random.default_rng(seed)
  if kind == "boolean":  # Mask2Former's masked attention: per query, shared by the heads
    m = r.random((B, 1, lq, lk)) > 0.6
    m[..., 0] = True  # every query keeps a key (the decoder's empty-mask rule)
    return jnp.asarray(m)
  if kind == "padding":  # key padding: the second image has only 101 real tokens
    lengths = np.array([lk, 101])
    return jnp.asarray(np.arange(lk)[None, None, None, :] < lengths[:, None, None, None])
  return None


def check(impl, dtype, kind, lq=LQ, lk=LK):
  q, k, v = make_inputs(dtype, lq, lk)
  mask, causal = make_mask(kind, lq, lk), kind == "causal"
  ours = lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, is_causal=causal, impl=impl)
  ref = lambda q, k, v: reference(q, k, v, mask, causal)
  tol = TOL[dtype]
  want = ref(q, k, v)
  np.testing.assert_allclose(np.asarray(jax.jit(ours)(q, k, v), np.float32), want, atol=tol, rtol=tol)
  # A fixed random cotangent: every output element reaches the gradients.
  w = jnp.asarray(np.random.default_rng(2).standard_normal(want.shape), jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w)
  got_g = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  want_g = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", got_g, want_g):
    scale = max(1.0, float(jnp.abs(b).max()))  # gradients grow with the sequence: compare relative to it
    np.testing.assert_allclose(np.asarray(a, np.float32) / scale, np.asarray(b) / scale,
                               atol=tol, rtol=tol, err_msg=f"d{name}")


KINDS = ("none", "causal", "boolean", "padding")
DTYPES = (jnp.float32, jnp.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "bf16"))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", ("xla", "chunked"))
def test_xla_and_chunked_equal_reference(impl, kind, dtype, monkeypatch):
  # 16-row blocks: 37 queries run as three blocks, the last one padded.
  monkeypatch.setattr(attention, "CPU_CHUNK", 16)
  check(impl, dtype, kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "bf16"))
@pytest.mark.parametrize("kind", KINDS)
def test_pallas_tpu_kernel_in_interpret_mode_equals_reference(kind, dtype):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "interpret mode (slow)"
    check("pallas", dtype, kind)


@pytest.mark.skipif(not GPU, reason=NO_GPU)
@pytest.mark.parametrize("kind", ("none", "causal", "boolean"))
def test_cudnn_equals_reference(kind):
  check("cudnn", jnp.bfloat16, kind, lq=38, lk=150)  # cuDNN with a mask needs even lengths


@pytest.mark.parametrize("impl", ("xla", "chunked", "pallas"))
def test_query_with_no_key_allowed_gets_the_mean_value(impl):
  q, k, v = make_inputs(jnp.float32)
  mask = np.ones((B, 1, LQ, LK), bool)
  mask[:, :, 5] = False
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = attention.dot_product_attention(q, k, v, mask=jnp.asarray(mask), impl=impl)
  np.testing.assert_allclose(out[:, 5], jnp.mean(v, axis=1), atol=1e-5)


def test_multi_head_attention_splits_heads_and_takes_masks_of_any_rank():
  q, k, v = make_inputs(jnp.float32)
  merge = lambda x: x.reshape(x.shape[0], x.shape[1], H * D)
  shared = make_mask("boolean")[0, 0]  # (Lq, Lk): one mask for every image and head
  got = attention.multi_head_attention(merge(q), merge(k), merge(v), H, mask=shared, impl="chunked")
  np.testing.assert_allclose(got, merge(reference(q, k, v, shared)), atol=1e-5)


def test_auto_picks_chunked_for_long_sequences_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU rule")
  long = jnp.zeros((1, 1024, 2, 8))
  short = jnp.zeros((1, 77, 2, 8))
  assert attention.select_implementation(long, long, None) == "chunked"
  assert attention.select_implementation(short, short, None) == "xla"
  assert attention.select_implementation(long, long, None, "xla") == "xla"


def test_cudnn_selection_rules(monkeypatch):
  bf16 = jnp.zeros((2, 64, 4, 64), jnp.bfloat16)
  assert attention._cudnn_unsupported(bf16, bf16, None, "gpu") == ""
  assert "bfloat16 or float16" in attention._cudnn_unsupported(bf16.astype(jnp.float32), bf16, None, "gpu")
  assert "head dim" in attention._cudnn_unsupported(jnp.zeros((2, 64, 4, 100), jnp.bfloat16),
                                                    jnp.zeros((2, 64, 4, 100), jnp.bfloat16), None, "gpu")
  odd = jnp.zeros((2, 63, 4, 64), jnp.bfloat16)
  assert "even" in attention._cudnn_unsupported(odd, odd, jnp.ones((1, 1, 63, 63), bool), "gpu")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert attention.select_implementation(bf16, bf16, None) == "cudnn"
  assert attention.select_implementation(bf16.astype(jnp.float32), bf16, None) == "xla"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  long = jnp.zeros((1, 1024, 2, 128), jnp.bfloat16)
  assert attention.select_implementation(long, long, None) == "pallas"
  assert attention.select_implementation(bf16, bf16, None) == "xla"


@pytest.mark.skipif(GPU, reason="checks the error off GPU")
def test_errors_name_the_problem():
  q, k, v = make_inputs(jnp.bfloat16)
  with pytest.raises(ValueError, match="'cudnn' cannot run here: it needs a CUDA GPU"):
    attention.dot_product_attention(q, k, v, impl="cudnn")
  with pytest.raises(ValueError, match="expected one of"):
    attention.dot_product_attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="must be boolean"):
    attention.dot_product_attention(q, k, v, mask=jnp.ones((B, 1, LQ, LK)))
  with pytest.raises(ValueError, match=r"config.model.attention='fast'"):
    layers.set_attention(layers.MultiHeadAttention(8, 2, dtype=jnp.float32, rngs=nnx.Rngs(0)), "fast")


def test_set_attention_reaches_every_attention_of_a_model_and_keeps_its_output():
  from ovs_jax.models import clip, clip_config
  cfg = clip_config.get_preset("tiny")
  model = clip.CLIP(cfg, rngs=nnx.Rngs(0))
  px = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)), jnp.float32)
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 1000, (2, 12)))
  want, want_text = model.get_image_features(px), model.get_text_features(ids)  # text: causal
  layers.set_attention(model, "chunked")
  impls = {m.attention_impl for _, m in nnx.iter_graph(model) if hasattr(m, "attention_impl")}
  assert impls == {"chunked"}
  np.testing.assert_allclose(model.get_image_features(px), want, atol=1e-5)
  np.testing.assert_allclose(model.get_text_features(ids), want_text, atol=1e-5)
