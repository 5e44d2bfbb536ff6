"""The mask-classification head: pixel decoder + masked-attention decoder (Mask2Former).

Class scores in open-vocabulary methods come from text embeddings, so the head returns per-query
class features and leaves classification to a pluggable `classify` callable (e.g.
`CosineClassifier` with the method's text classifier bound in).
"""
import jax.numpy as jnp
from flax import nnx

from ovs_jax.heads.pixel_decoder import MSDeformAttnPixelDecoder
from ovs_jax.heads.transformer_decoder import MaskedAttentionDecoder


class MaskFormerHead(nnx.Module):
  """Multi-scale features -> query class features and mask logits, with deep supervision.

  Args:
    in_channels: {'res2': C2, 'res3': C3, 'res4': C4, 'res5': C5}.
    remat: recompute the pixel decoder's encoder layers in the backward pass; they hold most of the
      head's activations (deformable-attention samples), the masked-attention decoder far fewer.
  Defaults are the Mask2Former / cdt_vitb sizes.
  """

  def __init__(self, in_channels, *, num_queries=100, hidden_dim=256, mask_dim=256,
               enc_layers=6, enc_ffn_dim=1024, dec_layers=9, dec_ffn_dim=2048, num_heads=8,
               num_points=4, remat=False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels, hidden_dim, mask_dim, enc_layers, enc_ffn_dim, num_heads, num_points,
        remat=remat, **kw)
    self.predictor = MaskedAttentionDecoder(
        hidden_dim, hidden_dim, mask_dim, num_queries, dec_layers, num_heads, dec_ffn_dim, **kw)

  def __call__(self, features, classify=None):
    """Args:
      features: {'res2': (B, H/4, W/4, C2), 'res3': /8, 'res4': /16, 'res5': /32}.
      classify: optional callable (prediction set, mask_features) -> (B, Q, K+1) logits, applied
        to every set; a set holds 'class_features' and 'pred_masks' (FC-CLIP's classifier also
        mask-pools the mask features).
    Returns:
      {'class_features': (B, Q, hidden_dim), 'pred_masks': (B, Q, H/4, W/4),
       ['pred_logits': (B, Q, K+1),] 'aux': [the same for the initial queries and layers 1..L-1]}.
    """
    mask_features, multi_scale = self.pixel_decoder(features)
    sets = self.predictor(multi_scale, mask_features)
    if classify is not None:
      sets = [dict(s, pred_logits=classify(s, mask_features)) for s in sets]
    return dict(sets[-1], aux=sets[:-1])


def prediction_sets(outputs):
  """All prediction sets of a head output, final first: [final, *aux]."""
  final = {k: v for k, v in outputs.items() if k != 'aux'}
  return [final, *outputs.get('aux', [])]
