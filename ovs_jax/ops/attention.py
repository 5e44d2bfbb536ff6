"""The one attention kernel of the library (CLIP and DINOv2 towers, Mask2Former decoder, CDT, the
ResNet attention pool), implemented per backend and shape.

  "xla"      `jax.nn.dot_product_attention(implementation="xla")`: materialises the (Lq, Lk) logits.
  "chunked"  query blocks with a flash-style custom VJP (below): never holds more than one block's
             logits and saves only q, k, v, the output and the log-sum-exp for the backward pass.
  "cudnn"    `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN flash attention (GPU,
             bf16/fp16, head dim a multiple of 8 up to 128).
  "pallas"   JAX's Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu`); on other
             backends it runs in Pallas interpret mode (slow: for tests and debugging only).
  "auto"     CPU: "chunked" from `CPU_CHUNKED_MIN_LOGITS` logits per head, else "xla" (the crossover
             is measured by `benchmarks/attention.py`, docs/benchmarks.md); GPU: "cudnn" where
             cuDNN takes the shapes, dtypes and mask, else "xla"; TPU: "pallas" from
             `TPU_PALLAS_MIN_KV` keys, else "xla".

Every path takes the same masks: a boolean `mask` broadcastable to (B, heads, Lq, Lk) (True = may
attend: padding, Mask2Former's masked attention) and `is_causal` (query i sees keys j <= i). A query
row with no key allowed gets the plain mean of the values on every path (the logits all equal one
large negative number), as `jax.nn.dot_product_attention` does; its gradient is that of "xla" on
every path but "pallas" (an additive bias there). The decoders never produce such rows (an empty
predicted mask attends everywhere).
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "xla", "chunked", "cudnn", "pallas")
# Smallest Lq·Lk per head from which "auto" uses "chunked" on CPU (measured crossover, docs/benchmarks.md).
CPU_CHUNKED_MIN_LOGITS = 128 * 128
CPU_CHUNK = 128  # query rows per block on CPU (64–512 measured, docs/benchmarks.md)
# Smallest key length from which "auto" uses the Pallas kernel on TPU: below it the 128-row blocks are
# mostly padding. Not measured on TPU hardware (none was available).
TPU_PALLAS_MIN_KV = 512
_PALLAS_BLOCK = 128  # the kernel's minimum block (its m/l scratch is 128 lanes wide)
# Masked logits: finite, so a fully masked row softmaxes to the mean, not NaN (the Pallas kernel's value).
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def multi_head_attention(q, k, v, num_heads: int, *, mask=None, is_causal: bool = False,
                         impl: str = "auto"):
  """q (B, Lq, C), k and v (B, Lk, C) -> (B, Lq, C), heads split and merged here.

  mask: bool, broadcastable to (B, heads, Lq, Lk), True = may attend; is_causal: token i sees j <= i;
  impl: one of `IMPLS`.
  """
  b, lq, c = q.shape
  if c % num_heads:
    raise ValueError(f"attention width {c} is not divisible by num_heads={num_heads}")
  split = lambda x: x.reshape(*x.shape[:2], num_heads, c // num_heads)
  out = dot_product_attention(split(q), split(k), split(v), mask=mask, is_causal=is_causal, impl=impl)
  return out.reshape(b, lq, c)


def dot_product_attention(q, k, v, *, mask=None, is_causal: bool = False, impl: str = "auto"):
  """softmax(q kᵀ / √D) v per head: q (B, Lq, H, D), k and v (B, Lk, H, D) -> (B, Lq, H, D)."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention expects q (B, Lq, H, D) and k, v (B, Lk, H, D); got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}")
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_ or mask.ndim > 4:
      raise ValueError(f"attention mask must be boolean and broadcastable to (B, heads, Lq, Lk) = "
                       f"{(q.shape[0], q.shape[2], q.shape[1], k.shape[1])}; got {mask.dtype} {mask.shape}")
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    jnp.broadcast_shapes(mask.shape, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
  impl = select_implementation(q, k, mask, impl)
  if impl == "xla":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="xla")
  if impl == "cudnn":
    if mask is not None:  # cuDNN takes the mask as a dense bias of the whole (Lq, Lk) plane
      mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="cudnn")
  t = lambda x: x.transpose(0, 2, 1, 3)  # (B, H, L, D): batch dims leading for the kernels' matmuls
  if impl == "pallas":
    return t(_pallas_flash(t(q), t(k), t(v), mask, is_causal))
  return t(chunked_attention(t(q), t(k), t(v), mask, is_causal=is_causal))


