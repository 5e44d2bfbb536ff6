"""SimZSS's losses against numpy re-derivations written here from the release's code, and the global batch:
the same loss (and gradient) with the batch sharded over 8 simulated devices as on one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ovs_jax.losses.concept_alignment import local_concept_loss
from ovs_jax.losses.contrastive import logit_scale, symmetric_infonce


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def numpy_infonce(image, text, scale):
  """CLIP's loss, one row at a time: image i against every text, text j against every image."""
  n = len(image)
  sim = scale * image.astype(np.float64) @ text.astype(np.float64).T
  per_image = [-_log_softmax(sim[i])[i] for i in range(n)]
  per_text = [-_log_softmax(sim[:, j])[j] for j in range(n)]
  return 0.5 * (np.mean(per_image) + np.mean(per_text))


def numpy_local(tokens, patches, ids, starts, ends, att_t=0.1, t=0.07, target="self", groups=1,
                n_classes=6):
  """The release's L_l re-derived in float64 (tileb1/simzss @2142ac5): SimZSS.forward
  (src/open_clip/model.py L629-697: per-GPU scatter-sum of the concepts' summed unit tokens into
  n_classes + 1 rows (label -1 -> the extra row), normalise, gather per concept, ShallowDecoder
  L766-770 softmax over patches at 0.1) and ZSLoss.forward (src/open_clip/loss.py L476-515: drop the
  extra row, logits × 1/0.07, classes absent from the gathered batch -inf, target = argmax of the
  detached logits, CE mean over the GPU's concepts); DDP averages the per-GPU losses."""
  tokens, patches = tokens.astype(np.float64), patches.astype(np.float64)
  present = np.zeros(n_classes, bool)
  present[ids[ids >= 0]] = True
  losses = []
  for rows in np.array_split(np.arange(ids.shape[0]), groups):
    concepts = [(b, ids[b, j], _unit(tokens[b, starts[b, j]:ends[b, j]]).sum(0))
                for b in rows for j in range(ids.shape[1]) if ids[b, j] >= 0]
    if not concepts:
      losses.append(0.0)
      continue
    weights = np.zeros((n_classes + 1, tokens.shape[-1]))
    for _, k, c in concepts:
      weights[k] += c
    norm = np.linalg.norm(weights, axis=-1, keepdims=True)
    weights = weights / np.maximum(norm, 1e-12)
    ce = []
    for b, k, _ in concepts:
      z = _unit(patches[b])
      att = np.exp(_log_softmax(z @ weights[k] / att_t))
      v = _unit(att @ z)
      logits = np.where(present, weights[:-1] @ v / t, -np.inf)
      want = k if target == "label" else int(np.argmax(logits))
      ce.append(-_log_softmax(logits)[want])
    losses.append(np.mean(ce))
  return np.mean(losses)


def _concept_batch(rng, b=8, length=12, c=4, bank=6, d=16, p=9):
  tokens = rng.normal(size=(b, length, d)).astype(np.float32)
  patches = rng.normal(size=(b, p, d)).astype(np.float32)
  ids = rng.integers(-1, bank, (b, c)).astype(np.int32)
  ids[0, 0] = 2  # a class twice in the batch: a prototype over several concepts
  ids[3, 1] = 2
  starts = rng.integers(1, length - 4, (b, c)).astype(np.int32)
  ends = (starts + rng.integers(1, 4, (b, c))).astype(np.int32)
  starts, ends = np.where(ids >= 0, starts, 0), np.where(ids >= 0, ends, 0)
  return tokens, patches, ids, starts, ends


def test_global_loss_equals_numpy_and_the_scale_is_clamped():
  rng = np.random.default_rng(0)
  image, text = _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(6, 8)))
  scale = float(logit_scale(jnp.log(jnp.float32(1 / 0.07))))
  np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-6)
  got = symmetric_infonce(jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32), scale)
  np.testing.assert_allclose(got, numpy_infonce(image, text, scale), rtol=1e-5)
  assert float(logit_scale(jnp.float32(np.log(500.0)))) == 100.0  # CLIP's clamp
  assert float(jax.grad(lambda s: logit_scale(s))(jnp.float32(np.log(500.0)))) == 0.0


@pytest.mark.parametrize("target", ["self", "label"])
def test_local_loss_equals_numpy(target):
  rng = np.random.default_rng(1)
  tokens, patches, ids, starts, ends = _concept_batch(rng)
  got = local_concept_loss(*map(jnp.asarray, (tokens, patches, ids, starts, ends)), 6, target=target)
  np.testing.assert_allclose(got, numpy_local(tokens, patches, ids, starts, ends, target=target), rtol=1e-5)


@pytest.mark.parametrize("target", ["self", "label"])
def test_per_device_prototypes_equal_the_release(target):
  """Prototypes per group of 2 samples (the release's per-GPU form, 4 GPUs), "present" over the
  whole batch, the mean of the per-group losses; and it differs from one global group."""
  rng = np.random.default_rng(4)
  tokens, patches, ids, starts, ends = _concept_batch(rng)
  args = tuple(map(jnp.asarray, (tokens, patches, ids, starts, ends)))
  got = local_concept_loss(*args, 6, target=target, group_size=2)
  want = numpy_local(tokens, patches, ids, starts, ends, target=target, groups=4)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(float(got) - numpy_local(tokens, patches, ids, starts, ends, target=target)) > 1e-3
  with pytest.raises(ValueError, match="not a multiple"):
    local_concept_loss(*args, 6, group_size=3)


def test_local_loss_without_concepts_is_zero_with_a_finite_gradient():
  rng = np.random.default_rng(2)
  tokens, patches, ids, starts, ends = _concept_batch(rng)
  ids[:] = -1
  f = lambda t: local_concept_loss(t, *map(jnp.asarray, (patches, ids, starts, ends)), 6)
  assert float(f(jnp.asarray(tokens))) == 0.0
  assert np.isfinite(np.asarray(jax.grad(f)(jnp.asarray(tokens)))).all()


def test_both_losses_over_8_devices_equal_one_device():
  """Under jit with the batch sharded 8 ways the (B, B) logits and the prototypes span the global
  batch: loss and gradient equal the single-device ones."""
  assert len(jax.devices()) >= 8, "conftest gives 8 CPU devices"
  rng = np.random.default_rng(3)
  tokens, patches, ids, starts, ends = _concept_batch(rng, b=16)
  image = rng.normal(size=(16, 16)).astype(np.float32)
  text = rng.normal(size=(16, 16)).astype(np.float32)

  def total(image, text, tokens, patches, ids, starts, ends):
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    g = symmetric_infonce(unit(image), unit(text), 1 / 0.07)
    return g + 0.05 * local_concept_loss(tokens, patches, ids, starts, ends, 6)

  args = (image, text, tokens, patches, ids, starts, ends)
  fn = jax.jit(jax.value_and_grad(total, argnums=(1, 2)))
  one = fn(*[jax.device_put(a, jax.devices()[0]) for a in args])
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in args]
  assert sharded[0].addressable_shards[0].data.shape[0] == 2  # really split: 2 rows per device
  eight = fn(*sharded)
  np.testing.assert_allclose(eight[0], one[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(eight[1]), jax.tree.leaves(one[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # And the global value is not the mean of per-device losses (which a per-shard loss would give).
  local = np.mean([numpy_infonce(_unit(image[i:i + 2]), _unit(text[i:i + 2]), 1 / 0.07) for i in range(0, 16, 2)])
  assert abs(numpy_infonce(_unit(image), _unit(text), 1 / 0.07) - local) > 0.1
