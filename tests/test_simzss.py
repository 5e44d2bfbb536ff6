"""SimZSS through the method contract: the shared trainer trains it on captions (only the text side
moves), evaluate's checkpoint loader reads it back with the trainer's mIoU, the background threshold
labels low-scoring pixels, and the DINOv2-reg tower plugs in."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline.demo import demo_dataset
from input_pipeline.vocab import load_vocabulary
from ovs_jax.config_utils import recipe_config
from ovs_jax.evaluation import summarize
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.engine import evaluate_source
from ovs_jax.inference.segmentation_model import build_from_checkpoint
from ovs_jax.methods import simzss
from ovs_jax.methods.registry import get_method
from ovs_jax.restore import restore_workdir
from ovs_jax.templates import get_templates
from ovs_jax.trainer import train_and_evaluate


def tiny_config(**model):
  c = recipe_config("configs/simzss_dinov2_b14.py", "demo")
  c.clip.weights = "random"  # the tiny CLIP's shapes; no pre-training in a unit test
  c.model.update(text_width=32, text_layers=1, text_heads=2, **model)
  c.data.update(crop_size=64)
  c.evals.val.update(short_side=64, max_images=8)
  c.train.update(batch_size=8, steps=4, log_every=1, ckpt_every=2)
  c.optim.update(warmup_steps=1)
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = tiny_config()
  workdir = tmp_path_factory.mktemp("simzss")
  return config, workdir, train_and_evaluate(config, workdir)


def test_trainer_trains_the_text_side_only(run):
  config, workdir, result = run
  history = result["history"]
  assert len(history) == 4 and all(np.isfinite(h["loss"]) for h in history)
  assert all(h["loss"] == pytest.approx(h["loss_global"] + 0.05 * h["loss_local"], rel=1e-5) for h in history)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["method"] == "simzss" and saved["architecture"]["vision"]["tower"] == "clip"
  assert saved["architecture"]["text"]["hidden_size"] == 32
  _, _, state, step = restore_workdir(workdir)
  assert step == 4
  assert "vision" in state["frozen"] and "vision" not in state["params"]
  # The frozen tower is the one built from the config, bit for bit.
  fresh = nnx.to_pure_dict(nnx.state(get_method("simzss").build_model(config).vision))
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(state["frozen"]["vision"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_reads_the_checkpoint_back(run):
  config, workdir, result = run
  model = build_from_checkpoint(workdir, load_vocabulary("demo"))
  assert model.input_multiple == 16
  val = config.evals.val
  counts, n, _ = evaluate_source(model, demo_dataset("val"), InferenceConfig(short_side=val.short_side,
                                                                             max_size=val.max_size),
                                 batch_size=8, max_images=8)
  got = summarize(counts, model.class_names, n, val.miou_convention)
  np.testing.assert_allclose(got["mIoU"], result["evals"]["val"]["mIoU"], rtol=1e-6)
  # Sliding windows through the shared engine (the paper's protocol; 448 at full size).
  slide = InferenceConfig(mode="slide", short_side=96, max_size=2048, window=64, stride=32)
  counts, n, _ = evaluate_source(model, demo_dataset("val"), slide, batch_size=8, max_images=8)
  assert n == 8 and 0 <= summarize(counts, model.class_names, n, val.miou_convention)["mIoU"] <= 100


def test_background_threshold(run):
  config, workdir, _ = run
  cfg, graphdef, state, _ = restore_workdir(workdir)
  vocab = [["background"], ["sky"], ["grass", "lawn"]]
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
  valid = jnp.ones((1, 64, 64), bool)

  def labels(threshold):
    cfg.model.background_threshold = threshold
    seg = get_method("simzss").segmentation_model(graphdef, (state["params"], state["frozen"]), cfg,
                                                   vocab, templates=get_templates("plain"))
    assert seg.name.endswith(f"(background below {threshold:g})")  # reported with the results
    scores = seg.apply(seg.params, pixels, valid)
    return scores, np.asarray(scores.argmax(-1))

  scores, label = labels(0.0)
  best = np.asarray(scores[..., 1:]).max(-1)
  np.testing.assert_array_equal(label == 0, best < 0.0)  # background exactly where all score < 0
  np.testing.assert_array_equal(np.asarray(scores[..., 0]), 0.0)
  assert (labels(2.0)[1] == 0).all() and (labels(-2.0)[1] != 0).all()  # cosines lie in [-1, 1]
  assert simzss.background_class([["sky"], ["grass"]]) is None


def test_dinov2_tower_builds_and_its_loss_runs():
  c = tiny_config()
  c.vision.update(tower="dinov2", arch="dinov2_reg_tiny", weights="random")
  method = get_method("simzss")
  model = method.build_model(c)
  record = method.architecture(model)
  assert record["vision"] == {"tower": "dinov2", "config": record["vision"]["config"]}
  assert record["vision"]["config"]["num_register_tokens"] == 4
  again = nnx.eval_shape(lambda: method.build_model(c, record))
  assert jax.tree.structure(nnx.state(again)) == jax.tree.structure(nnx.state(model))
  assert model.dense_stride == 14 and model.text_projection.kernel.shape == (32, 64)
  spec = method.batch_spec(c, 2, 56, 56)
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.normal(size=s).astype(d) if d == "float32" else np.zeros(s, d))
           for k, (s, d) in spec.items()}
  batch["text_ids"] = batch["text_ids"].at[:, :3].set(jnp.asarray([49406, 1929, 49407]))
  batch["concept_ids"] = batch["concept_ids"].at[:, 0].set(7) - (jnp.arange(32) > 0)
  batch["concept_starts"] = batch["concept_starts"].at[:, 0].set(1)
  batch["concept_ends"] = batch["concept_ends"].at[:, 0].set(2)
  value_and_grad = nnx.jit(nnx.value_and_grad(lambda m: method.loss(m, batch, None, (), c), has_aux=True))
  (loss, terms), grads = value_and_grad(model)
  assert np.isfinite(float(loss)) and float(terms["concepts_per_caption"]) == 1.0
  # No gradient reaches the frozen tower; the text side gets one.
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(nnx.to_pure_dict(grads["vision"])))
  assert float(jnp.abs(grads["text_projection"]["kernel"][...]).max()) > 0


def test_class_names_are_found_in_their_templates():
  from ovs_jax.tokenizer import tokenize
  ids, spans = simzss.name_spans(["a photo of a traffic light.", "There is a sky in the scene", "sky"],
                                 ["traffic light", "sky", "sky"])
  for row, (s, e), name in zip(ids, spans, ["traffic light", "sky", "sky"]):
    run = tokenize(name)[0]
    np.testing.assert_array_equal(row[s:e], run[1:1 + e - s])
    assert e - s == (run != 0).sum() - 2
  assert tuple(spans[0]) == (5, 7) and tuple(spans[2]) == (1, 2)


def test_export_to_pytorch_and_back(run, tmp_path):
  from safetensors.numpy import load_file
  from ovs_jax.torch_export.checkpoint import from_torch, to_torch
  _, workdir, _ = run
  out = to_torch(workdir, tmp_path / "export")
  sd = load_file(str(out / "model.safetensors"))
  _, _, state, _ = restore_workdir(workdir)
  kernel = np.asarray(state["params"]["text_projection"]["kernel"])
  np.testing.assert_array_equal(sd["text_projection.weight"], kernel.T)  # torch Linear layout
  _, _, back, step = restore_workdir(from_torch(out, tmp_path / "back"))
  assert step == 4
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(back["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("scan", [False, True])
def test_text_tower_starts_as_openclip_initialises_it(scan):
  """The release's text tower is OpenCLIP's TextTransformer with its init_parameters
  (src/open_clip/transformer.py L553-567): each weight's spread is the formula's, re-derived here."""
  c = tiny_config()
  c.model.update(text_width=64, text_layers=2, text_heads=2, scan=scan)
  model = get_method("simzss").build_model(c)
  w, n = 64, 2
  std = lambda p: float(np.asarray(p[...]).std())
  close = lambda got, want: abs(got - want) < 0.1 * want
  emb = model.text_model.embeddings
  assert close(std(emb.token_embedding.embedding), 0.02) and close(std(emb.position_embedding.embedding), 0.01)
  layers = model.text_model.encoder.layers
  layer = layers if scan else layers[1]
  a, m = layer.self_attn, layer.mlp
  for p, want in ((a.q_proj.kernel, w ** -0.5), (a.v_proj.kernel, w ** -0.5),
                  (a.out_proj.kernel, w ** -0.5 * (2 * n) ** -0.5), (m.fc1.kernel, (2 * w) ** -0.5),
                  (m.fc2.kernel, w ** -0.5 * (2 * n) ** -0.5), (model.text_projection.kernel, w ** -0.5)):
    assert close(std(p), want), (p, std(p), want)
  assert float(jnp.abs(a.q_proj.bias[...]).max()) == 0.0
  bias = np.asarray(m.fc1.bias[...])  # torch Linear's default: U(±1/sqrt(fan_in))
  assert bias.max() <= w ** -0.5 and close(float(bias.std()), w ** -0.5 / np.sqrt(3))


def test_recipe_evaluators_slide_as_the_paper(run):
  """The recipe's evaluators use sliding 448² windows every 224 (TCL/mmseg, the paper's protocol);
  the miou evaluator's mode/window/stride reach the shared engine."""
  from ovs_jax.evaluators.miou import MIoU
  recipe = recipe_config("configs/simzss_dinov2_b14.py", "")
  assert {(e.mode, e.window, e.stride, e.short_side) for e in recipe.evals.values()} == {("slide", 448, 224, 448)}
  config, workdir, _ = run
  model = build_from_checkpoint(workdir, load_vocabulary("demo"))
  cfg = dict(config.evals.val, short_side=96, mode="slide", window=64, stride=32, max_images=8)
  got = MIoU("val", cfg, config).score(model)
  slide = InferenceConfig(mode="slide", short_side=96, max_size=cfg["max_size"], window=64, stride=32)
  counts, n, _ = evaluate_source(model, demo_dataset("val"), slide, batch_size=8, max_images=8)
  want = summarize(counts, model.class_names, n, cfg["miou_convention"])
  np.testing.assert_allclose(got["mIoU"], want["mIoU"], rtol=1e-6)
