"""A method plugs in through the contract alone: the linear probe of `linear_probe_method.py` (its
module, a config and one registry line) is trained by the shared trainer, evaluated by the shared
evaluators, restored on another mesh, read back by evaluate's checkpoint loader and exported to a
PyTorch state dict and back — with no line of shared code that names it."""
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from input_pipeline.demo import demo_dataset
from input_pipeline.vocab import load_vocabulary
from ovs_jax import sharding
from ovs_jax.evaluation import summarize
from ovs_jax.inference.batching import InferenceConfig
from ovs_jax.inference.engine import evaluate_source
from ovs_jax.inference.segmentation_model import build_from_checkpoint
from ovs_jax.methods import registry
from ovs_jax.restore import restore_workdir
from ovs_jax.torch_export.checkpoint import from_torch, to_torch
from ovs_jax.trainer import train_and_evaluate
from trainer_helpers import tiny_config


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
  registry.register("linear_probe", "linear_probe_method")  # the one registry line
  config = tiny_config(train__steps=6, train__ckpt_every=3, evals__val__every=6,
                       evals__pictures__every=6, evals__pictures__num=1)
  config.method = "linear_probe"
  config.frozen = [r"clip/"]
  config.optim.update(lr=1e-2, lr_multipliers=[], no_decay="", no_decay_1d=True)
  workdir = tmp_path_factory.mktemp("probe")
  return config, workdir, train_and_evaluate(config, workdir)


def test_shared_trainer_and_evaluators_run_a_new_method(probe_run):
  config, workdir, result = probe_run
  losses = [h["loss"] for h in result["history"]]
  assert len(losses) == 6 and losses[-1] < losses[0]
  assert set(result["evals"]) == {"val", "pictures"}
  assert 0 <= result["evals"]["val"]["mIoU"] <= 100 and result["evals"]["val"]["num_images"] == 8
  assert list((workdir / "predictions" / "step_6").glob("*_overlay.png"))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["method"] == "linear_probe" and "clip" in saved["architecture"]


def test_restore_evaluate_and_export_through_the_contract(probe_run, tmp_path):
  config, workdir, result = probe_run
  # Restore on a different mesh (the run used 8 data-parallel devices): the step-6 weights.
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  cfg, graphdef, state, step = restore_workdir(workdir, mesh=mesh)
  assert step == 6 and cfg.method == "linear_probe"
  # evaluate's checkpoint loader: the method's own inference, same mIoU as the trainer's evaluator.
  vocab = load_vocabulary("demo")
  model = build_from_checkpoint(workdir, vocab)
  val = config.evals.val
  counts, n, _ = evaluate_source(model, demo_dataset("val"), InferenceConfig(short_side=val.short_side,
                                                                             max_size=val.max_size),
                                 batch_size=8, max_images=8)
  got = summarize(counts, model.class_names, n, val.miou_convention)
  np.testing.assert_allclose(got["mIoU"], result["evals"]["val"]["mIoU"], rtol=1e-6)
  # Export (whole model as a PyTorch state dict) and back into a new workdir.
  out = to_torch(workdir, tmp_path / "export", text_classifier=False)
  sd = load_file(str(out / "model.safetensors"))
  probe = np.asarray(state["params"]["probe"]["kernel"])
  np.testing.assert_array_equal(sd["probe.weight"], probe.T)  # torch Linear layout
  back = from_torch(out, tmp_path / "back")
  _, _, state2, step2 = restore_workdir(back, mesh=mesh)
  assert step2 == 6
  np.testing.assert_array_equal(np.asarray(state2["params"]["probe"]["kernel"]), probe)
