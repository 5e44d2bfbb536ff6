"""GKC's ViT pyramid against torch modules built here from the release's description
(mask2former/clip_models.py:526-545, patch 16: fpn1 = GN→ConvT→SyncBN→GELU→ConvT, fpn2 = GN→ConvT,
fpn3 = GN, fpn4 = GN→MaxPool; GN = GroupNorm(1, D)). SyncBatchNorm in eval mode is BatchNorm2d."""
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from ovs_jax.heads.gkc_pyramid import GKCPyramid

D = 16


def _release_pyramid():
  fpn1 = nn.Sequential(nn.GroupNorm(1, D), nn.ConvTranspose2d(D, D, 2, 2), nn.BatchNorm2d(D),
                       nn.GELU(), nn.ConvTranspose2d(D, D, 2, 2))
  fpn2 = nn.Sequential(nn.GroupNorm(1, D), nn.ConvTranspose2d(D, D, 2, 2))
  fpn3 = nn.GroupNorm(1, D)
  fpn4 = nn.Sequential(nn.GroupNorm(1, D), nn.MaxPool2d(kernel_size=2, stride=2))
  mods = nn.ModuleList([fpn1, fpn2, fpn3, fpn4]).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in mods.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.ndim == 1 else 0.0))
    fpn1[2].running_mean.copy_(torch.randn(D, generator=g) * 0.3)
    fpn1[2].running_var.copy_(torch.rand(D, generator=g) + 0.5)
  return mods


def _copy(ours: GKCPyramid, mods):
  def a(t):
    return jnp.asarray(t.detach().numpy())

  def norm(dst, src):
    dst.scale[...] = a(src.weight)
    dst.bias[...] = a(src.bias)

  def up(dst, src):  # ConvTranspose2d weight (in, out, kh, kw) -> our (kh, kw, in, out)
    dst.kernel[...] = a(src.weight.permute(2, 3, 0, 1))
    dst.bias[...] = a(src.bias)
  fpn1, fpn2, fpn3, fpn4 = mods
  norm(ours.fpn1_norm, fpn1[0])
  up(ours.fpn1_up1, fpn1[1])
  norm(ours.fpn1_bn, fpn1[2])
  ours.fpn1_bn.mean[...] = a(fpn1[2].running_mean)
  ours.fpn1_bn.var[...] = a(fpn1[2].running_var)
  up(ours.fpn1_up2, fpn1[4])
  norm(ours.fpn2_norm, fpn2[0])
  up(ours.fpn2_up, fpn2[1])
  norm(ours.fpn3_norm, fpn3)
  norm(ours.fpn4_norm, fpn4[0])


def test_pyramid_equals_the_release_modules():
  mods = _release_pyramid()
  ours = GKCPyramid(D, rngs=nnx.Rngs(0))
  _copy(ours, mods)
  rng = np.random.default_rng(0)
  xs = [rng.standard_normal((2, 3, 5, D)).astype(np.float32) * 3 + 2 for _ in range(4)]  # odd sides
  got = ours([jnp.asarray(x) for x in xs])
  with torch.no_grad():
    want = [m(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
            for m, x in zip(mods, xs)]
  for name, w in zip(("res2", "res3", "res4", "res5"), want):
    assert got[name].shape == w.shape, name
    np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
  assert ours.channels() == {k: D for k in ("res2", "res3", "res4", "res5")}


def test_gkc_vit_builds_the_release_pyramid_by_default():
  from ovs_jax.config_utils import recipe_config
  from ovs_jax.methods.gkc import METHOD
  config = recipe_config("configs/gkc_vitb.py", "demo")
  config.clip.weights = "random"
  model = nnx.eval_shape(lambda: METHOD.build_model(config))
  assert isinstance(model.pyramid, GKCPyramid)
  config.model.pyramid = "vitdet"
  model = nnx.eval_shape(lambda: METHOD.build_model(config))
  assert not isinstance(model.pyramid, GKCPyramid)


def test_drop_path_scales_follow_timm_droppath_with_linear_rates():
  import jax
  from ovs_jax.models.clip import drop_path_scales
  keep = np.asarray(drop_path_scales(jax.random.key(0), 12, 20000, 0.1))
  assert keep.shape == (12, 2, 20000)
  rates = np.linspace(0, 0.1, 12)  # clip_models.py:410, torch.linspace(0, rate, layers)
  for layer, p in enumerate(rates):
    kept = keep[layer][keep[layer] > 0]
    np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6)
    assert abs((keep[layer] > 0).mean() - (1 - p)) < 0.01, layer  # each branch drawn on its own
  assert np.all(keep[0] == 1)
  assert (keep[-1, 0] != keep[-1, 1]).any()


def test_vit_block_features_apply_drop_path_to_each_branch():
  import jax
  from ovs_jax.models import clip_family
  from ovs_jax.models.clip import drop_path_scales
  clip = clip_family.build_clip(clip_family.get_arch("tiny"), rngs=nnx.Rngs(0))
  tower = clip.vision_model
  pixels = jnp.asarray(np.random.default_rng(0).standard_normal((3, 32, 48, 3)), jnp.float32)
  rng = jax.random.key(3)
  got = tower.block_features(pixels, (2, 4), rng, 0.5)
  keep = drop_path_scales(rng, len(tower.encoder.layers), 3, 0.5)
  x, (h, w) = tower.embeddings(pixels)
  x = tower.pre_layrnorm(x)
  want = []
  for i, layer in enumerate(tower.encoder.layers):
    a = layer.layer_norm1(x)
    x = x + keep[i, 0][:, None, None] * layer.self_attn(a, a, a)
    x = x + keep[i, 1][:, None, None] * layer.mlp(layer.layer_norm2(x))
    if i + 1 in (2, 4):
      want.append(x[:, 1:].reshape(3, h, w, -1))
  for g, wt in zip(got, want):
    np.testing.assert_allclose(g, wt, rtol=1e-5, atol=1e-5)
  plain = tower.block_features(pixels, (2, 4))  # no rng: inference, every block whole
  assert not np.allclose(plain[1], got[1])
