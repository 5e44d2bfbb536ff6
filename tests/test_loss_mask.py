"""Mask losses, matching costs and the set criterion against numpy / torch / scipy re-derivations."""
import jax
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ovs_jax.losses.mask_losses import (classification_loss, dice_loss, pairwise_bce_cost,
                                        pairwise_dice_cost, sigmoid_bce_loss)
from ovs_jax.losses.matching import hungarian_matcher
from ovs_jax.losses.point_sampling import uncertainty_points, uniform_points
from configs.cdt_vitb import get_config
from ovs_jax.losses.set_criterion import MaskLossConfig, mask_classification_loss, set_loss

RNG = np.random.default_rng(0)

RECIPE = get_config()


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _bce(x, t):  # elementwise, numerically plain
  return -(t * np.log(_sigmoid(x)) + (1 - t) * np.log(1 - _sigmoid(x)))


def _dice(x, t):
  p = _sigmoid(x)
  return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def _grid_sample(maps, points):  # (N, H, W), (N, P, 2) -> (N, P), torch reference
  return F.grid_sample(torch.tensor(np.asarray(maps))[:, None],
                       2 * torch.tensor(np.asarray(points))[:, :, None] - 1,
                       align_corners=False)[:, 0, :, 0].numpy().astype(np.float64)


def test_point_losses_match_numpy():
  x = RNG.normal(size=(5, 13)).astype(np.float32) * 3
  t = (RNG.random((5, 13)) > 0.5).astype(np.float32)
  valid = np.array([1, 1, 0, 1, 0], bool)
  np.testing.assert_allclose(sigmoid_bce_loss(x, t, valid, 4.0),
                             _bce(x, t).mean(-1)[valid].sum() / 4, rtol=1e-5)
  np.testing.assert_allclose(dice_loss(x, t, valid, 4.0), _dice(x, t)[valid].sum() / 4, rtol=1e-5)


def test_pairwise_costs_match_numpy():
  x = RNG.normal(size=(6, 11)).astype(np.float32)
  t = (RNG.random((4, 11)) > 0.4).astype(np.float32)
  bce = np.array([[_bce(x[i], t[j]).mean() for j in range(4)] for i in range(6)])
  dice = np.array([[_dice(x[i], t[j]) for j in range(4)] for i in range(6)])
  np.testing.assert_allclose(pairwise_bce_cost(x, t), bce, rtol=1e-5)
  np.testing.assert_allclose(pairwise_dice_cost(x, t), dice, rtol=1e-5, atol=1e-6)


def test_classification_loss_void_weight():
  logits = RNG.normal(size=(2, 6, 5)).astype(np.float32)
  target = RNG.integers(0, 5, (2, 6))
  target[0, :3] = 4  # void
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, target[..., None], -1)[..., 0]
  w = np.where(target == 4, 0.1, 1.0)
  np.testing.assert_allclose(classification_loss(logits, target, 0.1), (w * nll).sum() / w.sum(),
                             rtol=1e-5)


def test_uncertainty_points_prefer_the_decision_boundary():
  # Logit = 8·(x − 0.5): most uncertain along the vertical line x = 0.5.
  xs = (np.arange(32) + 0.5) / 32
  logits = np.broadcast_to(8 * (xs - 0.5), (3, 32, 32)).astype(np.float32)
  pts = np.asarray(uncertainty_points(jax.random.key(0), logits, 40, 3.0, 0.75))
  assert pts.shape == (3, 40, 2) and np.all((pts >= 0) & (pts <= 1))
  important, rest = pts[:, :30, 0], pts[:, 30:, 0]
  assert np.abs(important - 0.5).max() < np.quantile(np.abs(rest - 0.5), 0.9)
  assert np.abs(important - 0.5).mean() < 0.5 * np.abs(rest - 0.5).mean()


def _problem(b=2, q=6, t=4, k=5, h=8, w=8, gh=16, gw=16):
  logits = RNG.normal(size=(b, q, k + 1)).astype(np.float32)
  masks = RNG.normal(size=(b, q, h, w)).astype(np.float32) * 2
  targets = {'labels': RNG.integers(0, k, (b, t)).astype(np.int32),
             'masks': (RNG.random((b, t, gh, gw)) > 0.5).astype(np.float32),
             'valid': np.array([[1, 1, 1, 0], [1, 0, 1, 0]], bool)[:b, :t]}
  return logits, masks, targets


def _labelled(pixel_valid, points):  # (H, W), (P, 2) -> (P,) the points on labelled pixels
  return _grid_sample(pixel_valid[None].astype(np.float32), points[None])[0] > 0.5


