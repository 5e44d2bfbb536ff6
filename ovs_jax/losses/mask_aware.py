"""Mask-aware loss (MAFT+): out-of-vocabulary class scores should follow each proposal's mask IoU.

For ground-truth segment i of class c_i, the probability of c_i over the Q queries is regressed
onto the queries' soft IoUs with the segment, min-max normalised over queries (MAFT+
`mask_aware_loss.py`).
"""
import jax
import jax.numpy as jnp

from ovs_jax.losses.representation_compensation import smooth_l1
from ovs_jax.ops.resize import resize_nchw


def mask_aware_loss(class_logits, pred_masks, targets):
  """SmoothL1(p_{q,c_i}, IoU_norm(q, i)), averaged over queries and valid segments of the batch.

  As in MAFT+ (`nn.SmoothL1Loss()` over the stacked (segments, Q) matrix), the mean runs over all
  Q·(valid segments in the batch) entries, so images with more segments weigh more; a batch
  without valid segments gives 0. Under data parallelism this is the mean of the local batch.

  Args:
    class_logits: (B, Q, C) out-of-vocabulary logits over the C classes, void already dropped
      (pass `logits[..., :-1]` when void is the last column; MAFT+ drops it the same way).
    pred_masks: (B, Q, h, w) mask logits.
    targets: {'labels': (B, T) int, 'masks': (B, T, H, W) in {0, 1}, 'valid': (B, T) bool}, as in
      `set_criterion`; padded segments contribute nothing.
  Returns:
    scalar float32.
  """
  b, q = class_logits.shape[:2]
  labels, gt, valid = targets['labels'], targets['masks'], targets['valid']
  hh, ww = gt.shape[-2:]
  prob = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)  # (B, Q, C)
  # p_{q, c_i}: (B, T, Q); padded labels may be out of range, so clip (they are masked below).
  index = jnp.clip(labels, 0, prob.shape[-1] - 1).astype(jnp.int32)
  p = jnp.take_along_axis(prob, jnp.broadcast_to(index[:, None, :], (b, q, index.shape[1])),
                          axis=2).transpose(0, 2, 1)

  # Soft IoU of σ(mask) bilinearly resized to the GT size (sigmoid first, as MAFT+), stop-gradient.
  m = jax.nn.sigmoid(jax.lax.stop_gradient(pred_masks).astype(jnp.float32))
  if m.shape[-2:] != (hh, ww):
    m = resize_nchw(m, hh, ww)
  m = m.reshape(b, q, hh * ww)
  g = gt.reshape(b, -1, hh * ww).astype(jnp.float32)
  inter = jnp.einsum('bqp,btp->btq', m, g)
  union = g.sum(-1)[..., None] + m.sum(-1)[:, None, :] - inter + 1e-7
  iou = inter / union  # (B, T, Q)
  lo, hi = iou.min(-1, keepdims=True), iou.max(-1, keepdims=True)
  iou = (iou - lo) / (hi - lo + 1e-8)

  per_segment = smooth_l1(p, iou).sum(-1)  # (B, T)
  count = jnp.sum(valid).astype(jnp.float32)
  return jnp.sum(jnp.where(valid, per_segment, 0.0)) / (jnp.maximum(count, 1.0) * q)
