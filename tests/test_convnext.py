"""Our OpenCLIP ConvNeXt tower equals a PyTorch re-derivation of timm's `ConvNeXt` + OpenCLIP's
`TimmModel` head, on the same random OpenCLIP-named weights. open_clip and timm need
torchvision, which does not import beside the CPU torch build, so the reference is written here
from their formulas (timm/models/convnext.py, timm/layers/{norm,mlp,classifier}.py,
open_clip/timm_model.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from ovs_jax.models.convnext import PRESETS, ConvNeXtImageTower
from tower_helpers import load_tower, remat_grads, run_jitted, torch_shapes

TINY = PRESETS["tiny"]


def timm_shapes(cfg):
  """{OpenCLIP `visual.*` name without the prefix: shape}, from timm's module definitions."""
  d, out = cfg.dims, {}
  out |= {"trunk.stem.0.weight": (d[0], 3, 4, 4), "trunk.stem.0.bias": (d[0],),
          "trunk.stem.1.weight": (d[0],), "trunk.stem.1.bias": (d[0],)}
  for i, c in enumerate(d):
    s = f"trunk.stages.{i}"
    if i:  # stage 0 keeps stride 4 and width: its downsample is nn.Identity
      out |= {f"{s}.downsample.0.weight": (d[i - 1],), f"{s}.downsample.0.bias": (d[i - 1],),
              f"{s}.downsample.1.weight": (c, d[i - 1], 2, 2), f"{s}.downsample.1.bias": (c,)}
    for j in range(cfg.depths[i]):
      b = f"{s}.blocks.{j}"
      out |= {f"{b}.conv_dw.weight": (c, 1, 7, 7), f"{b}.conv_dw.bias": (c,),
              f"{b}.norm.weight": (c,), f"{b}.norm.bias": (c,),
              f"{b}.mlp.fc1.weight": (4 * c, c), f"{b}.mlp.fc1.bias": (4 * c,),
              f"{b}.mlp.fc2.weight": (c, 4 * c), f"{b}.mlp.fc2.bias": (c,), f"{b}.gamma": (c,)}
  out |= {"trunk.head.norm.weight": (d[-1],), "trunk.head.norm.bias": (d[-1],)}
  if cfg.head == "linear":
    out["head.proj.weight"] = (cfg.embed_dim, d[-1])
  else:
    h = cfg.mlp_hidden
    out |= {"head.mlp.fc1.weight": (h, d[-1]), "head.mlp.fc1.bias": (h,),
            "head.mlp.fc2.weight": (cfg.embed_dim, h)}
  return out


