"""Our CLIP ModifiedResNet tower equals a float64 PyTorch re-derivation of CLIP's `ModifiedResNet`
(OpenAI clip/model.py, OpenCLIP modified_resnet.py), MAFT+'s `extract_features_resnet` /
`visual_prediction_forward_resnet` (maft/modeling/backbone/clip.py) and MaskCLIP's dense head
(mmseg/models/decode_heads/maskclip_head.py), written here from their formulas (open_clip needs
torchvision, which does not import beside the CPU torch build), on the same random OpenCLIP-named
weights with BatchNorm running statistics away from (0, 1)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.interchange.torch_state import export_state_dict, key_map
from ovs_jax.models.modified_resnet import PRESETS, ModifiedResNetConfig, ModifiedResNetImageTower
from tower_helpers import load_tower, remat_grads, run_jitted, torch_shapes

TINY = PRESETS["tiny"]
# Another shape family: grid 3 (so a 2x3 res5 map resizes the embedding down), 16 heads of 32.
SMALL = ModifiedResNetConfig((1, 2, 1, 1), width=16, embed_dim=48, image_size=96, head_width=32)
BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def clip_shapes(cfg):
  """{OpenCLIP `visual.*` name without the prefix: shape}, parameters and BatchNorm running
  statistics, from CLIP's module definitions."""
  w, out = cfg.width, {}

  def conv(name, cout, cin, k):
    out[f"{name}.weight"] = (cout, cin, k, k)

  def bn(name, c):
    out.update({f"{name}.{k}": (c,) for k in BN_KEYS})
  conv("conv1", w // 2, 3, 3), bn("bn1", w // 2)
  conv("conv2", w // 2, w // 2, 3), bn("bn2", w // 2)
  conv("conv3", w, w // 2, 3), bn("bn3", w)
  inplanes = w
  for i, blocks in enumerate(cfg.layers):
    p = w * 2 ** i
    for j in range(blocks):
      b = f"layer{i + 1}.{j}"
      conv(f"{b}.conv1", p, inplanes, 1), bn(f"{b}.bn1", p)
      conv(f"{b}.conv2", p, p, 3), bn(f"{b}.bn2", p)
      conv(f"{b}.conv3", 4 * p, p, 1), bn(f"{b}.bn3", 4 * p)
      if j == 0:  # stride 2, or (layer1) inplanes != 4 * planes: Sequential(-1 pool, 0 conv, 1 bn)
        conv(f"{b}.downsample.0", 4 * p, inplanes, 1), bn(f"{b}.downsample.1", 4 * p)
      inplanes = 4 * p
  c, g = 32 * w, cfg.image_size // 32
  out["attnpool.positional_embedding"] = (g * g + 1, c)
  for k in "qkv":
    out |= {f"attnpool.{k}_proj.weight": (c, c), f"attnpool.{k}_proj.bias": (c,)}
  out |= {"attnpool.c_proj.weight": (cfg.embed_dim, c), "attnpool.c_proj.bias": (cfg.embed_dim,)}
  return out


def random_state_dict(cfg, seed=0):
  """Trained-looking statistics: running means off 0, variances log-normal around 1, BN affine
  parameters off (1, 0), a positional embedding that matters; plus PyTorch's step counters."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in clip_shapes(cfg).items():
    if k.endswith("running_var"):
      v = np.exp(0.7 * rng.standard_normal(shape))
    elif k.endswith("running_mean"):
      v = 0.3 * rng.standard_normal(shape)
    elif len(shape) == 1 and k.endswith("weight"):  # BatchNorm gamma
      v = 1 + 0.3 * rng.standard_normal(shape)
    elif len(shape) == 1:
      v = 0.1 * rng.standard_normal(shape)
    elif k.endswith("positional_embedding"):
      v = 0.5 * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    sd[k] = v.astype(np.float32)
  for k in [k for k in sd if k.endswith("running_mean")]:
    sd[k.replace("running_mean", "num_batches_tracked")] = np.array(1000, np.int64)
  return sd


def _bn(x, sd, name):
  stats = (sd[f"{name}.{k}"] for k in ("running_mean", "running_var", "weight", "bias"))
  return F.batch_norm(x, *stats, training=False, eps=1e-5)


def _bottleneck(x, sd, name, stride):
  out = F.relu(_bn(F.conv2d(x, sd[f"{name}.conv1.weight"]), sd, f"{name}.bn1"))
  out = F.relu(_bn(F.conv2d(out, sd[f"{name}.conv2.weight"], padding=1), sd, f"{name}.bn2"))
  if stride > 1:
    out = F.avg_pool2d(out, stride)
  out = _bn(F.conv2d(out, sd[f"{name}.conv3.weight"]), sd, f"{name}.bn3")
  identity = x
  if f"{name}.downsample.0.weight" in sd:
    identity = F.avg_pool2d(x, stride) if stride > 1 else x
    identity = F.conv2d(identity, sd[f"{name}.downsample.0.weight"])
    identity = _bn(identity, sd, f"{name}.downsample.1")
  return F.relu(out + identity)


def _attention(query, key_value, sd, heads, attn_mask=None):
  """F.multi_head_attention_forward with CLIP's separate q/k/v weights; sequence-first."""
  a = "attnpool"
  return F.multi_head_attention_forward(
      query=query, key=key_value, value=key_value, embed_dim_to_check=key_value.shape[-1],
      num_heads=heads, in_proj_weight=None,
      in_proj_bias=torch.cat([sd[f"{a}.{p}_proj.bias"] for p in "qkv"]),
      bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
      out_proj_weight=sd[f"{a}.c_proj.weight"], out_proj_bias=sd[f"{a}.c_proj.bias"],
      use_separate_proj_weight=True, q_proj_weight=sd[f"{a}.q_proj.weight"],
      k_proj_weight=sd[f"{a}.k_proj.weight"], v_proj_weight=sd[f"{a}.v_proj.weight"],
      training=False, need_weights=False, attn_mask=attn_mask)[0]


def _spatial_pos(sd, h, w):
  """MAFT+: the grid's positional embedding through F.interpolate(bilinear, align_corners=False)
  -> (hw, C)."""
  pos = sd["attnpool.positional_embedding"]
  g, c = int(round((pos.shape[0] - 1) ** 0.5)), pos.shape[1]
  grid = pos[1:].T.reshape(1, c, g, g)
  return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).reshape(c, h * w).T


def _masked_pool(x, masks, sd, heads):
  """MAFT+ `visual_prediction_forward_resnet`, with its `F.inteprolate` typo fixed."""
  b, c, h, w = x.shape
  if masks.shape[-2:] != (h, w):
    masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
  q = masks.shape[1]
  key_value = x.reshape(b, c, h * w).permute(2, 0, 1) + _spatial_pos(sd, h, w)[:, None]
  masks = (masks.reshape(b, q, h * w) > 0).to(masks.dtype)
  query = x.reshape(b, c, h * w).permute(2, 0, 1).mean(0, keepdim=True)
  query = (query + sd["attnpool.positional_embedding"][:1, None]).repeat_interleave(q, dim=0)
  attn_mask = (masks < 0.5).unsqueeze(1).expand(-1, heads, -1, -1).reshape(b * heads, q, h * w)
  return _attention(query, key_value, sd, heads, attn_mask).permute(1, 0, 2).numpy()


def reference(cfg, sd, pixels, masks):
  """CLIP ModifiedResNet in NCHW float64: MAFT+ features, attention-pool embedding (positional
  embedding resized as MAFT+ does), MaskCLIP dense map, MAFT+ masked pooling."""
  sd = {k: torch.tensor(v, dtype=torch.float64) for k, v in sd.items() if "num_batches" not in k}
  x = torch.tensor(pixels, dtype=torch.float64).permute(0, 3, 1, 2)
  x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=1), sd, "bn1"))
  x = F.relu(_bn(F.conv2d(x, sd["conv2.weight"], padding=1), sd, "bn2"))
  x = F.relu(_bn(F.conv2d(x, sd["conv3.weight"], padding=1), sd, "bn3"))
  out = {"stem": x}
  x = F.avg_pool2d(x, 2)
  for i, blocks in enumerate(cfg.layers):
    for j in range(blocks):
      x = _bottleneck(x, sd, f"layer{i + 1}.{j}", 2 if i and not j else 1)
    out[f"res{i + 2}"] = x
  out["clip_vis_dense"] = x
  b, c, h, w = x.shape
  tokens = x.reshape(b, c, h * w).permute(2, 0, 1)  # (HW)BC
  tokens = torch.cat([tokens.mean(0, keepdim=True), tokens])
  pos = torch.cat([sd["attnpool.positional_embedding"][:1], _spatial_pos(sd, h, w)])
  tokens = tokens + pos[:, None]
  embedding = _attention(tokens[:1], tokens, sd, cfg.heads)[0]
  # MaskCLIP's ResNet head: v_proj and c_proj as 1x1 convs on the backbone's last map.
  v = F.conv2d(x, sd["attnpool.v_proj.weight"][:, :, None, None], sd["attnpool.v_proj.bias"])
  dense = F.conv2d(v, sd["attnpool.c_proj.weight"][:, :, None, None], sd["attnpool.c_proj.bias"])
  out = {k: v.permute(0, 2, 3, 1).numpy() for k, v in out.items()}
  out |= {"embedding": embedding.numpy(), "dense": dense.permute(0, 2, 3, 1).numpy(),
          "masked": _masked_pool(x, torch.tensor(masks, dtype=torch.float64), sd, cfg.heads)}
  return out


