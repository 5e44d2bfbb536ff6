"""The recipe's weight decay spares exactly what MAFT+'s optimizer spares."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.cdt_vitb import get_config
from ovs_jax import optim
from ovs_jax.methods import maft_plus

# nn.Embedding tables of the official model that are plain parameters here (MAFT-Plus
# fcclip_transformer_decoder.py query_feat / query_embed / level_embed, maft_plus.py void_embedding).
OFFICIAL_EMBEDDINGS = ("head/predictor/query_feat", "head/predictor/query_embed",
                       "head/predictor/level_embed", "in_vocab/void_embedding")


def test_recipe_decays_all_but_norm_layers_and_embedding_tables():
  """train_net.py build_optimizer: weight_decay 0 for norm modules (WEIGHT_DECAY_NORM) and
  nn.Embedding (WEIGHT_DECAY_EMBED), WEIGHT_DECAY for every other parameter, biases included."""
  c = get_config("demo")
  c.clip.weights = "random"  # the tiny architecture: same parameter kinds as ViT-B/16
  model = nnx.eval_shape(lambda: maft_plus.METHOD.build_model(c))  # shapes only: no weights computed
  _, params, _ = nnx.split(model, optim.trainable_filter(c.frozen), ...)
  ones = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), nnx.to_pure_dict(params))
  tx = optim.make_optimizer(get_config().optim, 10, ones)
  # Zero gradients: Adam's step is 0, so a parameter moves only by its decay (-lr·wd·p).
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, ones), tx.init(ones), ones)
  decayed = {optim.path_str(p) for p, u in jax.tree_util.tree_leaves_with_path(updates)
             if np.any(np.asarray(u) != 0)}
  spared_modules = {"/".join(map(str, p)) for p, m in nnx.iter_graph(model)
                    if isinstance(m, (nnx.LayerNorm, nnx.GroupNorm, nnx.Embed))}
  names = {optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(ones)}
  want = {n for n in names
          if n.rpartition("/")[0] not in spared_modules and n not in OFFICIAL_EMBEDDINGS}
  assert decayed == want
  assert {"head/pixel_decoder/level_embed", "in_vocab/logit_scale", "cdt/q_proj/bias",
          "clip/vision_model/embeddings/class_embedding"} <= decayed  # nn.Parameter / biases


@pytest.mark.parametrize("kind", ["poly", "cosine", "step"])
def test_schedules_follow_their_formulas(kind):
  """Warmup 10 then poly (1 - t/T)^0.9 / half-cosine / ×0.1 at each boundary, T = 100 - 10."""
  import ml_collections
  c = ml_collections.ConfigDict(dict(schedule=kind, lr=2.0, poly_power=0.9, warmup_steps=10,
                                     decay_steps=(40, 70), decay_factor=0.1))
  sched = optim.lr_schedule(c, c.lr, 100)
  for step in (0, 5, 10, 39, 40, 69, 70, 99):
    t = step - 10
    if step < 10:
      want = 2.0 * step / 10
    elif kind == "poly":
      want = 2.0 * (1 - t / 90) ** 0.9
    elif kind == "cosine":
      want = 2.0 * 0.5 * (1 + np.cos(np.pi * t / 90))
    else:
      want = 2.0 * 0.1 ** sum(step >= b for b in (40, 70))
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-7, err_msg=f"{kind}@{step}")
  with pytest.raises(ValueError, match="config.optim.schedule='linear': expected one of"):
    optim.lr_schedule(ml_collections.ConfigDict(dict(schedule="linear")), 1.0, 10)
