"""CLIP ResNets (RN50, RN101) as whole CLIP models: an OpenCLIP-layout state dict imports to the
independent references (the float64 PyTorch re-derivation of CLIP's ModifiedResNet and MaskCLIP's
dense head in tests/test_modified_resnet.py, transformers' CLIP text tower), exports back
bit-identical with the same keys (BatchNorm statistics and step counters), identifies RN50/RN101 by
shapes, has open_clip's parameter counts at full size, converts through the CLI and runs MaskCLIP
through the evaluation library."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from clip_helpers import nhwc, random_inputs, random_text_tower
from ovs_jax import evaluation
from ovs_jax.convert import convert_clip
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.interchange import clip_keys, openclip, state_dict_io
from ovs_jax.interchange.clip_weights import load_clip, save_openclip
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.layers import BatchCount
from ovs_jax.methods.maskclip import METHOD as MASKCLIP
from ovs_jax.methods.maskclip import clip_from_spec, maskclip_model
from ovs_jax.models import clip_family, modified_resnet
from ovs_jax.models.resnet_clip import ResNetCLIP
from test_modified_resnet import clip_shapes
from test_modified_resnet import random_state_dict as tower_state_dict
from test_modified_resnet import reference as tower_reference
from tower_helpers import run_jitted, torch_shapes

TOWER = modified_resnet.PRESETS["tiny"]  # 8 attention-pool heads of 32: not the 64-wide heads of RN50/RN101


def openclip_config(act):
  """OpenCLIP's model config of the test model (`vision_cfg.layers` a list: a ModifiedResNet)."""
  return {"embed_dim": TOWER.embed_dim, "quick_gelu": act == "quick_gelu",
          "vision_cfg": {"layers": list(TOWER.layers), "width": TOWER.width, "head_width": 32,
                         "image_size": TOWER.image_size, "patch_size": None},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2,
                       "layers": 2}}