def loaded(cfg, sd, **kw):
  return load_tower(lambda: ModifiedResNetImageTower(cfg, rngs=nnx.Rngs(0), **kw), sd)


def ours(cfg, sd, pixels, masks, **kw):
  def run(m, pixels, masks):
    feats = m.features(pixels)
    return {**feats, "embedding": m(pixels), "dense": m.dense_features(pixels),
            "masked": m.masked_attention_pool(feats["res5"], masks)}
  return run_jitted(loaded(cfg, sd, **kw), run, pixels, masks)


def random_masks(rng, b, q, h, w):
  """Mask logits; query 0 is full, the rest random (a few pixels each at least)."""
  m = rng.standard_normal((b, q, h, w)).astype(np.float32)
  m[:, 0] = np.abs(m[:, 0]) + 0.1
  m[:, 1:, 0, 0] = 1.0
  return m


def assert_close(got, ref):
  assert sorted(got) == sorted(ref)
  for k in ref:
    assert got[k].shape == ref[k].shape, k
    np.testing.assert_allclose(got[k], ref[k], atol=1e-4, rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("cfg,size", [(TINY, (71, 101)), (TINY, (64, 64)), (SMALL, (70, 100))],
                         ids=["tiny-71x101", "tiny-native", "small-70x100"])
def test_matches_clip_maft_maskclip_reference(cfg, size):
  sd = random_state_dict(cfg)
  rng = np.random.default_rng(1)
  pixels = rng.standard_normal((2, *size, 3)).astype(np.float32)
  # The stride-2 stem conv (padding 1) gives ceil(H/2); each 2x2 pool floors: 71x101 -> 36x51,
  # then 18x25, 9x12, 4x6, 2x3 (a grid the embedding is resized to).
  stem = ((size[0] + 1) // 2, (size[1] + 1) // 2)
  h, w = stem[0] // 16, stem[1] // 16
  masks = random_masks(rng, 2, 5, h, w)
  ref, got = reference(cfg, sd, pixels, masks), ours(cfg, sd, pixels, masks)
  assert got["stem"].shape == (2, *stem, cfg.width)
  assert got["res5"].shape == (2, h, w, 32 * cfg.width)
  assert [got[f"res{i + 2}"].shape[-1] for i in range(4)] == list(cfg.channels[1:])
  assert got["embedding"].shape == (2, cfg.embed_dim)
  assert got["dense"].shape == (2, h, w, cfg.embed_dim)
  assert got["masked"].shape == (2, 5, cfg.embed_dim)
  assert_close(got, ref)


def test_masks_at_another_resolution_are_resized_then_binarised():
  sd = random_state_dict(TINY)
  rng = np.random.default_rng(4)
  pixels = rng.standard_normal((1, 70, 100, 3)).astype(np.float32)
  masks = random_masks(rng, 1, 4, 9, 13)  # resized down to the 2x3 res5 grid
  masks[:, 1:, 0, 0] = 5.0
  ref, got = reference(TINY, sd, pixels, masks), ours(TINY, sd, pixels, masks)
  np.testing.assert_allclose(got["masked"], ref["masked"], atol=1e-4, rtol=1e-4)


def test_empty_mask_gives_the_c_proj_bias_without_gradient_leaks():
  """torch >= 2.5 (SDPA's safe softmax, need_weights=False as the official call) gives a fully
  masked row zero attention, so the embedding is c_proj's bias; we match it, finite everywhere."""
  sd = random_state_dict(TINY)
  rng = np.random.default_rng(5)
  pixels = rng.standard_normal((1, 70, 100, 3)).astype(np.float32)
  masks = random_masks(rng, 1, 3, 2, 3)
  masks[0, 2] = -1.0  # empty
  ref = reference(TINY, sd, pixels, masks)["masked"]
  np.testing.assert_allclose(ref[0, 2], sd["attnpool.c_proj.bias"], atol=1e-6)
  got = ours(TINY, sd, pixels, masks)
  np.testing.assert_allclose(got["masked"], ref, atol=1e-4, rtol=1e-4)

  def loss(model, res5, masks, weights):  # weights (Q,): which masks the loss sees
    return jnp.sum(weights[:, None] * model.masked_attention_pool(res5, masks)[0] ** 2)
  grad = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2)))
  model, res5, masks = loaded(TINY, sd), jnp.asarray(got["res5"]), jnp.asarray(masks)
  g_model, g_res5, g_masks = grad(model, res5, masks, jnp.ones(3))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(g_model))
  assert np.isfinite(g_res5).all() and np.abs(g_res5).sum() > 0
  assert not np.asarray(g_masks).any()
  g_model, g_res5, _ = grad(model, res5, masks, jnp.array([0.0, 0.0, 1.0]))  # the empty mask alone
  assert not np.asarray(g_res5).any()
  flat = nnx.to_flat_state(nnx.state(g_model))
  nonzero = {"/".join(map(str, p)) for p, x in flat if np.any(x[...])}
  assert nonzero == {"attnpool/c_proj/bias"}


