"""OpenCLIP checkpoints: ConvNeXt CLIP import against independent references, head counts from the
model config (never guessed), export back to the OpenCLIP layout, full-size parameter counts.

open_clip cannot be installed beside the CPU torch build; the references are transformers' CLIP text
tower and the timm/OpenCLIP re-derivation of tests/test_convnext.py. (Checked in development against
open_clip 2.16 itself: image and text embeddings of random ConvNeXt and head-width-80 ViT models
agree to 4e-6, and the export is bit-identical with the same keys; docs/backbones.md.)"""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from clip_helpers import (nhwc, openclip_config_of, random_hf_clip, random_inputs, random_text_tower,
                          small_hf_config, to_openclip_names)
from ovs_jax.interchange import openclip, state_dict_io
from ovs_jax.interchange.clip_weights import load_clip, save_openclip
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.models import clip_family
from test_convnext import random_state_dict as convnext_state_dict
from test_convnext import reference as convnext_reference

TINY_CONVNEXT = clip_family.get_arch("convnext_tiny")


def _convnext_openclip_dir(tmp_path, head="mlp"):
  """An OpenCLIP hub-style directory of a small ConvNeXt CLIP and its two references."""
  tmp_path.mkdir(parents=True, exist_ok=True)
  vision = dataclasses.replace(TINY_CONVNEXT.vision, dims=(96, 192, 384, 768), depths=(1, 1, 2, 1),
                               head=head, mlp_hidden=2 * 96 if head == "mlp" else None, embed_dim=96)
  text, sd = random_text_tower(proj=96)
  sd |= {f"visual.{k}": v for k, v in convnext_state_dict(vision).items()}
  sd["logit_scale"] = np.asarray(2.0, np.float32)
  save_file(sd, str(tmp_path / "open_clip_model.safetensors"))
  # convnext_tiny's timm depths differ from the small test trunk: the config names the real model,
  # the test trunk's depths are only checked against the weights' shapes.
  cfg = {"embed_dim": 96, "vision_cfg": {"timm_model_name": "convnext_tiny", "timm_pool": "",
                                         "timm_proj": head, "image_size": 64},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
  (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
  return sd, vision, text


@pytest.fixture
def tiny_timm(monkeypatch):
  """Let 'convnext_tiny' stand for the small test trunk's depths (the real one has 3,3,9,3)."""
  monkeypatch.setitem(openclip.TIMM_CONVNEXT, "convnext_tiny", ((1, 1, 2, 1), (96, 192, 384, 768)))


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_convnext_clip_from_openclip_matches_timm_and_transformers(tmp_path, tiny_timm, head):
  sd, vision, text = _convnext_openclip_dir(tmp_path, head)
  ours = load_clip(tmp_path)
  assert type(ours).__name__ == "ConvNeXtCLIP" and ours.config.text.hidden_act == "gelu"
  pixels, ids = random_inputs(size=(70, 100))
  visual_sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
  ref = convnext_reference(vision, visual_sd, nhwc(pixels), np.zeros((1, vision.dims[-1]), np.float32))
  np.testing.assert_allclose(np.asarray(ours.get_image_features(jnp.asarray(nhwc(pixels)))),
                             ref["embedding"], atol=1e-4, rtol=1e-4)
  features = ours.backbone_features(jnp.asarray(nhwc(pixels)))
  for k in ("res2", "res3", "res4", "res5", "clip_vis_dense"):
    np.testing.assert_allclose(np.asarray(features[k]), ref[k], atol=1e-4, rtol=1e-4, err_msg=k)
  with torch.no_grad():
    want = text(input_ids=torch.tensor(ids)).text_embeds.numpy()
  np.testing.assert_allclose(np.asarray(ours.get_text_features(jnp.asarray(ids))), want, atol=1e-4)


def test_openclip_export_is_the_imported_state_dict(tmp_path, tiny_timm):
  sd, _, _ = _convnext_openclip_dir(tmp_path / "src")
  save_openclip(load_clip(tmp_path / "src"), tmp_path / "out")
  back = state_dict_io.read_state_dict(tmp_path / "out" / "open_clip_model.safetensors")
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  exported_cfg = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())["model_cfg"]
  assert exported_cfg["vision_cfg"]["timm_model_name"] == "convnext_tiny"
  assert exported_cfg["text_cfg"]["heads"] == 2


def _head_width_80_vit(tmp_path):
  hf = random_hf_clip(small_hf_config(width=160, heads=2, act="gelu"))  # 2 heads of 80
  save_file(to_openclip_names(hf.state_dict()), str(tmp_path / "vit.safetensors"))
  return hf


def test_head_width_80_vit_needs_its_config_and_then_matches_transformers(tmp_path):
  hf = _head_width_80_vit(tmp_path)
  with pytest.raises(CheckpointError, match=r"attention heads is not stored.*--arch"):
    load_clip(tmp_path / "vit.safetensors")  # 160 = 2x80 or 5x32 or 10x16 ...: refused
  config = tmp_path / "my_config.json"
  config.write_text(json.dumps(openclip_config_of(hf.config)))
  ours = load_clip(tmp_path / "vit.safetensors", arch=str(config))
  assert ours.config.vision.num_attention_heads == 2 and ours.config.text.num_attention_heads == 2
  pixels, ids = random_inputs()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits_per_image.numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(nhwc(pixels)), jnp.asarray(ids))), want,
                             atol=1e-4)
  # The same weights built as a 64-wide-head model would differ: the refusal is not pedantry.
  wrong = json.loads(config.read_text())
  wrong["model_cfg"]["vision_cfg"]["head_width"] = 32
  config.write_text(json.dumps(wrong))
  guessed = load_clip(tmp_path / "vit.safetensors", arch=str(config))
  assert np.abs(np.asarray(guessed(jnp.asarray(nhwc(pixels)), jnp.asarray(ids))) - want).max() > 1e-3


