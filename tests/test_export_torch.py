"""MAFT+ export to PyTorch: the pure-PyTorch module reproduces the JAX score maps, the HF CLIP
directory matches our towers, JAX -> PyTorch -> JAX is bit-identical, bad inputs fail clearly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import configs.cdt_vitb as cdt_vitb
from ovs_jax import optim, sharding
from ovs_jax.checkpointing import Checkpointer
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.methods import maft_plus
from ovs_jax.models import clip_config
from ovs_jax.restore import restore_workdir, write_run_config
from ovs_jax.train_step import init_train_state
from ovs_jax.torch_export import checkpoint as export
from ovs_jax.torch_export.maft_plus_torch import MAFTPlusTorch, build_text_classifier, load_text_classifier


def random_model(config, seed=0, zero=()):
  """A MAFT+ model with random 'trained-like' weights (no zero kernels), built without JAX init.

  Parameters under the path prefixes `zero` are zeros instead (parts a test does not run).
  """
  model = nnx.eval_shape(lambda: maft_plus.METHOD.build_model(config))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  normal = lambda shape: rng.standard_normal(shape, dtype=np.float32)

  def fill(path, x):
    name, shape = str(path[-1].key), x.shape
    if "/".join(str(p.key) for p in path).startswith(zero):
      return np.zeros(shape, np.float32)
    if name == "scale":
      v = 1 + 0.1 * normal(shape)
    elif name == "bias":
      v = 0.1 * normal(shape)
    elif name == "logit_scale":
      v = np.full(shape, np.log(1 / 0.07))
    elif name == "kernel":
      v = normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif name in ("embedding", "class_embedding"):
      v = 0.1 * normal(shape)
    else:  # query / level / void embeddings
      v = normal(shape)
    return v.astype(np.float32)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


def save_workdir(model, config, workdir, step=3, mesh=None):
  """A training workdir as the trainer writes it (config.json + sharded orbax train state)."""
  mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": len(jax.devices())})
  ts = init_train_state(maft_plus.METHOD, config, mesh, model=model)
  state = dict(ts.state, step=jax.device_put(jnp.asarray(step, jnp.int32), ts.shardings["step"]))
  workdir.mkdir(parents=True)
  write_run_config(workdir, config, maft_plus.METHOD.architecture(model))
  ckpt = Checkpointer(workdir / "checkpoints", use_async=False)
  ckpt.save(step, state, force=True)
  ckpt.close()
  return workdir


def jax_scores(model, pixels, text, index):
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, pixels):
    out = nnx.merge(graphdef, state)(pixels, text, index)
    return maft_plus.semantic_scores(out, pixels.shape[1:3]), out["trunk"]
  return [np.asarray(a) for a in run(state, pixels)]


def torch_scores(tmodel, pixels, text, index):
  with torch.no_grad():
    out = tmodel(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.as_tensor(text),
                 torch.as_tensor(index, dtype=torch.long))
    scores = tmodel.semantic_scores(out, pixels.shape[1:3])
  return scores.permute(0, 2, 3, 1).numpy(), out["trunk"].numpy()


def demo_config():
  c = cdt_vitb.get_config("demo")
  c.clip.weights = "random"
  return c


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  config = demo_config()
  model = random_model(config)
  workdir = save_workdir(model, config, tmp / "run")
  # The CLI, in a process with one device: the checkpoint was saved sharded over all of ours.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = tmp / "export"
  subprocess.run([sys.executable, "-m", "ovs_jax.convert", "to-torch", f"--checkpoint={workdir}/3",
                  f"--out={out}", "--include_teacher"], check=True, env=env, cwd=Path(__file__).parents[1])
  return dict(tmp=tmp, config=config, model=model, workdir=workdir, out=out)


def test_export_directory_layout(demo):
  out = demo["out"]
  assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "key_map.json", "clip",
                                            "text_classifier.safetensors"}
  meta = json.loads((out / "config.json").read_text())
  assert meta["format"] == "ovs_jax.maft_plus" and meta["step"] == 3 and meta["includes_teacher"]
  assert len(meta["text_classifier"]["class_names"]) == 30  # the demo's classes
  keys = json.loads((out / "key_map.json").read_text())["keys"]
  assert keys["head.predictor.layers.0.cross_attn.q_proj.weight"] == {
      "path": "head/predictor/layers/0/cross_attn/q_proj/kernel", "layout": "transpose", "shape": [64, 64]}
  assert keys["pyramid.up4_1.weight"]["layout"] == "hwio_to_iohw"
  assert keys["pyramid.up4_1.weight"]["shape"] == [128, 64, 2, 2]  # ConvTranspose2d (in, out, kh, kw)
  assert keys["head.pixel_decoder.output_conv.weight"]["layout"] == "hwio_to_oihw"
  assert keys["cdt.norm.weight"]["layout"] == "rename"
  assert any(k.startswith("teacher.") for k in keys)


def test_torch_module_matches_jax_scores_and_hf_clip(demo):
  from transformers import CLIPModel
  from ovs_jax.templates import get_templates
  from ovs_jax.tokenizer import tokenize
  out = demo["out"]
  tmodel = MAFTPlusTorch.from_export(out).eval()
  text, index, names = load_text_classifier(out)
  assert names[0] == "sky" and index.shape[0] == 30
  pixels = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype(np.float32)
  ref, dense = jax_scores(demo["model"], pixels, jnp.asarray(text.numpy()), jnp.asarray(index.numpy()))
  got, tdense = torch_scores(tmodel, pixels, text, index)
  assert got.shape == ref.shape == (2, 64, 96, 30)
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(tdense, dense, atol=1e-4, rtol=0)

  # The HF directory: same trunk features (transformers' own ViT) and text classifier.
  hf = CLIPModel.from_pretrained(out / "clip").eval()
  with torch.no_grad():
    tokens = hf.vision_model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
                             interpolate_pos_encoding=True).last_hidden_state[:, 1:].numpy()
  np.testing.assert_allclose(tokens.reshape(dense.shape), dense, atol=1e-4, rtol=0)
  vocab = json.loads((out / "config.json").read_text())["text_classifier"]["synonyms"]
  hf_text, hf_index = build_text_classifier(hf, vocab, get_templates("vild"), tokenize)
  np.testing.assert_array_equal(hf_index.numpy(), index.numpy())
  np.testing.assert_allclose(hf_text.numpy(), text.numpy(), atol=1e-5, rtol=0)


def _params(workdir, mesh):
  _, _, state, step = restore_workdir(workdir, mesh=mesh)
  return step, {k: state[k] for k in ("params", "frozen")}


def test_round_trip_is_bit_identical(demo):
  one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  new = export.from_torch(demo["out"], demo["tmp"] / "back")
  step0, before = _params(demo["workdir"], one)
  step1, after = _params(new, one)
  assert step0 == step1 == 3
  flat0, flat1 = jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves_with_path(after)
  assert [p for p, _ in flat0] == [p for p, _ in flat1]
  for (path, a), (_, b) in zip(flat0, flat1):
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def test_edited_torch_state_comes_back(demo):
  """A state dict saved from the PyTorch module (no text tower, no teacher) imports: text tower from
  clip/, teacher = the imported image tower; an edit made in PyTorch survives."""
  import shutil
  from safetensors.torch import save_file
  src = demo["tmp"] / "edited"
  shutil.copytree(demo["out"], src)
  tmodel = MAFTPlusTorch.from_export(src)
  with torch.no_grad():
    tmodel.cdt.mlp.bias.add_(1.0)
  save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(src / "model.safetensors"))
  model = nnx.eval_shape(lambda: maft_plus.METHOD.build_model(demo_config()))
  _, sd = export.read_export(src)
  export.load_model_state(model, sd, source="edited")
  np.testing.assert_array_equal(np.asarray(model.cdt.mlp.bias[...]),
                                np.asarray(demo["model"].cdt.mlp.bias[...]) + 1.0)
  ours = nnx.to_pure_dict(nnx.state(demo["model"].clip.text_model))
  back = nnx.to_pure_dict(nnx.state(model.clip.text_model))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ours, back)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               nnx.to_pure_dict(nnx.state(model.teacher)), nnx.to_pure_dict(nnx.state(model.clip.vision_model)))


def test_bfloat16_export_without_teacher(demo):
  out = export.export_model(demo["model"], demo["config"], demo["tmp"] / "bf16", dtype="bfloat16",
                            text_classifier=False)
  from safetensors import safe_open
  with safe_open(str(out / "model.safetensors"), framework="pt") as f:
    assert not any(k.startswith("teacher.") for k in f.keys())
    assert f.get_tensor("cdt.q_proj.weight").dtype == torch.bfloat16
  ref = torch.from_numpy(np.asarray(demo["model"].cdt.q_proj.kernel[...]).T.copy())
  got = MAFTPlusTorch.from_export(out).cdt.q_proj.weight.detach()
  torch.testing.assert_close(got, ref, atol=0, rtol=1e-2)


def test_errors_name_the_file(demo, tmp_path):
  # A checkpoint of a method this install does not have.
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"method": "zegformer", "clip": {}}))
  with pytest.raises(CheckpointError, match=r"other/config.json: method 'zegformer'"):
    export.to_torch(other, tmp_path / "x")
  # An HF CLIP directory is not a MAFT+ export.
  with pytest.raises(CheckpointError, match=r"clip/config.json: model_type 'clip'"):
    export.from_torch(demo["out"] / "clip", tmp_path / "y")
  # A truncated model file.
  import shutil
  bad = tmp_path / "truncated"
  shutil.copytree(demo["out"], bad)
  data = (bad / "model.safetensors").read_bytes()
  (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"truncated/model.safetensors"):
    export.from_torch(bad, tmp_path / "z")
  with pytest.raises(CheckpointError, match=r"truncated/model.safetensors"):
    MAFTPlusTorch.from_export(bad)
  # A truncated orbax checkpoint file.
  run = tmp_path / "run"
  shutil.copytree(demo["workdir"], run)
  files = sorted((p for p in (run / "checkpoints" / "3").rglob("*") if p.is_file()),
                 key=lambda p: -p.stat().st_size)
  files[0].write_bytes(files[0].read_bytes()[:16])
  with pytest.raises(CheckpointError, match=r"checkpoints/3"):
    export.to_torch(run / "3", tmp_path / "w")


@pytest.mark.slow
def test_full_size_cdt_vitb_matches_jax():
  """cdt_vitb (ViT-B/16, 100 queries, 6+9 layers), random weights, one 64×64 image, in memory."""
  config = cdt_vitb.get_config("")
  config.clip.weights, config.model.dtype = "random", "float32"
  model = random_model(config, seed=2, zero=("teacher/", "clip/text_model/"))
  sd, _ = export.model_state_dict(model)
  tmodel = MAFTPlusTorch({"model": config.model.to_dict(), "clip": clip_config.to_hf_dict(model.clip.config)})
  tmodel.load_export_state({k: torch.from_numpy(v) for k, v in sd.items()})
  rng = np.random.default_rng(3)
  text = rng.normal(size=(5, 512)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  index = np.array([[0, 1], [2, -1], [3, 4]], np.int32)
  pixels = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
  ref, _ = jax_scores(model, pixels, jnp.asarray(text), jnp.asarray(index))
  got, _ = torch_scores(tmodel.eval(), pixels, text, index)
  # Scores sum 100 query terms and reach ~10-50 with random weights; the outputs before that
  # (mask logits, both classifiers' logits, dense map) agree to ~5e-6 relative, fp32 rounding
  # amplified through 12 ViT + 15 head layers, so the scores are compared at 1e-4 relative.
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
