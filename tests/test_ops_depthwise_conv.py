"""Depthwise convolution: the shifted-sum form (XLA:CPU) equals XLA's grouped convolution and
PyTorch's, values and gradients, odd sizes, float32 and bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs_jax.ops.depthwise_conv import depthwise_conv2d


@pytest.mark.parametrize("k", [3, 7])
def test_shifted_equals_torch_and_xla_with_gradients(k):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 13, 5)).astype(np.float32)
  w = rng.standard_normal((k, k, 1, 5)).astype(np.float32)
  b = rng.standard_normal(5).astype(np.float32)
  g = rng.standard_normal((2, 9, 13, 5)).astype(np.float32)
  xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
  wt = torch.tensor(w).permute(3, 2, 0, 1).contiguous().requires_grad_()  # (C, 1, k, k)
  yt = F.conv2d(xt, wt, torch.tensor(b), padding=k // 2, groups=5)
  yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
  want = (yt.detach().permute(0, 2, 3, 1).numpy(), xt.grad.permute(0, 2, 3, 1).numpy(),
          wt.grad.permute(2, 3, 1, 0).numpy())
  for impl in ("shifted", "xla"):
    y, vjp = jax.vjp(lambda x, w: depthwise_conv2d(x, w, jnp.asarray(b), impl=impl), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(g))
    for got, ref in zip((y, dx, dw), want):
      np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=1e-4, err_msg=impl)


def test_bfloat16_close_to_float32():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((7, 7, 1, 4)) / 7, jnp.float32)
  y32 = depthwise_conv2d(x, w, impl="shifted")
  y16 = depthwise_conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), impl="shifted")
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=0.1, rtol=0.05)
  g = jax.grad(lambda x: jnp.sum(depthwise_conv2d(x, w.astype(jnp.bfloat16), impl="shifted").astype(jnp.float32)))(
      x.astype(jnp.bfloat16))
  assert g.dtype == jnp.bfloat16


def test_unknown_impl_is_named():
  with pytest.raises(ValueError, match="impl 'cudnn'"):
    depthwise_conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2)), impl="cudnn")