def test_remat_gives_the_same_embedding_and_gradients():
  sd = random_state_dict(TINY)
  ga, gb = remat_grads(lambda **kw: loaded(TINY, sd, **kw), TINY.image_size)
  # Gradients reach parameters only: running statistics stay frozen.
  assert not [k for k in ga if k[-1] in ("mean", "var")] and ("bn1", "scale") in ga
  # Attention is invariant to a per-query constant added to the keys: k_proj.bias's gradient is 0,
  # and both runs hold only rounding noise there.
  k_bias = ("attnpool", "k_proj", "bias")
  assert max(np.abs(ga.pop(k_bias)).max(), np.abs(gb.pop(k_bias)).max()) < 1e-4
  for k, x in ga.items():  # same maths, other fusions: float32 noise at each gradient's scale
    y = gb[k]
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * np.abs(y).max(), err_msg=str(k))


def test_bfloat16_compute_keeps_float32_params_and_statistics():
  sd = random_state_dict(TINY)
  rng = np.random.default_rng(3)
  pixels = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
  masks = random_masks(rng, 1, 2, 2, 2)
  got = ours(TINY, sd, pixels, masks, dtype=jnp.bfloat16)
  ref = ours(TINY, sd, pixels, masks)
  assert got["res5"].dtype == jnp.bfloat16
  for k in ("embedding", "dense", "masked"):
    a, b = got[k].astype(np.float32).ravel(), ref[k].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99, k
  model = loaded(TINY, sd, dtype=jnp.bfloat16)
  dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat)))}
  assert dtypes == {jnp.dtype("float32")}


