"""MVP-SEG (ovs_jax/methods/mvp_seg.py) against re-derivations written here from the paper's
formulas (DESIGN §7): prompt splicing vs the plain text tower, L_seg / L_cls / L_OC and global
prompt refining vs numpy, ignored (e.g. unseen) pixels that cannot reach a loss, and the method
trained, evaluated under the zero-shot protocol and read back through the shared code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax import optim
from ovs_jax.heads.learned_prompts import prompt_token_ids, prompted_text_features, template_contexts
from ovs_jax.losses.multi_view import orthogonal_constraint_loss
from ovs_jax.methods import mvp_seg
from ovs_jax.models import clip_config, clip_family
from ovs_jax.models.clip import l2_normalize
from ovs_jax.tokenizer import tokenize

NAMES = ["sky", "green grass", "cardboard box", "potted plant", "tvmonitor"]


@pytest.fixture(scope="module")
def clip():
  # two narrow layers per tower: the splicing, not the size, is under test
  cfg = clip_config._preset(64, 2, 2, 16, 64, 64, 2, proj=32)
  return clip_family.build_clip(cfg, rngs=nnx.Rngs(0))


def test_template_contexts_reproduce_the_plain_text_tower(clip):
  contexts = template_contexts(clip, "a photo of a", views=2)
  assert contexts.shape == (2, 4, clip.config.text.hidden_size)
  t = clip.config.text
  ids, eot = prompt_token_ids(NAMES, 4, t.max_position_embeddings, t.eos_token_id)
  assert ids.shape[1] < t.max_position_embeddings  # trimmed after the last EOT
  spliced = nnx.jit(prompted_text_features)(clip, contexts, jnp.asarray(ids), jnp.asarray(eot))
  plain = l2_normalize(nnx.jit(lambda m, i: m.get_text_features(i))(clip, jnp.asarray(
      tokenize([f"a photo of a {n}." for n in NAMES], t.max_position_embeddings))))
  np.testing.assert_allclose(spliced[0], plain, atol=1e-5)
  np.testing.assert_allclose(spliced[1], plain, atol=1e-5)


def _model(clip, **kw):
  cfg = dict(views=3, context_length=4, context_init="random", tau1_init=30.0, tau2_init=0.07,
             gamma=50.0)
  import ml_collections
  return mvp_seg.MVPSeg(clip, ml_collections.ConfigDict({**cfg, **kw}), rngs=nnx.Rngs(1))


def test_gradients_reach_only_the_contexts_and_temperatures(clip):
  model = _model(nnx.clone(clip))
  vocab = [[n] for n in NAMES]
  ids, eot, index = mvp_seg.prompt_context(model, vocab)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 5, (2, 64, 64)), jnp.int32)}
  import ml_collections
  weights = ml_collections.ConfigDict(dict(seg_weight=1.0, cls_weight=1.0, oc_weight=1.0))
  grads = nnx.jit(nnx.grad(lambda m: mvp_seg.loss_fn(m, batch, ids, eot, index, weights)[0]))(model)
  flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]}
  trainable = {optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(nnx.state(model, optim.trainable_filter(mvp_seg.FROZEN))))[0]}
  assert trainable == {"contexts", "log_tau1", "log_tau2"}
  assert all(np.abs(flat[p]).sum() > 0 for p in trainable)
  # The image side is under stop_gradient: no gradient reaches it even before freezing.
  assert all(np.abs(v).max() == 0 for p, v in flat.items() if p.startswith("clip/vision_model"))


def _np_log_sigmoid(x):
  return -np.logaddexp(0, -x)


def reference(views_sum, global_map, mask, label, contexts, tau1, tau2, gamma, w=(1.0, 1.0, 1.0)):
  """numpy from DESIGN §7, one image and one pixel at a time where that is clearer."""
  b, h, wd, c = views_sum.shape
  seg_nll, seg_n, cls, gpr = 0.0, 0, [], np.zeros((b, c))
  for i in range(b):
    keep = mask[i].reshape(-1)
    m0 = global_map[i].reshape(-1, c)[keep]                       # pixels that count
    for k in range(c):
      e = np.exp(gamma * m0[:, k] - (gamma * m0[:, k]).max())
      gpr[i, k] = (m0[:, k] * e / e.sum()).sum() / tau2           # (Σ_p m0·softmax_p(γ m0)) / τ2
    g = 1 / (1 + np.exp(-gpr[i]))
    z = tau1 * views_sum[i].reshape(-1, c)[keep]
    mf = np.exp(z - z.max(1, keepdims=True))
    mf /= mf.sum(1, keepdims=True)                                # m_f = softmax_c(τ1 Σ m_i)
    m = mf * g                                                    # m = m_f · g
    lab = label[i].reshape(-1)[keep]
    for p in range(len(lab)):
      if 0 <= lab[p] < c:
        seg_nll -= np.log(m[p, lab[p]] / m[p].sum())
        seg_n += 1
    present = np.isin(np.arange(c), lab[(lab >= 0) & (lab < c)]).astype(float)
    cls.append(-(present * np.log(g) + (1 - present) * np.log(1 - g)))
  means = contexts[1:].mean(1)
  means /= np.linalg.norm(means, axis=1, keepdims=True)
  oc = sum(abs(means[i] @ means[j]) for i in range(len(means)) for j in range(i + 1, len(means)))
  terms = {"loss_seg": seg_nll / seg_n, "loss_cls": np.mean(cls), "loss_oc": oc}
  return w[0] * terms["loss_seg"] + w[1] * terms["loss_cls"] + w[2] * terms["loss_oc"], terms, gpr


def _inputs(seed=0, b=3, h=6, w=7, c=5):
  rng = np.random.default_rng(seed)
  views_sum = rng.uniform(-0.6, 0.9, (b, h, w, c)).astype(np.float32)
  global_map = rng.uniform(-0.3, 0.4, (b, h, w, c)).astype(np.float32)
  label = rng.integers(0, c, (b, h, w)).astype(np.int32)
  label[0, :2] = 255                     # void
  label[1, :, 3:] = 255                  # e.g. unseen classes and padding
  label[2, 1, 1] = c + 3                 # out of range: ignored too
  contexts = rng.normal(0, 0.02, (4, 3, 8)).astype(np.float32)
  return views_sum, global_map, label, contexts


def _ours(views_sum, global_map, label, contexts, tau1, tau2, gamma):
  import ml_collections
  c = global_map.shape[-1]
  mask = (label >= 0) & (label < c)
  log_m, logits = mvp_seg.multi_view_segmentation(views_sum, global_map, mask, tau1, tau2, gamma)
  weights = ml_collections.ConfigDict(dict(seg_weight=1.0, cls_weight=1.0, oc_weight=1.0))
  total, terms = mvp_seg.loss_terms(log_m, logits, contexts, label, c, weights)
  return total, terms, logits


@pytest.mark.parametrize("tau1,tau2,gamma", [(30.0, 0.07, 50.0), (5.0, 0.5, 3.0)])
def test_losses_and_global_prompt_refining_equal_numpy(tau1, tau2, gamma):
  views_sum, global_map, label, contexts = _inputs()
  total, terms, logits = _ours(*map(jnp.asarray, (views_sum, global_map, label, contexts)), tau1, tau2, gamma)
  mask = (label >= 0) & (label < global_map.shape[-1])
  ref_total, ref_terms, ref_gpr = reference(views_sum, global_map, mask, label, contexts, tau1, tau2, gamma)
  np.testing.assert_allclose(logits, ref_gpr, rtol=1e-5, atol=1e-5)
  for k in ref_terms:
    np.testing.assert_allclose(terms[k], ref_terms[k], rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  assert float(orthogonal_constraint_loss(jnp.asarray(contexts[1:2]))) == 0.0  # one view: no pair


def test_ignored_pixels_never_reach_a_loss():
  """Unseen-class (ignored) pixels hold NaN and inf: the loss and its gradient do not change."""
  views_sum, global_map, label, contexts = _inputs(seed=1)
  ignored = ~((label >= 0) & (label < global_map.shape[-1]))
  poisoned = [np.where(ignored[..., None], v, x) for v, x in
              ((np.nan, views_sum), (np.inf, global_map))]

  def loss(vs, gm):
    return _ours(vs, gm, jnp.asarray(label), jnp.asarray(contexts), 30.0, 0.07, 50.0)[0]
  clean, clean_grad = jax.value_and_grad(loss, (0, 1))(jnp.asarray(views_sum), jnp.asarray(global_map))
  dirty, dirty_grad = jax.value_and_grad(loss, (0, 1))(*map(jnp.asarray, poisoned))
  assert np.isfinite(dirty) and float(dirty) == float(clean)
  for a, b in zip(clean_grad, dirty_grad):
    assert np.isfinite(b).all()
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(b)[ignored] == 0).all()


def test_trained_and_evaluated_under_the_zero_shot_protocol_through_the_shared_code(tmp_path):
  """The :demo recipe shrunk: the trainer holds out the unseen classes, the zero_shot evaluator
  reports seen/unseen/hIoU with the MaskCLIP baseline, and evaluate's loader reads the workdir
  (tests/test_method_contract.py checks that loader's numbers equal the trainer's evaluator's)."""
  from configs.mvp_seg_vitb16 import get_config
  from ovs_jax.inference.segmentation_model import build_from_checkpoint
  from ovs_jax.restore import restore_workdir
  from ovs_jax.trainer import train_and_evaluate
  from trainer_helpers import apply_overrides
  config = apply_overrides(get_config("demo"), {
      "clip.weights": "random", "data.crop_size": 64,
      "evals.zero_shot.short_side": 64, "evals.zero_shot.max_images": 8, "evals.zero_shot.every": 0,
      "evals.pictures.every": -1, "train.steps": 4, "train.ckpt_every": 4, "train.log_every": 1})
  result = train_and_evaluate(config, tmp_path)
  zs = result["evals"]["zero_shot"]
  assert zs["unseen_classes"] == ["snow", "tiled floor", "star", "kite", "car", "mushroom",
                                  "umbrella"] and zs["num_images"] == 8
  assert {"mIoU_seen", "mIoU_unseen", "hIoU"} <= set(zs) and "hIoU" in zs["baseline"]
  _, _, state, step = restore_workdir(tmp_path)
  assert step == 4 and set(state["params"]) == {"contexts", "log_tau1", "log_tau2"}  # the paper's gate: no threshold
  assert build_from_checkpoint(tmp_path, [["sky"], ["grass", "lawn"], ["sand"]]).class_names == \
      ["sky", "grass", "sand"]  # any vocabulary



def test_clip_resnet_attention_pool_variant():
  """A CLIP ResNet gives MaskCLIP's attention-pool value path (`resnet_clip.py`): the same method."""
  clip = clip_family.build_clip(clip_family.get_arch("resnet_tiny"), rngs=nnx.Rngs(0))
  model = _model(clip)
  ids, eot, index = mvp_seg.prompt_context(model, [[n] for n in NAMES])
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 96, 3)), jnp.float32)
  log_m, logits = nnx.jit(lambda m, p: m(p, m.text_features(ids, eot), index, (64, 96),
                                          jnp.ones((1, 64, 96), bool)))(model, pixels)
  assert log_m.shape == (1, 64, 96, 5) and logits.shape == (1, 5)
  assert np.isfinite(log_m).all() and clip.dense_stride == 32