def random_state_dict(cfg, seed=0):
  """Non-trivial weights: norms and gamma away from 1/0 (gamma's 1e-6 init hides the blocks)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in timm_shapes(cfg).items():
    if k.endswith("gamma") or (len(shape) == 1 and k.endswith("weight")):
      v = 1 + 0.3 * rng.standard_normal(shape)
    elif len(shape) == 1:
      v = 0.1 * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    sd[k] = v.astype(np.float32)
  return sd


def _ln(x, sd, name, eps):  # layer norm over the last axis
  return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _ln2d(x, sd, name, eps):  # timm LayerNorm2d: over C of NCHW
  return _ln(x.permute(0, 2, 3, 1), sd, name, eps).permute(0, 3, 1, 2)


def _mlp(x, sd, name):
  x = F.gelu(F.linear(x, sd[f"{name}.fc1.weight"], sd[f"{name}.fc1.bias"]))
  return F.linear(x, sd[f"{name}.fc2.weight"], sd.get(f"{name}.fc2.bias"))


def reference(cfg, sd, pixels, vectors, keeps=None):
  """timm ConvNeXt forward_intermediates + forward_head, OpenCLIP head; NCHW float64. `keeps`:
  per block (B,) DropPath scales applied to the branch, as timm's ConvNeXtBlock in train mode."""
  sd = {k: torch.tensor(v, dtype=torch.float64) for k, v in sd.items()}
  eps = cfg.eps
  x = torch.tensor(pixels, dtype=torch.float64).permute(0, 3, 1, 2)
  x = _ln2d(F.conv2d(x, sd["trunk.stem.0.weight"], sd["trunk.stem.0.bias"], stride=4), sd,
            "trunk.stem.1", eps)
  out = {"stem": x}
  for i, c in enumerate(cfg.dims):
    s = f"trunk.stages.{i}"
    if i:
      x = _ln2d(x, sd, f"{s}.downsample.0", eps)
      x = F.conv2d(x, sd[f"{s}.downsample.1.weight"], sd[f"{s}.downsample.1.bias"], stride=2)
    for j in range(cfg.depths[i]):
      b = f"{s}.blocks.{j}"
      h = F.conv2d(x, sd[f"{b}.conv_dw.weight"], sd[f"{b}.conv_dw.bias"], padding=3, groups=c)
      h = _mlp(_ln(h.permute(0, 2, 3, 1), sd, f"{b}.norm", eps), sd, f"{b}.mlp")
      h = (h * sd[f"{b}.gamma"]).permute(0, 3, 1, 2)
      if keeps is not None:
        h = h * torch.tensor(np.asarray(keeps.pop(0)), dtype=torch.float64)[:, None, None, None]
      x = x + h
    out[f"res{i + 2}"] = x
  out["clip_vis_dense"] = x  # norm_pre = Identity

  def head(v):  # trunk.head (norm; fc = Identity) then OpenCLIP head
    v = _ln(v, sd, "trunk.head.norm", eps)
    return F.linear(v, sd["head.proj.weight"]) if cfg.head == "linear" else _mlp(v, sd, "head.mlp")
  out = {k: v.permute(0, 2, 3, 1).numpy() for k, v in out.items()}
  out["embedding"] = head(x.mean(dim=(2, 3))).numpy()
  out["image_head"] = head(torch.tensor(vectors, dtype=torch.float64)).numpy()
  return out


def loaded(cfg, sd, **kw):
  return load_tower(lambda: ConvNeXtImageTower(cfg, rngs=nnx.Rngs(0), **kw), sd)


def ours(cfg, sd, pixels, vectors, **kw):
  def run(m, pixels, vectors):
    return {**m.features(pixels), "embedding": m(pixels), "image_head": m.image_head(vectors)}
  return run_jitted(loaded(cfg, sd, **kw), run, pixels, vectors)


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_matches_timm_openclip_reference(head):
  cfg = dataclasses.replace(TINY, head=head)
  sd = random_state_dict(cfg)
  rng = np.random.default_rng(1)
  # Non-square, and not a multiple of 32: the patchify convs floor-divide as PyTorch's do.
  pixels = rng.standard_normal((2, 70, 100, 3)).astype(np.float32)
  vectors = rng.standard_normal((2, 5, cfg.dims[-1])).astype(np.float32)
  ref, got = reference(cfg, sd, pixels, vectors), ours(cfg, sd, pixels, vectors)
  assert got["res2"].shape == (2, 17, 25, cfg.dims[0])
  assert got["res5"].shape == (2, 2, 3, cfg.dims[3])
  assert got["embedding"].shape == (2, cfg.embed_dim)
  assert got["image_head"].shape == (2, 5, cfg.embed_dim)
  assert sorted(got) == sorted(ref)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], atol=1e-4, rtol=1e-4, err_msg=k)


def test_remat_gives_the_same_embedding_and_gradients():
  sd = random_state_dict(TINY)
  ga, gb = remat_grads(lambda **kw: loaded(TINY, sd, **kw), TINY.image_size)
  for k, x in ga.items():
    np.testing.assert_allclose(x, gb[k], rtol=1e-4, atol=1e-5, err_msg=str(k))