def _numpy_match(logits, masks, targets, points):
  """Mask2Former's matcher cost, re-derived, solved by scipy per image; with 'pixel_valid', points
  on unlabelled pixels are left out of the sums (the means still divide by every point)."""
  out = []
  for i in range(len(logits)):
    v = targets['valid'][i]
    prob = np.exp(logits[i]) / np.exp(logits[i]).sum(-1, keepdims=True)
    pm = _grid_sample(masks[i], np.broadcast_to(points[i], (len(masks[i]), *points[i].shape)))
    gm = _grid_sample(targets['masks'][i][v], np.broadcast_to(points[i], (v.sum(), *points[i].shape)))
    keep = _labelled(targets['pixel_valid'][i], points[i]) if 'pixel_valid' in targets else slice(None)
    n = pm.shape[1]
    pm, gm = pm[:, keep], gm[:, keep]
    bce = np.array([[_bce(p, g).sum() / n for g in gm] for p in pm])
    dice = np.array([[_dice(p, g) for g in gm] for p in pm])
    cost = -2 * prob[:, targets['labels'][i][v]] + 5 * bce + 5 * dice
    qi, ti = linear_sum_assignment(cost)
    m = np.full(len(v), -1)
    m[np.flatnonzero(v)[ti]] = qi
    out.append(m)
  return np.stack(out)


def test_matcher_matches_numpy_and_scipy():
  logits, masks, targets = _problem()
  rng = jax.random.key(3)
  match = jax.jit(hungarian_matcher, static_argnums=4)(rng, logits, masks, targets, 50)
  points = np.asarray(uniform_points(rng, 2, 50))
  np.testing.assert_array_equal(match, _numpy_match(logits, masks, targets, points))