def test_a_named_architecture_that_does_not_fit_the_weights_is_reported(tmp_path, tiny_timm):
  _convnext_openclip_dir(tmp_path)
  with pytest.raises(CheckpointError, match=r"do not match the architecture.*convnext_base_w_320"):
    load_clip(tmp_path / "open_clip_model.safetensors", arch="convnext_base_w_320")
  with pytest.raises(CheckpointError, match=r"neither a supported OpenCLIP model name"):
    load_clip(tmp_path / "open_clip_model.safetensors", arch="ViT-Q-99")


def test_convert_cli_openclip_to_ours_and_back(tmp_path):
  hf = _head_width_80_vit(tmp_path)
  (tmp_path / "cfg.json").write_text(json.dumps(openclip_config_of(hf.config)))
  run = lambda *a: subprocess.run([sys.executable, "-m", "ovs_jax.convert", "clip", *a],
                                  capture_output=True, text=True)
  r = run(f"--src={tmp_path / 'vit.safetensors'}", f"--out={tmp_path / 'x'}")
  assert r.returncode != 0 and "--arch" in r.stderr
  r = run(f"--src={tmp_path / 'vit.safetensors'}", f"--arch={tmp_path / 'cfg.json'}", "--to=openclip",
          f"--out={tmp_path / 'oc'}")
  assert r.returncode == 0, r.stderr
  back = state_dict_io.read_state_dict(tmp_path / "oc" / "open_clip_model.safetensors")
  src = state_dict_io.read_state_dict(tmp_path / "vit.safetensors")
  assert sorted(back) == sorted(src) and all(np.array_equal(back[k], src[k]) for k in src)


# open_clip docs/model_profile.csv, column mparams (whole model, millions, 2 decimals).
OPENCLIP_MPARAMS = {"convnext_base_w_320": 179.39, "convnext_large_d_320": 351.77, "ViT-H-14": 986.11}


@pytest.mark.parametrize("name", sorted(OPENCLIP_MPARAMS))
def test_full_size_models_from_openclip_configs_have_openclip_parameter_counts(name):
  cfg = openclip.config_from_openclip(openclip.known_configs()[name], name)
  model = clip_family.abstract_clip(cfg)
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert round(count / 1e6, 2) == OPENCLIP_MPARAMS[name]
  if name == "ViT-H-14":
    assert cfg.vision.num_attention_heads == 16 and cfg.vision.head_dim == 80


def test_timm_layout_convnext_trunk_loads_into_the_tower(tmp_path):
  """timm's own ConvNeXt checkpoints name the trunk without OpenCLIP's `visual.trunk.` prefix and
  carry an ImageNet classifier `head.fc`."""
  from ovs_jax.interchange import torch_state
  from ovs_jax.models.convnext import ConvNeXtImageTower
  vision = dataclasses.replace(TINY_CONVNEXT.vision, head="linear", mlp_hidden=None)
  openclip_sd = convnext_state_dict(vision)
  timm_sd = {k[len("trunk."):]: v for k, v in openclip_sd.items() if k.startswith("trunk.")}
  timm_sd |= {"head.fc.weight": np.zeros((1000, vision.dims[-1]), np.float32),
              "head.fc.bias": np.zeros(1000, np.float32)}
  tower = nnx.eval_shape(lambda: ConvNeXtImageTower(vision, rngs=nnx.Rngs(0)))
  torch_state.import_state_dict(tower, openclip.from_timm_convnext(timm_sd) | {
      k: v for k, v in openclip_sd.items() if k.startswith("head.")}, source="timm")
  back = torch_state.export_state_dict(tower)
  assert all(np.array_equal(back[k], v) for k, v in openclip_sd.items())
  save_file(timm_sd, str(tmp_path / "timm_convnext.safetensors"))
  with pytest.raises(CheckpointError, match="timm ConvNeXt trunk alone is not a CLIP"):
    load_clip(tmp_path / "timm_convnext.safetensors")