def test_bfloat16_compute_keeps_float32_params_and_norms():
  sd = random_state_dict(TINY)
  pixels = np.random.default_rng(3).standard_normal((1, 64, 64, 3)).astype(np.float32)
  vectors = np.zeros((1, TINY.dims[-1]), np.float32)
  got = ours(TINY, sd, pixels, vectors, dtype=jnp.bfloat16)
  ref = ours(TINY, sd, pixels, vectors)
  assert got["res5"].dtype == jnp.bfloat16
  a, b = got["embedding"].astype(np.float32).ravel(), ref["embedding"].ravel()
  cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  assert cos > 0.99
  model = loaded(TINY, sd, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  assert model.trunk.stages[0].blocks[0].norm.dtype == jnp.float32


def formula_count(cfg):
  """Parameters of timm ConvNeXt(num_classes=0) + OpenCLIP head, counted by layer."""
  d = cfg.dims
  n = 16 * 3 * d[0] + d[0] + 2 * d[0]  # stem conv + LayerNorm2d
  for i, c in enumerate(d):
    if i:
      n += 2 * d[i - 1] + 4 * d[i - 1] * c + c  # downsample LayerNorm2d + 2x2 conv
    # depthwise 7x7 (+bias), LayerNorm, fc1 C->4C, fc2 4C->C, gamma
    n += cfg.depths[i] * (50 * c + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c) + c)
  n += 2 * d[-1]  # trunk.head.norm
  e, h = cfg.embed_dim, cfg.mlp_hidden
  return n + (d[-1] * e if cfg.head == "linear" else d[-1] * h + h + h * e)


# open_clip docs/model_profile.csv, column image_mparams (millions, 2 decimals).
OPENCLIP_IMAGE_MPARAMS = {"convnext_base_w_320": 88.22, "convnext_large_d_320": 199.77}


@pytest.mark.parametrize("name", sorted(OPENCLIP_IMAGE_MPARAMS))
def test_full_size_presets_have_timm_shapes_and_openclip_counts(name):
  cfg = PRESETS[name]
  model = nnx.eval_shape(lambda: ConvNeXtImageTower(cfg, rngs=nnx.Rngs(0)))
  shapes = torch_shapes(model)  # with a logical name per axis
  assert shapes == timm_shapes(cfg)
  n = sum(int(np.prod(s)) for s in shapes.values())
  assert n == formula_count(cfg)
  assert round(n / 1e6, 2) == OPENCLIP_IMAGE_MPARAMS[name]
  graphdef, state = nnx.split(model)
  size = cfg.image_size

  def run(state, x):
    m = nnx.merge(graphdef, state)
    return m(x), m.features(x)
  emb, feats = jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert emb.shape == (1, cfg.embed_dim)
  assert [feats[f"res{i + 2}"].shape for i in range(4)] == [
      (1, size // s, size // s, c) for s, c in zip((4, 8, 16, 32), cfg.dims)]


@pytest.mark.parametrize("remat", [False, True])
def test_stochastic_depth_is_timms_drop_path(remat):
  """timm `ConvNeXt(drop_path_rate=p)`: block k of n drops its branch per sample with probability
  linspace(0, p, n)[k] and scales kept ones by 1/(1 - that); off without an rng (inference)."""
  from ovs_jax.models.convnext import stochastic_depth
  cfg = dataclasses.replace(TINY, drop_path=0.5)
  sd = random_state_dict(cfg)
  pixels = np.random.default_rng(4).standard_normal((4, 64, 64, 3)).astype(np.float32)
  rng = jax.random.key(3)
  keeps = stochastic_depth(cfg, rng, 4)
  rates = np.concatenate([np.linspace(0, 0.5, sum(cfg.depths))[a:b] for a, b in
                          zip(np.cumsum((0,) + cfg.depths[:-1]), np.cumsum(cfg.depths))])
  flat = np.concatenate([np.asarray(k) for k in keeps])  # (blocks, B)
  for rate, row in zip(rates, flat):
    assert np.all(np.isclose(row, 0) | np.isclose(row, 1 / (1 - rate), rtol=1e-5)), (rate, row)
  assert (flat == 0).any() and (flat > 0).any()
  model = loaded(cfg, sd, remat=remat)
  got = np.asarray(jax.jit(lambda m, x: m.features(x, rng)["res5"])(model, jnp.asarray(pixels)))
  want = reference(cfg, sd, pixels, np.zeros((1, cfg.dims[-1]), np.float32),
                   keeps=[k for stage in keeps for k in stage])["res5"]
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  plain = np.asarray(jax.jit(lambda m, x: m.features(x)["res5"])(model, jnp.asarray(pixels)))
  np.testing.assert_allclose(plain, reference(cfg, sd, pixels, np.zeros((1, cfg.dims[-1]), np.float32))["res5"],
                             atol=1e-4, rtol=1e-4)
