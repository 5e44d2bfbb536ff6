"""SCLIP, ClearCLIP, NACLIP, ProxyCLIP and PAMR against their official code run on random weights
(tests/data/training_free/forward.npz, scripts/oracle/training_free_forward.py): the dense cosines
with the same text embeddings, same weights, same image, ≤1e-4 relative to their scale."""
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from clip_helpers import nhwc, ours_from_hf, random_hf_clip
from ovs_jax.interchange.clip_keys import openclip_to_hf
from ovs_jax.interchange import torch_state
from ovs_jax.methods.clearclip import clearclip_features
from ovs_jax.methods.naclip import naclip_features
from ovs_jax.methods.proxyclip import proxy_last_block
from ovs_jax.methods.sclip import sclip_features
from ovs_jax.methods.training_free import dense_cosines
from ovs_jax.models.clip_last_block import last_block_input
from ovs_jax.ops.pamr import pamr

FIXTURE = np.load(Path(__file__).parent / "data" / "training_free" / "forward.npz")


@pytest.fixture(scope="module")
def clip():
  """Our CLIP with the fixture's official ViT weights (any random text tower)."""
  width = FIXTURE["visual.class_embedding"].shape[0]
  patch = FIXTURE["visual.conv1.weight"].shape[-1]
  size = FIXTURE["image"].shape[-1]
  tower = dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=4,
               num_hidden_layers=2, hidden_act="quick_gelu")
  cfg = transformers.CLIPConfig(text_config=dict(tower), projection_dim=FIXTURE["visual.proj"].shape[1],
                                vision_config=dict(tower, image_size=size, patch_size=patch))
  hf = random_hf_clip(cfg)
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  visual = openclip_to_hf({k: FIXTURE[k] for k in FIXTURE.files if k.startswith("visual.")})
  assert set(visual) <= set(sd), sorted(set(visual) - set(sd))
  sd.update(visual)
  model = ours_from_hf(hf)
  torch_state.import_state_dict(model, sd, ignore=r".*position_ids")
  return model


def _check(got, want, what):
  want = nhwc(want)
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  assert err <= 1e-4, f"{what}: max error {err:.2e} of the cosines' scale"


def _cosines(features, clip, **options):
  return dense_cosines(features, clip, jnp.asarray(nhwc(FIXTURE["image"])), jnp.asarray(FIXTURE["text"]),
                       **options)


def test_sclip_matches_official(clip):
  _check(_cosines(sclip_features, clip), FIXTURE["sclip"], "SCLIP")


@pytest.mark.parametrize("std", [5.0, 2.0])
def test_naclip_matches_official(clip, std):
  _check(_cosines(naclip_features, clip, gaussian_std=std), FIXTURE[f"naclip_std{std:g}"], "NACLIP")


@pytest.mark.parametrize("attention,key", [("qq", "ClearCLIP"), ("qk", "vanilla")])
def test_clearclip_matches_official(clip, attention, key):
  _check(_cosines(clearclip_features, clip, attention=attention), FIXTURE[f"clearclip_{key}"], "ClearCLIP")


def test_proxyclip_matches_official(clip):
  """The proxy attention with the fixture's VFM features (a 10x10 grid against CLIP's 8x8)."""
  def features(clip, pixels):
    x, grid, block = last_block_input(clip, pixels)
    proxy = jnp.asarray(nhwc(FIXTURE["proxyclip_feats"]))
    return clip.image_head(proxy_last_block(block, x, grid, proxy, 1.2, 3.0))
  _check(_cosines(features, clip), FIXTURE["proxyclip"], "ProxyCLIP")


@pytest.mark.parametrize("steps,dilations", [(10, (8, 16)), (3, (1, 2))])
def test_pamr_matches_official(steps, dilations):
  got = pamr(jnp.asarray(nhwc(FIXTURE["pamr_image"])), jnp.asarray(nhwc(FIXTURE["pamr_mask"])), steps,
             dilations)
  _check(got, FIXTURE[f"pamr_{steps}_{'_'.join(map(str, dilations))}"], "PAMR")


def test_the_methods_differ(clip):
  """The fixture tells the methods apart (a wrong rule cannot pass for another)."""
  keys = ["sclip", "naclip_std5", "naclip_std2", "clearclip_ClearCLIP", "clearclip_vanilla"]
  for i, a in enumerate(keys):
    for b in keys[i + 1:]:
      assert np.abs(FIXTURE[a] - FIXTURE[b]).max() > 1e-2, (a, b)
  assert not np.allclose(FIXTURE["pamr_mask"], FIXTURE["pamr_10_8_16"], atol=1e-2)