def openclip_resnet(directory, act="gelu"):
  """`directory`/open_clip_model.safetensors, a random OpenCLIP ResNet CLIP state dict, beside its
  open_clip_config.json -> (state dict, its `visual.*` part unprefixed, transformers text tower)."""
  directory.mkdir(parents=True, exist_ok=True)
  text, sd = random_text_tower(proj=TOWER.embed_dim, act=act)
  visual = tower_state_dict(TOWER)  # running statistics and int64 step counters included
  sd |= {f"visual.{k}": v for k, v in visual.items()}
  sd["logit_scale"] = np.asarray(2.0, np.float32)
  save_file(sd, str(directory / "open_clip_model.safetensors"))
  (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": openclip_config(act)}))
  return sd, visual, text


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_import_matches_the_resnet_maskclip_and_text_references(tmp_path, act):
  _, visual, text = openclip_resnet(tmp_path, act)
  ours = load_clip(tmp_path / "open_clip_model.safetensors")  # architecture: open_clip_config.json
  assert type(ours) is ResNetCLIP and ours.config.text.hidden_act == act
  assert ours.config.vision.heads == 8 and ours.dense_stride == 32
  pixels, ids = random_inputs(size=(70, 100))
  pixels = nhwc(pixels)

  def run(m, x, ids):
    image, dense = m.image_and_dense_features(x)
    return {"embedding": m.get_image_features(x), "dense": m.dense_features(x, maskclip=True),
            "dense_plain": m.dense_features(x), "pair_image": image, "pair_dense": dense,
            "text": m.get_text_features(ids), "logits": m(x, ids), **m.backbone_features(x)}
  got = run_jitted(ours, run, pixels, ids)
  # res5 is 2x3 (70x100 -> stem 35x50 -> /16 floored): the positional embedding is resized.
  ref = tower_reference(TOWER, visual, pixels, np.ones((2, 1, 2, 3), np.float32))
  with torch.no_grad():
    ref["text"] = text(input_ids=torch.tensor(ids)).text_embeds.numpy()
  ref |= {"dense_plain": ref["dense"], "pair_image": ref["embedding"], "pair_dense": ref["dense"]}
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  ref["logits"] = np.exp(2.0) * unit(ref["embedding"]) @ unit(ref["text"]).T
  assert got["dense"].shape == (2, 2, 3, TOWER.embed_dim)
  for k in ("embedding", "dense", "dense_plain", "pair_image", "pair_dense", "text", "logits",
            "res2", "res3", "res4", "res5"):
    np.testing.assert_allclose(got[k], ref[k], atol=1e-4, rtol=1e-4, err_msg=k)
  assert ours.backbone_channels() == {f"res{i + 2}": got[f"res{i + 2}"].shape[-1] for i in range(4)}


def test_export_is_the_imported_state_dict_with_step_counters(tmp_path):
  sd, _, _ = openclip_resnet(tmp_path / "src")
  ours = load_clip(tmp_path / "src")
  save_openclip(ours, tmp_path / "out")
  back = state_dict_io.read_state_dict(tmp_path / "out" / "open_clip_model.safetensors")
  assert sorted(back) == sorted(sd) and "visual.layer1.0.downsample.1.num_batches_tracked" in back
  for k in sd:
    assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
  written = openclip.read_model_config(tmp_path / "out" / "open_clip_config.json")
  assert written["vision_cfg"]["layers"] == list(TOWER.layers)
  assert openclip.config_from_openclip(written) == ours.config


def test_shapes_alone_name_a_known_model_or_are_refused(tmp_path, monkeypatch):
  sd, _, _ = openclip_resnet(tmp_path)
  (tmp_path / "open_clip_config.json").unlink()
  with pytest.raises(CheckpointError, match=r"match no OpenCLIP model we know.*--arch"):
    load_clip(tmp_path / "open_clip_model.safetensors")
  known = {**openclip.known_configs(), "RN-test": openclip_config("gelu")}
  monkeypatch.setattr(openclip, "known_configs", lambda: known)
  # OpenAI's state dicts also hold three hyper-parameters, which OpenCLIP drops as we do.
  sd |= {k: np.array(v, np.int64) for k, v in
         {"input_resolution": 64, "context_length": 77, "vocab_size": 49408}.items()}
  save_file(sd, str(tmp_path / "openai_layout.safetensors"))
  for name in ("open_clip_model.safetensors", "openai_layout.safetensors"):
    assert load_clip(tmp_path / name).config.vision == TOWER


# open_clip docs/model_profile.csv, column mparams (whole model, millions, 2 decimals).
OPENCLIP_MPARAMS = {"RN50": 102.01, "RN101": 119.69}


@pytest.mark.parametrize("name", sorted(OPENCLIP_MPARAMS))
def test_full_size_rn50_rn101_have_openclip_counts_keys_and_are_found_by_shapes(name):
  cfg = clip_family.get_arch(name)
  assert cfg == openclip.config_from_openclip(openclip.known_configs()[name], name)
  assert cfg.vision.heads == 32 and cfg.text.num_attention_heads == 8
  model = clip_family.abstract_clip(cfg)
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert round(count / 1e6, 2) == OPENCLIP_MPARAMS[name]
  shapes = torch_shapes(model, (nnx.Param, nnx.BatchStat, BatchCount))  # with logical axis names
  sd = clip_keys.hf_to_openclip({k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()})
  tower = set(clip_shapes(cfg.vision))
  tower |= {k.replace("running_mean", "num_batches_tracked") for k in tower if "running_mean" in k}
  assert {k for k in sd if k.startswith("visual.")} == {f"visual.{k}" for k in tower}
  assert openclip.infer_config(sd, name) == cfg  # a file of these shapes loads without --arch


def test_convert_cli_openclip_and_ours_and_a_clear_error_for_hf(tmp_path):
  sd, _, _ = openclip_resnet(tmp_path)
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp_path / "RN.pt")
  run = lambda *a: subprocess.run([sys.executable, "-m", "ovs_jax.convert", "clip",
                                   f"--src={tmp_path / 'RN.pt'}", *a], capture_output=True, text=True)
  r = run("--to=openclip", f"--out={tmp_path / 'oc'}")
  assert r.returncode == 0, r.stderr[-2000:]
  back = state_dict_io.read_state_dict(tmp_path / "oc" / "open_clip_model.safetensors")
  assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
  r = run("--to=hf", f"--out={tmp_path / 'hf'}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1] == (
      "error: ResNetCLIP has no HF transformers layout: write it as OpenCLIP (--to=openclip) or in "
      "our format (--to=ours)")
  assert not (tmp_path / "hf").exists()
  convert_clip(str(tmp_path / "RN.pt"), str(tmp_path / "ours"), "ours")
  ours = load_clip(tmp_path / "ours")
  assert type(ours) is ResNetCLIP and ours.config == load_clip(tmp_path).config


def test_maskclip_runs_on_a_resnet_clip(tmp_path):
  clip = clip_from_spec("random:resnet_tiny")
  assert type(clip) is ResNetCLIP
  assert maskclip_model(clip, [["cat"], ["dog"]], templates=("{}",)).input_multiple == 32
  assert clip_family.from_record(MASKCLIP.architecture(clip)["clip"]) == clip.config
  factories = evaluation.model_factories(["random:resnet_tiny"], [], [], templates=("{}",),
                                         cache_dir=None)
  results = evaluation.evaluate(factories, ["demo"], InferenceConfig(short_side=64), tmp_path,
                                max_images=2)
  row = results["MaskCLIP (random:resnet_tiny)"]["demo"]
  assert row["num_images"] == 2 and row["num_skipped"] == 0