def test_state_dict_round_trip_is_bit_identical_with_step_counters():
  sd = random_state_dict(SMALL)
  model = loaded(SMALL, sd)
  back = export_state_dict(model)
  assert sorted(back) == sorted(sd)
  for k, v in sd.items():  # step counters included, as PyTorch's int64
    assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
  # A file without step counters loads (PyTorch's BatchNorm fills them with 0, as we do).
  counters = [k for k in sd if k.endswith("num_batches_tracked")]
  back = export_state_dict(loaded(SMALL, {k: v for k, v in sd.items() if k not in counters}))
  assert all(back[k] == 0 for k in counters)
  keys = key_map(model)
  assert keys["layer2.0.downsample.1.running_var"] == {"path": "layer2/0/downsample/1/var",
                                                      "layout": "rename"}
  assert keys["bn1.weight"] == {"path": "bn1/scale", "layout": "rename"}
  assert keys["layer1.0.conv2.weight"]["layout"] == "hwio_to_oihw"
  broken = {k: v for k, v in sd.items() if k != "bn1.running_var"}
  with pytest.raises(CheckpointError, match="missing key 'bn1.running_var'"):
    loaded(SMALL, broken)


def formula_count(cfg):
  """Parameters (not running statistics) of CLIP's ModifiedResNet, counted by layer."""
  w, h = cfg.width, cfg.width // 2
  n = 27 * h + 9 * h * h + 9 * h * w + 2 * (h + h + w)  # 3 stem convs (no bias) + BN affine
  inplanes = w
  for i, blocks in enumerate(cfg.layers):
    p = w * 2 ** i
    n += inplanes * 4 * p + 8 * p  # first block's shortcut conv + BN
    for _ in range(blocks):
      n += inplanes * p + 9 * p * p + 4 * p * p + 2 * (p + p + 4 * p)
      inplanes = 4 * p
  c, e, g = inplanes, cfg.embed_dim, cfg.image_size // 32
  return n + (g * g + 1) * c + 3 * (c * c + c) + c * e + e


