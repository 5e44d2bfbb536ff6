"""Depthwise 2-D convolution ('same' padding, stride 1), implemented per backend.

XLA:CPU lowers a grouped convolution with one channel per group to a slow generic loop (ConvNeXt's
7×7: 0.30 s vs PyTorch's 0.02 s for 2×160×160×128 on 2 cores). As a sum of k² shifted, scaled copies
of the padded input it fuses into one elementwise loop and matches PyTorch. Its custom VJP keeps only
the input for the backward pass (autodiff of the sum would store k² shifted copies) and computes
the input gradient as the same shifted sum with the flipped kernel, the kernel gradient as k²
fused reductions. Accelerators keep XLA's convolution (cuDNN / TPU convolution units).
"""

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "shifted")


def depthwise_conv2d(x, kernel, bias=None, impl: str = "auto"):
  """x (B, H, W, C), kernel (k, k, 1, C) HWIO (k odd), bias (C,) -> (B, H, W, C), zero padding k // 2."""
  if impl not in IMPLS:
    raise ValueError(f"depthwise conv impl {impl!r}: expected one of {IMPLS}")
  if impl == "auto":
    impl = "shifted" if jax.default_backend() == "cpu" else "xla"
  if impl == "xla":
    p = kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(p, p), (p, p)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x.shape[-1])
  else:
    y = _shifted(x, kernel[:, :, 0])
  return y if bias is None else y + bias


def _shifted_sum(x, k2):
  """Σ_ij pad(x)[:, i:i+H, j:j+W] · k2[i, j] for k2 (k, k, C)."""
  k = k2.shape[0]
  p = k // 2
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return sum(padded[:, i:i + h, j:j + w] * k2[i, j] for i in range(k) for j in range(k))


@jax.custom_vjp
def _shifted(x, k2):
  return _shifted_sum(x, k2)


def _shifted_fwd(x, k2):
  return _shifted_sum(x, k2), (x, k2)


def _shifted_bwd(res, g):
  x, k2 = res
  k = k2.shape[0]
  p = k // 2
  h, w = x.shape[1:3]
  dx = _shifted_sum(g, k2[::-1, ::-1])  # the transposed convolution: flipped kernel
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  b, _, _, c = x.shape

  def tap(offset):  # one kernel tap's gradient: a fused multiply-reduce, one at a time (lax.map)
    window = jax.lax.dynamic_slice(padded, (0, offset[0], offset[1], 0), (b, h, w, c))
    return jnp.sum((window * g).astype(jnp.float32), axis=(0, 1, 2))
  offsets = jnp.asarray([(i, j) for i in range(k) for j in range(k)], jnp.int32)
  dk = jax.lax.map(tap, offsets).reshape(k, k, c)
  return dx.astype(x.dtype), dk.astype(k2.dtype)


_shifted.defvjp(_shifted_fwd, _shifted_bwd)
