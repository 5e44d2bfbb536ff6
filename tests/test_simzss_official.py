"""SimZSS against the release's own code (tileb1/simzss @2142ac5) run on seeded weights by
scripts/oracle/simzss_forward.py (fixture tests/data/simzss/forward.npz; README there): a state dict
in the release's layout loads into our model (`interchange/simzss_official.py`) and gives the
release's class token, patch tokens with and without the DVT denoiser, projected text tokens and
EOT features, and ZSLoss's global and local terms, at ≤ 1e-4 relative; `to_official` writes the
release's layout back."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ovs_jax.interchange import simzss_official as official
from ovs_jax.losses.concept_alignment import local_concept_loss
from ovs_jax.losses.contrastive import symmetric_infonce
from ovs_jax.models.clip import l2_normalize

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "simzss", "forward.npz")


def seeded_value(name, shape, rng):
  """The oracle's weight rule (scripts/oracle/simzss_forward.py), re-derived."""
  x = rng.standard_normal(shape).astype(np.float32)
  if name == "logit_scale":
    return np.full(shape, np.log(1 / 0.07), np.float32)
  if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_1.weight", "ln_2.weight",
                    "ln_final.weight", ".gamma")):
    return 1.0 + 0.1 * x
  return 0.05 * x


@pytest.fixture(scope="module")
def fx():
  return dict(np.load(FIXTURE))


def release_state_dict(fx, denoiser=True):
  """The oracle's weights in the release's layout, regenerated from the names and shapes."""
  rng = np.random.default_rng(0)
  sd = {n: seeded_value(n, tuple(s), rng) for n, s in zip(fx["param_names"], json.loads(str(fx["param_shapes"])))}
  if denoiser:
    rng = np.random.default_rng(1)
    sd["visual.pos_embed"] = (0.05 * rng.standard_normal((1, 37 * 37, 768))).astype(np.float32)
    for n, s in zip(fx["dvt_names"], json.loads(str(fx["dvt_shapes"]))):
      sd["visual." + n] = seeded_value(n, tuple(s), rng)
  return sd


def our_model(fx, denoiser):
  from ovs_jax.config_utils import recipe_config
  from ovs_jax.methods.simzss import build_simzss
  sd = release_state_dict(fx, denoiser)
  config = recipe_config("configs/simzss_dinov2_b14.py", "")
  arch = official.architecture(sd, text_heads=2)
  model = build_simzss(config, arch)
  official.load(model, sd)
  return model, sd


def _close(got, want, rtol=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.abs(got - want).max() <= rtol * np.abs(want).max(), np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("denoiser", [True, False])
def test_forward_and_losses_equal_the_release(fx, denoiser):
  model, _ = our_model(fx, denoiser)
  tag = "dvt" if denoiser else "raw"
  image = np.random.default_rng(2).standard_normal((2, 3, 70, 70)).astype(np.float32)
  assert np.isclose(image.sum(), fx["image_sum"])
  cls, patches = model.image_features(jnp.asarray(image.transpose(0, 2, 3, 1)))
  _close(cls, fx[f"{tag}_cls"])
  _close(patches.reshape(2, 25, -1)[:1], fx[f"{tag}_patches"])
  tokens, eot = model.text_tokens(jnp.asarray(fx["text"]))
  _close(eot, fx["eot"])
  _close(tokens[:, :12], fx["tokens"])
  scale = float(jnp.exp(model.logit_scale[...]))
  _close(symmetric_infonce(l2_normalize(cls), l2_normalize(eot), scale), fx[f"{tag}_loss_global"])
  # The release's concept token lists (one token each here) as our [start, end) spans.
  idx, labels = fx["concept_indices"], fx["concept_labels"]
  starts = np.where(labels >= 0, idx[..., 0], 0).astype(np.int32)
  ends = np.where(labels >= 0, idx[..., 0] + 1, 0).astype(np.int32)
  local = local_concept_loss(tokens, patches.reshape(2, 25, -1), jnp.asarray(labels, jnp.int32),
                             jnp.asarray(starts), jnp.asarray(ends), 573)
  _close(local, fx[f"{tag}_loss_local"])


def test_release_layout_round_trips(fx):
  model, sd = our_model(fx, True)
  back = official.to_official(model)
  assert sorted(back) == sorted(fx["state_dict_keys"].tolist())
  for k, v in sd.items():
    np.testing.assert_allclose(back[k], v, rtol=0, atol=1e-6, err_msg=k)
  # A release checkpoint as its training writes it ({"state_dict": ..., "module." prefix}).
  wrapped = official.unwrap({"epoch": 10, "state_dict": {"module." + k: v for k, v in back.items()}})
  assert sorted(wrapped) == sorted(back)
  with pytest.raises(Exception, match="keys the SimZSS release does not have"):
    official.to_ours(model, dict(sd, extra=np.zeros(1)))


def test_convert_from_official_and_to_official(fx, tmp_path):
  """A checkpoint as the release's training writes it -> `convert from-official --method=simzss`
  -> a workdir whose model gives the release's outputs -> `to-official` gives its layout back."""
  import torch
  from ovs_jax.restore import restore_workdir
  from ovs_jax import sharding
  from ovs_jax.torch_export import simzss_official as export
  import jax
  sd = release_state_dict(fx, True)
  src = tmp_path / "epoch_10.pt"
  torch.save({"epoch": 10, "name": "simzss", "state_dict": {"module." + k: torch.from_numpy(v) for k, v in sd.items()}}, src)
  workdir = export.from_official(src, tmp_path / "w", text_heads=2)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  config, graphdef, state, _ = restore_workdir(workdir, None, mesh)
  model = nnx.merge(graphdef, state["params"], state["frozen"])
  image = np.random.default_rng(2).standard_normal((2, 3, 70, 70)).astype(np.float32).transpose(0, 2, 3, 1)
  cls, _ = model.image_features(jnp.asarray(image))
  _close(cls, fx["dvt_cls"])
  out = export.to_official(workdir, tmp_path / "back.pt")
  back = torch.load(out, weights_only=True)["state_dict"]
  for k, v in sd.items():
    np.testing.assert_allclose(back["module." + k].numpy(), v, atol=1e-6, err_msg=k)


def test_dvt_weights_file_as_the_readme_names_it(fx, tmp_path):
  """vit_base_patch14_reg4_dinov2.lvd142m.pth as DVT ships it ({"denoiser": {pos_embed, denoiser.*}},
  read by the release with torch.load(...)['denoiser']) loads into our tower's denoiser."""
  import torch
  from ovs_jax.interchange import dinov2 as dinov2_io
  sd = release_state_dict(fx, True)
  path = tmp_path / "vit_base_patch14_reg4_dinov2.lvd142m.pth"
  torch.save({"denoiser": {k.removeprefix("visual."): torch.from_numpy(v) for k, v in sd.items()
                           if k.startswith(official.DVT_KEYS)}}, path)
  model, _ = our_model(fx, True)
  zero = jax.tree.map(jnp.zeros_like, nnx.state(model.vision.denoiser))
  nnx.update(model.vision.denoiser, zero)
  dinov2_io.import_denoiser(model.vision, dinov2_io.read_dvt_file(path), source=str(path))
  image = np.random.default_rng(2).standard_normal((2, 3, 70, 70)).astype(np.float32).transpose(0, 2, 3, 1)
  _, patches = model.image_features(jnp.asarray(image))
  _close(patches.reshape(2, 25, -1)[:1], fx["dvt_patches"])