def test_set_loss_matches_numpy():
  logits, masks, targets = _problem()
  cfg = MaskLossConfig.from_config(RECIPE.loss, num_points=24)
  rng = jax.random.key(5)
  got = jax.jit(set_loss, static_argnums=5)(rng, logits, masks, targets, 3.0, cfg)

  rng_match, rng_points = jax.random.split(rng)
  match = _numpy_match(logits, masks, targets, np.asarray(uniform_points(rng_match, 2, 24)))
  valid = targets['valid']
  target_classes = np.full((2, 6), 5)
  for i in range(2):
    target_classes[i, match[i][valid[i]]] = targets['labels'][i][valid[i]]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, target_classes[..., None], -1)[..., 0]
  w = np.where(target_classes == 5, 0.1, 1.0)
  src = np.take_along_axis(masks, np.maximum(match, 0)[:, :, None, None], 1).reshape(-1, 8, 8)
  points = np.asarray(uncertainty_points(rng_points, src, 24, 3.0, 0.75))
  x = _grid_sample(src, points)
  t = _grid_sample(targets['masks'].reshape(-1, 16, 16), points)
  v = valid.reshape(-1)
  np.testing.assert_allclose(got['loss_ce'], (w * nll).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(got['loss_mask'], _bce(x, t).mean(-1)[v].sum() / 3.0, rtol=1e-4)
  np.testing.assert_allclose(got['loss_dice'], _dice(x, t)[v].sum() / 3.0, rtol=1e-4)


def test_unlabelled_pixels_are_left_out_of_matching_and_mask_losses():
  """`pixel_valid` (loss.ignore_unlabelled_pixels): points on unlabelled pixels add nothing to the
  matching cost, BCE or dice (numpy re-derivation), and whatever the predictions and targets hold
  there changes nothing."""
  logits, masks, targets = _problem(h=16, w=16)
  pixel_valid = np.ones((2, 16, 16), bool)
  pixel_valid[0, 4:12, 3:13] = False
  pixel_valid[1, :, 10:] = False
  targets = dict(targets, pixel_valid=pixel_valid)
  cfg = MaskLossConfig.from_config(RECIPE.loss, num_points=40)
  rng = jax.random.key(7)
  got = jax.jit(set_loss, static_argnums=5)(rng, logits, masks, targets, 3.0, cfg)
  rng_match, rng_points = jax.random.split(rng)
  match = _numpy_match(logits, masks, targets, np.asarray(uniform_points(rng_match, 2, 40)))
  np.testing.assert_array_equal(jax.jit(hungarian_matcher, static_argnums=4)(
      rng_match, logits, masks, targets, 40), match)
  src = np.take_along_axis(masks, np.maximum(match, 0)[:, :, None, None], 1).reshape(-1, 16, 16)
  points = np.asarray(uncertainty_points(rng_points, src, 40, 3.0, 0.75))
  x, t = _grid_sample(src, points), _grid_sample(targets['masks'].reshape(-1, 16, 16), points)
  keep = np.stack([_labelled(pixel_valid[i // 4], points[i]) for i in range(len(points))])
  v = targets['valid'].reshape(-1)
  bce = np.array([_bce(x[i][keep[i]], t[i][keep[i]]).sum() / 40 for i in range(len(x))])
  dice = np.array([_dice(x[i][keep[i]], t[i][keep[i]]) for i in range(len(x))])
  np.testing.assert_allclose(got['loss_mask'], bce[v].sum() / 3.0, rtol=1e-4)
  np.testing.assert_allclose(got['loss_dice'], dice[v].sum() / 3.0, rtol=1e-4)
  # Two pixels inside the unlabelled area predictions and targets can say anything (uniform points:
  # importance sampling would pick other points where the predictions change).
  inner = np.zeros((2, 16, 16), bool)
  inner[0, 6:10, 5:11] = inner[1, :, 12:] = True
  masks2 = np.where(inner[:, None], 50.0, masks).astype(np.float32)
  targets2 = dict(targets, masks=np.where(inner[:, None], 1.0, targets['masks']).astype(np.float32))
  uniform = MaskLossConfig.from_config(RECIPE.loss, num_points=40, importance_sample_ratio=0.0)
  got = jax.jit(set_loss, static_argnums=5)(rng, logits, masks, targets, 3.0, uniform)
  again = jax.jit(set_loss, static_argnums=5)(rng, logits, masks2, targets2, 3.0, uniform)
  for k in got:
    np.testing.assert_allclose(again[k], got[k], rtol=1e-6, err_msg=k)


def test_deep_supervision_sums_every_set():
  logits, masks, targets = _problem()
  cfg = MaskLossConfig.from_config(RECIPE.loss, num_points=16)
  sets = [{'pred_logits': logits * s, 'pred_masks': masks * s} for s in (1.0, -0.5)]
  rng = jax.random.key(9)
  total, terms = jax.jit(mask_classification_loss, static_argnames='config')(rng, sets, targets, None, config=cfg)
  num_masks = targets['valid'].sum()
  one_set = jax.jit(set_loss, static_argnums=5)
  parts = [one_set(r, s['pred_logits'], s['pred_masks'], targets, num_masks, cfg)
           for r, s in zip(jax.random.split(rng, 2), sets)]
  expect = sum(2 * p['loss_ce'] + 5 * p['loss_mask'] + 5 * p['loss_dice'] for p in parts)
  np.testing.assert_allclose(total, expect, rtol=1e-5)
  np.testing.assert_allclose(terms['loss_dice_final'], parts[0]['loss_dice'], rtol=1e-6)


def test_perfect_prediction_beats_inverted_prediction():
  _, _, targets = _problem(h=16, w=16)
  b, t = targets['valid'].shape
  # Rectangles, so that sampled targets are fractional only along their borders.
  targets['masks'] = np.zeros((b, t, 16, 16), np.float32)
  for i in range(b):
    for j in range(t):
      y0, x0 = RNG.integers(0, 8, 2)
      targets['masks'][i, j, y0:y0 + 8, x0:x0 + 8] = 1
  # Queries 0..t-1 predict the targets exactly (large logits), the rest predict empty/void.
  masks = np.full((b, 6, 16, 16), -20.0, np.float32)
  masks[:, :t] = np.where(targets['masks'] > 0.5, 20.0, -20.0)
  logits = np.full((b, 6, 6), -20.0, np.float32)
  logits[:, :, 5] = 20.0
  for i in range(b):
    q = np.flatnonzero(targets['valid'][i])  # padded targets' queries stay empty and void
    logits[i, q, targets['labels'][i][q]] = 20.0
    logits[i, q, 5] = -20.0
    masks[i, np.flatnonzero(~targets['valid'][i])] = -20.0
  loss = jax.jit(mask_classification_loss, static_argnames='config')
  cfg = MaskLossConfig.from_config(RECIPE.loss, num_points=64)
  _, good = loss(jax.random.key(0), [{'pred_logits': logits, 'pred_masks': masks}], targets, None, config=cfg)
  _, bad = loss(jax.random.key(0), [{'pred_logits': logits, 'pred_masks': -masks}], targets, None, config=cfg)
  assert good['loss_ce'] < 1e-3
  # Importance points sit on mask borders, where sampled targets are fractional: dice stays > 0.
  assert good['loss_dice'] < 0.3 * bad['loss_dice']
  assert good['loss_mask'] < 0.3 * bad['loss_mask']