# open_clip docs/model_profile.csv, column image_mparams (millions, 2 decimals; parameters only).
OPENCLIP_IMAGE_MPARAMS = {"RN50": 38.32, "RN101": 56.26}


@pytest.mark.parametrize("name", sorted(OPENCLIP_IMAGE_MPARAMS))
def test_full_size_presets_have_clip_shapes_and_openclip_counts(name):
  cfg = PRESETS[name]
  assert cfg.heads == 32  # CLIP's build_model: vision_width * 32 // 64
  model = nnx.eval_shape(lambda: ModifiedResNetImageTower(cfg, rngs=nnx.Rngs(0)))
  assert torch_shapes(model) == clip_shapes(cfg)  # parameters and running statistics
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == formula_count(cfg)
  assert round(n / 1e6, 2) == OPENCLIP_IMAGE_MPARAMS[name]
  graphdef, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graphdef, state)
    feats = m.features(x)
    masked = m.masked_attention_pool(feats["res5"], jnp.zeros((1, 3, 7, 7)))
    return m(x), m.dense_features(x), masked, feats
  size = cfg.image_size
  pixels = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  emb, dense, masked, feats = jax.eval_shape(run, state, pixels)
  assert emb.shape == (1, cfg.embed_dim) and masked.shape == (1, 3, cfg.embed_dim)
  assert dense.shape == (1, 7, 7, cfg.embed_dim)
  assert [feats[k].shape for k in ("stem", "res2", "res3", "res4", "res5")] == [
      (1, size // s, size // s, c) for s, c in zip((2, 4, 8, 16, 32), cfg.channels)]


@pytest.mark.slow
def test_rn50_full_size_matches_reference():
  cfg = PRESETS["RN50"]
  sd = random_state_dict(cfg)
  rng = np.random.default_rng(6)
  pixels = rng.standard_normal((1, 224, 256, 3)).astype(np.float32)
  masks = random_masks(rng, 1, 3, 7, 8)
  ref, got = reference(cfg, sd, pixels, masks), ours(cfg, sd, pixels, masks)
  for k in ("res5", "embedding", "dense", "masked"):
    scale = np.abs(ref[k]).max()
    np.testing.assert_allclose(got[k] / scale, ref[k] / scale, atol=1e-4, err_msg=k)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="expected 4 stages"):
    ModifiedResNetConfig((1, 1, 1))
  with pytest.raises(ValueError, match="head_width"):
    dataclasses.replace(TINY, head_width=48)
