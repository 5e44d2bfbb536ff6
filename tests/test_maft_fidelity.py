"""MAFT+ as the official code computes it (MAFT-Plus `maft/maft_plus.py`, FC-CLIP's
`fcclip_transformer_decoder.py`, `maft/fcclip.py`): gradient path, out-of-vocabulary pooling order,
the in-vocabulary class path, RC on trunk features and the inference fusions, each against a
PyTorch / numpy re-derivation written here from those files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from flax import nnx

from ovs_jax.heads.mask_former import prediction_sets
from ovs_jax.interchange.clip_weights import save_hf_clip
from ovs_jax.losses.mask_aware import mask_aware_loss
from ovs_jax.losses.representation_compensation import representation_compensation_loss
from ovs_jax.losses.set_criterion import MaskLossConfig, mask_classification_loss
from ovs_jax.methods import maft_plus
from trainer_helpers import tiny_config

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def model():
  m = maft_plus.METHOD.build_model(tiny_config(model__dtype="float32", model__cdt_dense="official"))
  # The student moves away from the teacher (as after training) so RC has a gradient.
  vision = nnx.state(m.clip.vision_model, nnx.Param)
  keys = iter(jax.random.split(jax.random.PRNGKey(3), len(jax.tree.leaves(vision))))
  nnx.update(m.clip.vision_model,
             jax.tree.map(lambda p: p + 0.02 * jax.random.normal(next(keys), p.shape), vision))
  return m


def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def _vocab(d, s=5):
  text = RNG.normal(size=(s, d))
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  return jnp.asarray(text, jnp.float32), jnp.asarray([[0, 3], [1, -1], [2, 4], [4, -1]])


def _torch_max_over_synonyms(logits, index):
  return torch.stack([logits[..., [i for i in row if i >= 0]].max(-1).values for row in index.tolist()], -1)


def _torch_mask_pool(x, masks):
  """FC-CLIP MaskPooling: x (B, C, h, w), masks (B, Q, H, W) resized, binarised > 0, averaged."""
  if masks.shape[-2:] != x.shape[-2:]:
    masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
  m = (masks > 0).to(x.dtype)
  return torch.einsum("bchw,bqhw->bqc", x, m / (m.sum((-1, -2), keepdim=True) + 1e-8))


def _params(module):
  return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_mask_classification_losses_never_reach_the_clip_image_tower(model):
  d = model.clip.config.projection_dim
  text, index = _vocab(d)
  x = jnp.asarray(RNG.normal(size=(2, 64, 96, 3)), jnp.float32)
  gt = jnp.asarray(RNG.random((2, 3, 64, 96)) > 0.5)
  targets = {"labels": jnp.asarray([[0, 2, 1], [3, 1, 0]]), "masks": gt,
             "valid": jnp.asarray([[True, True, False], [True, True, True]])}
  teacher = model.teacher_trunk(x)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  c = tiny_config().loss
  cfg = MaskLossConfig.from_config(c, num_points=64)

  def terms(p):
    out = nnx.merge(graphdef, p, rest)(x, text, index)
    mask_cls = mask_classification_loss(jax.random.PRNGKey(0), prediction_sets(out), targets, config=cfg)[0]
    return {"mask_classification": mask_cls,
            "mask_aware": mask_aware_loss(out["out_vocab_logits"], out["pred_masks"], targets),
            "rc": representation_compensation_loss(out["trunk"], teacher)}

  grads = {name: jax.grad(lambda p, n=name: terms(p)[n])(params) for name in ("mask_classification",
                                                                              "mask_aware", "rc")}
  flat = {n: {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(g)} for n, g in grads.items()}
  tower = [k for k in flat["rc"] if k.startswith("clip/vision_model/")]
  assert len(tower) > 20
  for k in tower:  # CE, BCE and dice of every prediction set: exactly zero on every CLIP parameter
    assert not np.any(flat["mask_classification"][k]), k
  assert any(np.any(flat["mask_classification"][k]) for k in flat["rc"] if k.startswith("head/"))
  # The CLIP image tower is trained by the mask-aware loss and by RC.
  for name in ("mask_aware", "rc"):
    moved = [k for k in tower if np.any(flat[name][k])]
    assert len(moved) > 0.9 * len(tower), (name, sorted(set(tower) - set(moved))[:5])


def test_out_of_vocab_pools_trunk_features_then_applies_the_clip_head(model):
  d = model.clip.config.projection_dim
  text, index = _vocab(d)
  trunk = jnp.asarray(RNG.normal(size=(2, 3, 5, model.clip.config.vision.hidden_size)), jnp.float32)
  masks = RNG.normal(size=(2, 4, 12, 20)).astype(np.float32) * 3
  masks[1, 2] = -5.0  # an empty mask pools to zero
  got = np.asarray(model.out_of_vocab_logits(trunk, jnp.asarray(masks), text, index))

  p = _params(model.clip)
  ln = p["vision_model/post_layernorm/scale"], p["vision_model/post_layernorm/bias"]
  proj = _t(p["visual_projection/kernel"])
  eps = model.clip.config.vision.layer_norm_eps

  def head(x):  # OpenCLIP/HF ViT head: post-LN then projection, on the pooled vector
    return F.layer_norm(x, x.shape[-1:], _t(ln[0]), _t(ln[1]), eps) @ proj
  pooled = _torch_mask_pool(_t(trunk).permute(0, 3, 1, 2), _t(masks))
  dense = head(_t(trunk))
  # MP `visual_prediction_forward_convnext`: the NCHW map reshaped to (B*h*w, C) without a permute
  # (model.cdt_dense="official", the recipes' default) before the head; CDT: tests/test_maft_cdt.py.
  assert model.cdt_dense == "official"
  b, h, w, c = trunk.shape
  cdt_in = head(_t(trunk).permute(0, 3, 1, 2).reshape(b * h * w, c)).reshape(b, h, w, -1)
  transferred = _t(model.cdt(text, jnp.asarray(cdt_in.numpy(), jnp.float32)))
  scale = min(np.exp(float(model.clip.logit_scale[...])), 100.0)
  want = _torch_max_over_synonyms(scale * torch.einsum("bqd,bsd->bqs", F.normalize(head(pooled), dim=-1),
                                                       transferred), index)
  np.testing.assert_allclose(got, want.numpy(), atol=2e-4, rtol=1e-4)
  # The order matters (LayerNorm is not linear): pooling the dense CLIP map gives other logits.
  other = _torch_mask_pool(dense.permute(0, 3, 1, 2), _t(masks))
  wrong = _torch_max_over_synonyms(scale * torch.einsum("bqd,bsd->bqs", F.normalize(other, dim=-1),
                                                        transferred), index)
  assert np.abs(wrong.numpy() - want.numpy()).max() > 1e-2


def test_in_vocab_class_path_is_fc_clips(model):
  d, hid = model.clip.config.projection_dim, tiny_config().model.hidden_dim
  text, index = _vocab(d)
  feats = RNG.normal(size=(2, 4, hid)).astype(np.float32)
  masks = RNG.normal(size=(2, 4, 6, 10)).astype(np.float32) * 3
  masks[0, 1] = -1.0  # empty
  mask_features = RNG.normal(size=(2, 6, 10, hid)).astype(np.float32)
  got = np.asarray(model.in_vocab_logits({"class_features": jnp.asarray(feats), "pred_masks": jnp.asarray(masks)},
                                         jnp.asarray(mask_features), text, index))

  p = _params(model)
  pooled = _torch_mask_pool(_t(mask_features).permute(0, 3, 1, 2), _t(masks))
  pooled = F.layer_norm(pooled, (hid,), _t(p["mask_pooling_norm/scale"]), _t(p["mask_pooling_norm/bias"]), 1e-5)
  x = _t(feats) + pooled @ _t(p["mask_pooling_proj/kernel"]) + _t(p["mask_pooling_proj/bias"])
  for i in range(3):  # class_embed: MLP(hidden, hidden, embed, 3)
    x = x @ _t(p[f"in_vocab/mlp/layers/{i}/kernel"]) + _t(p[f"in_vocab/mlp/layers/{i}/bias"])
    x = torch.relu(x) if i < 2 else x
  classes = torch.cat([_t(text), F.normalize(_t(p["in_vocab/void_embedding"]), dim=-1)])
  scale = torch.clamp(_t(p["in_vocab/logit_scale"]).exp(), max=100)
  logits = scale * F.normalize(x, dim=-1) @ classes.T
  want = torch.cat([_torch_max_over_synonyms(logits[..., :-1], index), logits[..., -1:]], -1)
  np.testing.assert_allclose(got, want.numpy(), atol=2e-4, rtol=1e-4)


def test_rc_compares_trunk_features_of_student_and_teacher(model, tmp_path):
  """loss_rc from the training loss equals the official RC on transformers' last hidden states."""
  x = RNG.normal(size=(1, 48, 80, 3)).astype(np.float32)  # a non-square 3x5 grid
  text, index = _vocab(model.clip.config.projection_dim)
  out = model(jnp.asarray(x), text, index)
  got = float(representation_compensation_loss(out["trunk"], model.teacher_trunk(jnp.asarray(x))))

  def hf_trunk(vision_state, name):
    clip = nnx.clone(model.clip)
    nnx.update(clip.vision_model, vision_state)
    save_hf_clip(clip, tmp_path / name)
    hf = transformers.CLIPModel.from_pretrained(tmp_path / name).eval()
    with torch.no_grad():
      h = hf.vision_model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2),
                          interpolate_pos_encoding=True).last_hidden_state[:, 1:]
    return h.double().reshape(1, 3, 5, -1).permute(0, 3, 1, 2)  # NCHW, before post-LN
  student = hf_trunk(nnx.state(model.clip.vision_model), "student")
  teacher = hf_trunk(nnx.state(model.teacher), "teacher")

  def pod(t):  # MAFT+ `_global_pod`, spp scales [1, 2, 4], width taken before the square resize
    b, w = t.shape[0], t.shape[-1]
    side = max(t.shape[-2:])
    t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
    parts = []
    for s in (1, 2, 4):
      a = F.avg_pool2d(t, kernel_size=w // s)
      parts += [a.sum(dim=2).view(b, -1), a.sum(dim=3).view(b, -1)]
    return torch.cat(parts, dim=1)
  want = F.smooth_l1_loss(pod(student.clamp(min=0)), pod(teacher.clamp(min=0))).item()
  assert want > 1e-4
  np.testing.assert_allclose(got, want, rtol=2e-4)


def _official_semantic_inference(pred_logits, out_logits, masks, hw, seen=None, alpha=0.4, beta=0.8):
  """MAFT+ `forward` (inference) / FC-CLIP's ensemble then `semantic_inference`, per batch item."""
  pred_logits, out_logits, masks = _t(pred_logits), _t(out_logits), _t(masks)
  if seen is None:
    cls = out_logits
  else:
    p_in, p_out = pred_logits[..., :-1].softmax(-1), out_logits.softmax(-1)
    overlap = torch.tensor(seen, dtype=torch.float64)
    cls = ((p_in ** (1 - alpha) * p_out ** alpha).log() * overlap
           + (p_in ** (1 - beta) * p_out ** beta).log() * (1 - overlap))
  void = F.softmax(pred_logits, dim=-1)[..., -1:]
  probs = torch.log(torch.cat([cls.softmax(-1) * (1.0 - void), void], -1) + 1e-8)
  masks = F.interpolate(masks, size=hw, mode="bilinear", align_corners=False)
  return torch.stack([torch.einsum("qc,qhw->chw", F.softmax(c, -1)[..., :-1], m.sigmoid())
                      for c, m in zip(probs, masks)]).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("ensemble", [False, True])
def test_inference_fusion_and_geometric_ensemble_match_the_official_order(ensemble):
  b, q, c = 2, 6, 5
  out = {"pred_logits": RNG.normal(size=(b, q, c + 1)).astype(np.float32) * 3,
         "out_vocab_logits": RNG.normal(size=(b, q, c)).astype(np.float32) * 5,
         "pred_masks": RNG.normal(size=(b, q, 6, 10)).astype(np.float32) * 2}
  seen = np.array([True, False, True, False, False]) if ensemble else None
  got = maft_plus.semantic_scores({k: jnp.asarray(v) for k, v in out.items()}, (24, 40),
                                  None if seen is None else jnp.asarray(seen), 0.4, 0.8)
  want = _official_semantic_inference(out["pred_logits"], out["out_vocab_logits"], out["pred_masks"],
                                      (24, 40), seen)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
