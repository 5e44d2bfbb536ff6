"""MaskCLIP = MaskCLIP: its head's prompt denoising and key smoothing against MaskCLIP's own
`MaskClipHead` run on random weights (tests/data/maskclip/head.npz, scripts/oracle/maskclip_forward.py),
its ViT keys and value path against transformers' CLIP through the formulas of MaskCLIP's vit.py:97-104,
and its 85 templates."""
import subprocess
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clip_helpers import nhwc, ours_from_hf, random_hf_clip, small_hf_config
from ovs_jax.methods.maskclip import dense_features_and_keys, maskclip_class_logits, refine_output
from ovs_jax.templates import IMAGENET_TEMPLATES, MASKCLIP_TEMPLATES, get_templates

FIXTURE = np.load(Path(__file__).parent / "data" / "maskclip" / "head.npz")
SETTINGS = {"plain": (0.0, 0.0), "pd": (0.5, 0.0), "ks": (0.0, 1.0), "ks09": (0.0, 0.9),
            "kspd": (0.5, 1.0)}


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _check(prefix, dense, keys):
  cos = jnp.asarray(_unit(dense) @ FIXTURE["text"].T)
  for name, (pd, ks) in SETTINGS.items():
    ours = refine_output(cos, jnp.asarray(keys), pd, ks)
    np.testing.assert_allclose(np.asarray(ours), nhwc(FIXTURE[f"{prefix}_{name}"]), atol=1e-4, rtol=0,
                               err_msg=f"{prefix} {name}")


def test_vit_head_matches_maskclip():
  v = nhwc(FIXTURE["vit_v"])  # after ln_post, as MaskCLIP's ViT returns it
  b, h, w, _ = v.shape
  _check("vit", v @ FIXTURE["vit_proj"].T, FIXTURE["vit_k"].reshape(b, h, w, -1))


def test_resnet_head_matches_maskclip():
  x = nhwc(FIXTURE["rn_x"])
  lin = lambda n, a: a @ FIXTURE[f"rn_{n}_weight"].T + FIXTURE[f"rn_{n}_bias"]  # 1x1 convs
  _check("rn", lin("c_proj", lin("v_proj", x)), lin("k_proj", x))


def test_refinements_act_in_the_fixture():
  """The fixture exercises both rules (a class denoised, positions both above and below 0.9)."""
  assert (FIXTURE["vit_pd"] == -100).any() and not (FIXTURE["vit_plain"] == -100).any()
  assert not np.allclose(FIXTURE["vit_ks09"], FIXTURE["vit_ks"])


def test_vit_keys_and_values_follow_maskclip_vit():
  """Our one-forward dense features and keys = MaskCLIP vit.py:97-104 on transformers' CLIP: the
  last block's k = out_proj(k_proj(ln_1 x)); v = out_proj(v_proj(ln_1 x)) + x, then + FFN; ln_post,
  projection."""
  hf = random_hf_clip(small_hf_config(image_size=64, layers=2))
  ours = ours_from_hf(hf)
  pixels = np.random.RandomState(0).randn(2, 3, 64, 48).astype(np.float32)
  with torch.no_grad():
    tower = hf.vision_model
    hs = tower(pixel_values=torch.from_numpy(pixels), output_hidden_states=True,
               interpolate_pos_encoding=True).hidden_states
    x, last = hs[-2], tower.encoder.layers[-1]
    y = last.layer_norm1(x)
    k = last.self_attn.out_proj(last.self_attn.k_proj(y))
    v = last.self_attn.out_proj(last.self_attn.v_proj(y)) + x
    v = v + last.mlp(last.layer_norm2(v))
    feat = hf.visual_projection(tower.post_layernorm(v))
  dense, keys = dense_features_and_keys(ours, jnp.asarray(nhwc(pixels)))
  np.testing.assert_allclose(np.asarray(dense), feat[:, 1:].numpy().reshape(dense.shape), atol=1e-4)
  np.testing.assert_allclose(np.asarray(keys), k[:, 1:].numpy().reshape(keys.shape), atol=1e-4)
  # The class scores with both refinements on = the head's rule on those features.
  text = jnp.asarray(_unit(np.random.RandomState(1).randn(6, dense.shape[-1]).astype(np.float32)))
  got = maskclip_class_logits(ours, jnp.asarray(nhwc(pixels)), text, jnp.arange(6)[:, None],
                              pd_thresh=0.5, ks_thresh=1.0)
  cos = jnp.asarray(_unit(feat[:, 1:].numpy()).reshape(dense.shape)) @ text.T
  from ovs_jax.ops.resize import resize
  want = resize(refine_output(cos, jnp.asarray(k[:, 1:].numpy().reshape(keys.shape)), 0.5, 1.0), 64, 48)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_resnet_keys_are_attnpool_k_proj():
  from ovs_jax.methods.maskclip import clip_from_spec
  clip = clip_from_spec("random:resnet_tiny")
  pixels = jnp.asarray(np.random.RandomState(0).randn(1, 64, 64, 3).astype(np.float32))
  dense, keys = dense_features_and_keys(clip, pixels)
  res5 = clip.trunk_features(pixels)
  np.testing.assert_allclose(np.asarray(dense), np.asarray(clip.dense_features(pixels)), atol=1e-5)
  np.testing.assert_allclose(np.asarray(keys), np.asarray(clip.visual.attnpool.k_proj(res5)), atol=1e-5)


def _official_templates():
  mirror = Path("/work/.mirror/chongzhou96+MaskCLIP/repo")
  if not mirror.exists():
    pytest.skip("MaskCLIP mirror not present")
  src = subprocess.run(["git", f"--git-dir={mirror}", "show", "HEAD:tools/maskclip_utils/prompt_engineering.py"],
                       capture_output=True, text=True, check=True).stdout
  ns = {}
  exec(src[src.index("prompt_templates = ["):src.index("def parse_args")], ns)
  return tuple(ns["prompt_templates"])


def test_maskclip_templates():
  assert get_templates("maskclip") == MASKCLIP_TEMPLATES and len(MASKCLIP_TEMPLATES) == 85
  assert MASKCLIP_TEMPLATES[:80] == IMAGENET_TEMPLATES
  assert MASKCLIP_TEMPLATES == _official_templates()
