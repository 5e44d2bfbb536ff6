"""The one attention kernel of the library (CLIP towers, Mask2Former decoder, CDT).

Inputs are already projected; heads are split and merged here. Today every backend runs
`jax.nn.dot_product_attention` (XLA; cuDNN where JAX picks it); backend-specific kernels plug in here.
"""
import jax


def multi_head_attention(q, k, v, num_heads: int, *, mask=None, is_causal: bool = False):
  """q (B, Lq, C), k and v (B, Lk, C) -> (B, Lq, C).

  mask: broadcastable to (B, heads, Lq, Lk), True = may attend; is_causal: token i sees j ≤ i.
  """
  b, lq, c = q.shape
  split = lambda x: x.reshape(*x.shape[:2], num_heads, c // num_heads)
  out = jax.nn.dot_product_attention(split(q), split(k), split(v), mask=mask, is_causal=is_causal)
  return out.reshape(b, lq, c)
