"""SigLIP towers against transformers' `SiglipModel` on random weights: image and text embeddings and
the logits ≤1e-4 (the HF state dict loads by name, as CLIP's)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from clip_helpers import nhwc
from ovs_jax.interchange import torch_state
from ovs_jax.models.siglip import abstract_siglip, from_hf_dict


def _hf(seed=0):
  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
  cfg = transformers.SiglipConfig(text_config=dict(tower, vocab_size=100, max_position_embeddings=12, bos_token_id=None,
                                                                  eos_token_id=None),
                                  vision_config=dict(tower, image_size=32, patch_size=8))
  torch.manual_seed(seed)
  model = transformers.SiglipModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(0.05 * torch.randn_like(p))  # off the zero-bias / unit-norm init
  return model


@pytest.mark.parametrize("scan", [False, True])
def test_siglip_matches_transformers(scan):
  hf = _hf()
  ours = abstract_siglip(from_hf_dict(hf.config.to_dict()), scan=scan)
  torch_state.import_state_dict(ours, {k: v.detach().numpy() for k, v in hf.state_dict().items()},
                                ignore=r".*position_ids")
  rng = np.random.RandomState(0)
  pixels = rng.randn(2, 3, 32, 32).astype(np.float32)
  ids = rng.randint(0, 100, (3, 12))
  with torch.no_grad():
    out = hf(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids))
  img = np.asarray(ours.get_image_features(jnp.asarray(nhwc(pixels))))
  txt = np.asarray(ours.get_text_features(jnp.asarray(ids)))
  logits = np.asarray(ours(jnp.asarray(nhwc(pixels)), jnp.asarray(ids)))
  with torch.no_grad():
    pooled = lambda o: getattr(o, "pooler_output", o).numpy()  # transformers 5 returns an output object
    want_img = pooled(hf.get_image_features(pixel_values=torch.from_numpy(pixels)))
    want_txt = pooled(hf.get_text_features(input_ids=torch.from_numpy(ids)))
  exported = torch_state.export_state_dict(ours)  # ours -> transformers names, the other way
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
  assert set(exported) == set(sd) and all(np.array_equal(exported[k], sd[k]) for k in sd)
  for got, want in ((img, want_img), (txt, want_txt), (logits, out.logits_per_image.numpy())):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_big_vision_npz_loads_to_the_same_outputs(tmp_path):
  """transformers' weights written in big_vision's two-tower layout (`.npz`), read back with the
  architecture inferred from the shapes: the same embeddings; and the layout maps back exactly."""
  from ovs_jax.interchange.siglip_big_vision import (big_vision_to_hf, hf_to_big_vision,
                                                     load_big_vision_siglip)
  hf = _hf(seed=1)
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
  bv = hf_to_big_vision(sd, vision_heads=4, text_heads=4)
  assert bv["params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape == (32, 4, 8)
  back = big_vision_to_hf(bv)
  assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k].reshape(back[k].shape)) for k in sd)
  np.savez(tmp_path / "siglip.npz", **bv)
  ours = load_big_vision_siglip(tmp_path / "siglip.npz")
  assert ours.config.vision.num_attention_heads == 4 and ours.config.vision.image_size == 32
  pixels = np.random.RandomState(2).randn(1, 3, 32, 32).astype(np.float32)
  ids = np.random.RandomState(3).randint(0, 100, (2, 12))
  with torch.no_grad():
    want = hf(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids)).logits_per_image.numpy()
  got = np.asarray(ours(jnp.asarray(nhwc(pixels)), jnp.asarray(ids)))
  assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
  # big_vision's scanned encoder (`encoderblock` with a leading layer axis) reads the same.
  pre = "params/img/Transformer/encoderblock"
  scanned = {k: v for k, v in bv.items() if not k.startswith(pre + "_")}
  for name in {k.split("/", 4)[4] for k in bv if k.startswith(pre + "_")}:
    scanned[f"{pre}/{name}"] = np.stack([bv[f"{pre}_{i}/{name}"] for i in range(2)])
  again = big_vision_to_hf(scanned)
  assert all(np.array_equal(again[k], back[k]) for k in back)
