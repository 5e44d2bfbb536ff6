"""GKC's caption grounding: caption nouns aligned with matched query embeddings, contrasted over
the device's images, for every prediction set.

Release (yongliu20/GKC @21313c8), `mask2former/modeling/utils/loss.py` GroundingHead.forward
(93–441) with the recipe's settings (`GROUNDING.LOCAL_METRIC: 'clip_cosine'` in the yaml,
config.py 185–198: aligned_local, softmax, cross_entropy, both alignment directions) and
`maskformer_model_voca_dense_kd_syn.py` loss_ground (963–1015, GATHER False: the GPU's batch) and
658–665 (every set, weight 10 each, 301/322):
* regions: up to 25 of the image's matched queries, a random subset (970–972);
* local similarity cos(word, region) (181–188), times the temperature = the class path's learned
  scale exp(logit_scale) (455–456, 214–215), padding pairs set to min − 100 (218–222);
  distance = temperature · (1 − cos);
* words→regions: softmax over regions, Σ attention·distance over words and regions / #words;
  regions→words: softmax over words, Σ / #regions (283–295); a caption/image pair with neither
  words nor regions gets max + 100 (299–310);
* cost (caption i, image j); CE choosing the caption (softmax over captions) and the image
  (over images) for each direction, the four averaged (327–343, 434–441).
"""
import jax
import jax.numpy as jnp

from ovs_jax.losses.per_device import split

MAX_REGIONS = 25  # max_g_v_num, model 963


def _normalize(x):
  """x / (‖x‖ + 1e-7) as the release; zero padding rows stay 0 with finite gradients."""
  sq = jnp.sum(x * x, -1, keepdims=True)
  norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  return x / (norm + 1e-7)


def grounding_loss(words, word_valid, regions, region_valid, temperature):
  """words (B, W, E), word_valid (B, W); regions (B, R, E), region_valid (B, R) of one device's
  images (need not be unit) -> the mean of the four cross-entropies."""
  sim = jnp.einsum("iwe,jre->ijwr", _normalize(words), _normalize(regions))
  local_sim, local_dist = temperature * sim, temperature * (1 - sim)
  pair = word_valid[:, None, :, None] & region_valid[None, :, None, :]
  local_sim = jnp.where(pair, local_sim, jax.lax.stop_gradient(local_sim.min()) - 100.0)
  num_words = word_valid.sum(1).astype(jnp.float32)[:, None]  # per caption i
  num_regions = region_valid.sum(1).astype(jnp.float32)[None, :]  # per image j
  w2r = jax.nn.softmax(local_sim, axis=3) * word_valid[:, None, :, None]
  r2w = jax.nn.softmax(local_sim, axis=2) * region_valid[None, :, None, :]
  any_ = (num_words > 0) | (num_regions > 0)
  losses = []
  for att, count in ((w2r, num_words), (r2w, num_regions)):
    cost = jnp.sum(att * local_dist, (2, 3)) / jnp.maximum(count, 1.0)
    cost = jnp.where(any_, cost, jax.lax.stop_gradient(cost.max()) + 100.0)
    losses.append(-jnp.mean(jnp.diagonal(jax.nn.log_softmax(-cost, axis=0))))  # choose caption
    losses.append(-jnp.mean(jnp.diagonal(jax.nn.log_softmax(-cost, axis=1))))  # choose image
  return sum(losses) / 4


def choose_regions(rng, match, valid, max_regions=MAX_REGIONS):
  """(B, R) queries matched to up to `max_regions` of each image's targets, a random subset, and
  their validity. match (B, T) query per target (−1 none), valid (B, T)."""
  ok = valid & (match >= 0)
  r = min(max_regions, match.shape[1])
  chosen, slot = jax.lax.top_k(jnp.where(ok, jax.random.uniform(rng, ok.shape), -1.0), r)
  return jnp.take_along_axis(match, slot, 1), chosen >= 0


def caption_grounding_loss(rng, sets, matches, valid, words, word_valid, temperature, group):
  """Σ over prediction sets of the mean over devices (groups of `group` images) of
  `grounding_loss` between each set's chosen matched query embeddings and the caption nouns."""
  total = 0.0
  for r, s, m in zip(jax.random.split(rng, len(sets)), sets, matches):
    query, ok = choose_regions(r, m, valid)
    regions = jnp.take_along_axis(s["embedding"], jnp.maximum(query, 0)[..., None], 1)
    regions = jnp.where(ok[..., None], regions, 0.0)  # the release's zero padding (966)
    per_device = jax.vmap(grounding_loss, (0, 0, 0, 0, None))(
        split(words, group), split(word_valid, group), split(regions, group), split(ok, group),
        temperature)
    total = total + jnp.mean(per_device)
  return total