def select_implementation(q, k, mask, impl: str = "auto") -> str:
  """The implementation `impl` resolves to for these inputs on the default backend (see module doc).
  A forced "cudnn" that cuDNN cannot run raises a ValueError saying why."""
  if impl not in IMPLS:
    raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLS}")
  backend = jax.default_backend()
  if impl == "cudnn":
    why = _cudnn_unsupported(q, k, mask, backend)
    if why:
      raise ValueError(f"attention implementation 'cudnn' cannot run here: {why}; use 'auto' or 'xla'")
    return impl
  if impl != "auto":
    return impl
  lq, lk = q.shape[1], k.shape[1]
  if backend == "cpu":
    return "chunked" if lq * lk >= CPU_CHUNKED_MIN_LOGITS else "xla"
  if backend == "gpu":
    return "xla" if _cudnn_unsupported(q, k, mask, backend) else "cudnn"
  if backend == "tpu":
    return "pallas" if lk >= TPU_PALLAS_MIN_KV else "xla"
  return "xla"


def _cudnn_unsupported(q, k, mask, backend) -> str:
  """Why cuDNN flash attention cannot take these inputs ('' if it can); the limits
  `jax._src.cudnn.fused_attention_stablehlo` checks."""
  if backend != "gpu":
    return f"it needs a CUDA GPU, the backend is {backend}"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"it needs bfloat16 or float16 inputs, got {q.dtype}"
  d = q.shape[-1]
  if d % 8 or d > 128:
    return f"it needs a head dim that is a multiple of 8 and at most 128, got {d}"
  if mask is not None and (q.shape[1] % 2 or k.shape[1] % 2):
    return f"with a mask it needs even sequence lengths, got Lq {q.shape[1]}, Lk {k.shape[1]}"
  return ""


# ---- chunked (CPU) ----

