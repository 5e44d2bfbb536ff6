"""Open-vocabulary query classifier shared by MAFT+ (in-vocabulary branch) and GKC.

Query features -> MLP -> L2-normalise -> cosine with the text classifier rows and a learnable void
embedding, times a learnable temperature (CLIP-style, init 1/0.07, capped at 100).
"""
import math

import jax.numpy as jnp
from flax import nnx

from ovs_jax.layers import MLP, param
from ovs_jax.models.clip import l2_normalize as _l2_normalize


class CosineClassifier(nnx.Module):
  """Args: in_dim query width; embed_dim text embedding width; num_layers of the MLP (3 FC-CLIP/MAFT+,
  2 GKC)."""

  def __init__(self, in_dim, embed_dim, num_layers=3, *, logit_scale_init=1 / 0.07, max_scale=100.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.mlp = MLP(in_dim, in_dim, embed_dim, num_layers, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs)
    self.void_embedding = param(nnx.initializers.normal(1.0), (1, embed_dim), (None, 'embed'),
                                rngs=rngs, param_dtype=param_dtype)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(logit_scale_init), param_dtype))
    self.max_scale = max_scale

  def embed(self, features):
    """(B, Q, in_dim) -> (B, Q, embed_dim) unit-norm query embeddings."""
    return _l2_normalize(self.mlp(features).astype(jnp.float32))

  def __call__(self, features, text_classifier):
    """features (B, Q, in_dim), text_classifier (K, E) unit rows -> logits (B, Q, K+1), void last."""
    classes = jnp.concatenate([text_classifier.astype(jnp.float32),
                               _l2_normalize(self.void_embedding[...].astype(jnp.float32))])
    scale = jnp.minimum(jnp.exp(self.logit_scale[...]), self.max_scale)
    return scale * jnp.einsum('bqe,ke->bqk', self.embed(features), classes)