def chunked_attention(q, k, v, mask=None, *, is_causal: bool = False, chunk: int | None = None):
  """q (B, H, Lq, D), k and v (B, H, Lk, D), mask broadcastable to (B, H, Lq, Lk) -> (B, H, Lq, D).

  The queries run in blocks of `chunk` rows (one scan step each), so only a (B, H, chunk, Lk) block of
  logits is ever live; XLA:CPU's plain attention writes and re-reads the whole (B, H, Lq, Lk) tensor
  several times (logits, softmax, its saved copy for the backward pass), which is what made it
  4.6x slower than PyTorch's fused CPU kernel at 1,601 tokens.
  """
  lq = q.shape[2]
  chunk = min(chunk or CPU_CHUNK, lq)
  n = -(-lq // chunk)
  pad = n * chunk - lq
  if mask is not None and mask.shape[2] == lq and pad:
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
  q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else q
  out = _chunked(q, k, v, mask, is_causal, chunk)
  return out[:, :, :lq] if pad else out


def _blocks(x, chunk, axis=2):
  """(..., n·chunk, ...) along `axis` -> (n, ..., chunk, ...): the scan's leading axis."""
  shape = x.shape[:axis] + (x.shape[axis] // chunk, chunk) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis=2):
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _mask_blocks(mask, chunk, n):
  """Per-block mask slices for the scan (None: no mask; a row-broadcast mask is shared, not sliced)."""
  if mask is None or mask.shape[2] == 1:
    return None
  return _blocks(mask, chunk)


def _block_logits(q_blk, k, mask_blk, is_causal, start):
  """Scaled logits (B, H, chunk, Lk) in float32 with masked entries at _MASK_VALUE."""
  s = jnp.einsum("bhqd,bhkd->bhqk", q_blk, k, preferred_element_type=jnp.float32)
  s = s * (1.0 / np.sqrt(q_blk.shape[-1]))
  if mask_blk is not None:
    s = jnp.where(mask_blk, s, _MASK_VALUE)
  if is_causal:
    rows = start + jnp.arange(q_blk.shape[2])[:, None]
    s = jnp.where(jnp.arange(k.shape[2])[None, :] <= rows, s, _MASK_VALUE)
  return s


def _chunked_fwd_impl(q, k, v, mask, is_causal, chunk):
  n = q.shape[2] // chunk
  shared = mask if (mask is not None and mask.shape[2] == 1) else None

  def body(_, xs):
    i, q_blk, m_blk = xs
    s = _block_logits(q_blk, k, m_blk if shared is None else shared, is_causal, i * chunk)
    mx = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - mx)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return None, ((o / l).astype(q.dtype), (mx + jnp.log(l))[..., 0])

  _, (o, lse) = jax.lax.scan(body, None, (jnp.arange(n), _blocks(q, chunk), _mask_blocks(mask, chunk, n)))
  return _unblocks(o), _unblocks(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked(q, k, v, mask, is_causal, chunk):
  return _chunked_fwd_impl(q, k, v, mask, is_causal, chunk)[0]


def _chunked_fwd(q, k, v, mask, is_causal, chunk):
  o, lse = _chunked_fwd_impl(q, k, v, mask, is_causal, chunk)
  return o, (q, k, v, mask, o, lse)


def _chunked_bwd(is_causal, chunk, res, do):
  """Flash attention's backward pass per query block: P = exp(S - lse) recomputed,
  dS = P ∘ (dP - rowsum(dO ∘ O)); dK and dV accumulate over the blocks in float32."""
  q, k, v, mask, o, lse = res
  n = q.shape[2] // chunk
  shared = mask if (mask is not None and mask.shape[2] == 1) else None
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
  scale = 1.0 / np.sqrt(q.shape[-1])

  def body(carry, xs):
    dk, dv = carry
    i, q_blk, do_blk, lse_blk, delta_blk, m_blk = xs
    s = _block_logits(q_blk, k, m_blk if shared is None else shared, is_causal, i * chunk)
    p = jnp.exp(s - lse_blk[..., None])
    dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p.astype(do.dtype), do_blk, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bhqd,bhkd->bhqk", do_blk, v, preferred_element_type=jnp.float32)
    # Masked logits are constants: no gradient (matters only in a row with no key allowed).
    ds = jnp.where(s > _MASK_VALUE, p * (dp - delta_blk[..., None]) * scale, 0.0).astype(q.dtype)
    dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k, preferred_element_type=jnp.float32)
    dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, q_blk, preferred_element_type=jnp.float32)
    return (dk, dv), dq.astype(q.dtype)

  zeros = jnp.zeros(k.shape, jnp.float32)
  xs = (jnp.arange(n), _blocks(q, chunk), _blocks(do, chunk), _blocks(lse, chunk),
        _blocks(delta, chunk), _mask_blocks(mask, chunk, n))
  (dk, dv), dq = jax.lax.scan(body, (zeros, zeros), xs)
  return _unblocks(dq), dk.astype(k.dtype), dv.astype(v.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ---- Pallas (TPU) ----

def _pallas_flash(q, k, v, mask, is_causal):
  """q (B, H, Lq, D), k and v (B, H, Lk, D) through JAX's Pallas TPU flash-attention kernel.

  Both lengths are padded to its 128-row blocks; padded keys are cut off by segment ids (real tokens
  are segment 1, padding 0), and a boolean mask becomes its additive bias `ab` (a constant: no
  gradient flows into it).
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  b, h, lq, d = q.shape
  lk = k.shape[2]
  pq, pk = -lq % _PALLAS_BLOCK, -lk % _PALLAS_BLOCK
  pad = lambda x, p: jnp.pad(x, ((0, 0), (0, 0), (0, p), (0, 0))) if p else x
  q, k, v = pad(q, pq), pad(k, pk), pad(v, pk)
  segments = None
  if pq or pk:
    seg = lambda length, p: jnp.broadcast_to((jnp.arange(length + p) < length).astype(jnp.int32), (b, length + p))
    segments = fa.SegmentIds(q=seg(lq, pq), kv=seg(lk, pk))
  ab = None
  if mask is not None:
    bias = jnp.where(jnp.broadcast_to(mask, (b, h, lq, lk)), 0.0, _MASK_VALUE).astype(jnp.float32)
    ab = jax.lax.stop_gradient(jnp.pad(bias, ((0, 0), (0, 0), (0, pq), (0, pk))))
  blk = _PALLAS_BLOCK
  sizes = fa.BlockSizes(block_q=blk, block_k_major=blk, block_k=blk, block_b=1, block_q_major_dkv=blk,
                        block_k_major_dkv=blk, block_k_dkv=blk, block_q_dkv=blk, block_k_major_dq=blk,
                        block_k_dq=blk, block_q_dq=blk)
  run = functools.partial(fa.flash_attention, causal=is_causal, sm_scale=1.0 / float(np.sqrt(d)),
                          block_sizes=sizes)
  if jax.default_backend() == "tpu":
    out = run(q, k, v, ab, segments)
  else:
    warnings.warn("attention 'pallas' off TPU runs the TPU kernel in Pallas interpret mode (slow)",
                  stacklevel=3)
    out = _interpreted(run, q, k, v, ab, segments)
  return out[:, :, :lq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _interpreted(run, q, k, v, ab, segments):
  """`run` traced in TPU interpret mode, its backward pass too (a Pallas call picks interpret mode
  when traced, and the backward pass is traced after the forward has returned)."""
  from jax.experimental.pallas import tpu as pltpu
  with pltpu.force_tpu_interpret_mode():
    return run(q, k, v, ab, segments)


def _interpreted_fwd(run, q, k, v, ab, segments):
  return _interpreted(run, q, k, v, ab, segments), (q, k, v, ab, segments)


def _interpreted_bwd(run, res, do):
  from jax.experimental.pallas import tpu as pltpu
  q, k, v, ab, segments = res
  with pltpu.force_tpu_interpret_mode():  # recomputes the forward: interpret mode is for tests only
    _, vjp = jax.vjp(lambda q, k, v: run(q, k, v, ab, segments), q, k, v)
    dq, dk, dv = vjp(do)
  return dq, dk, dv, None if ab is None else jnp.zeros_like(ab), None


_interpreted.defvjp(_interpreted_fwd, _interpreted_bwd)
