"""Every recipe builds (scenic-style, under `jax.eval_shape`: nothing is computed), and the real
sharded train step compiles ahead of time on 8 simulated devices (maxtext-style) for data- and
fsdp-parallel meshes without leaving a large parameter replicated."""
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ovs_jax import sharding
from ovs_jax.config_utils import recipe_config
from ovs_jax.methods.registry import get_method, method_names
from ovs_jax.train_step import compile_train_step
from trainer_helpers import tiny_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.py"))
VARIANTS = {"maft_plus_vitb.py": ["", "demo", "panoptic", "demo,panoptic"], "cdt_vitb.py": ["", "demo"],
            # The ConvNeXt recipes share the ViT recipe's variants; their full-size builds are the slow part.
            "maft_plus_convnext_b.py": ["", "demo"], "maft_plus_convnext_l.py": [""],
            "gkc_r50.py": ["", "demo"], "gkc_vitb.py": ["", "demo", "demo,zero_shot"],
            "mvp_seg_vitb16.py": ["", "demo", "voc", "context"], "simzss_dinov2_b14.py": ["", "demo"],
            "maskclip_plus_r101.py": ["", "demo", "voc", "context"],
            "mvp_seg_plus_vitb16.py": ["", "demo", "context"]}


def _recipes():
  for path in CONFIGS:
    for arg in VARIANTS.get(path.name, [""]):
      yield pytest.param(path, arg, id=f"{path.stem}:{arg}" if arg else path.stem)


def test_every_config_file_is_listed():
  assert sorted(p.name for p in CONFIGS) == sorted(VARIANTS)


@pytest.mark.parametrize("path,arg", list(_recipes()))
def test_recipe_model_and_loss_build_under_eval_shape(path, arg):
  config = recipe_config(path, arg)
  assert config.method in method_names()
  config.clip.weights = "random"  # shapes only; nothing is downloaded or pre-trained
  if "checkpoint" in config.get("teacher", {}):  # MVP-SEG+'s trained teacher: an untrained one
    config.teacher.checkpoint = "random"
  if "vision" in config:  # a method's own image tower (SimZSS's DINOv2)
    config.vision.weights = "random"
  method = get_method(config.method)
  model = nnx.eval_shape(lambda: method.build_model(config))
  record = method.architecture(model)
  assert jax.tree.structure(nnx.state(nnx.eval_shape(lambda: method.build_model(config, record)))) == \
      jax.tree.structure(nnx.state(model))
  spec = method.batch_spec(config, 2, 128, 160)  # stride-32 maps >= 4 wide (RC's POD pyramid)
  batch = {k: jax.ShapeDtypeStruct(s, jnp.dtype(d)) for k, (s, d) in spec.items()}
  context = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s[0], jnp.dtype(s[1])), method.context_spec(model, 5, 2),
                         is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str))
  graphdef, state = nnx.split(model)
  loss, terms = jax.eval_shape(
      lambda st, b, c: method.loss(nnx.merge(graphdef, st), b, jax.random.PRNGKey(0), c, config),
      state, batch, context)
  assert loss.shape == () and all(t.shape == () for t in terms.values())


@pytest.mark.parametrize("mesh", [{"data": 8}, {"fsdp": 8}], ids=["data8", "fsdp8"])
def test_real_train_step_compiles_ahead_of_time_on_8_devices(mesh):
  config = tiny_config(**{f"mesh__{k}": v for k, v in dict(dict(data=1, fsdp=1, tensor=1), **mesh).items()})
  m = sharding.make_mesh(config.mesh.to_dict())
  compiled, ts = compile_train_step(get_method(config.method), config, m, batch_size=8, height=64, width=96)
  assert compiled.memory_analysis().temp_size_in_bytes > 0
  # Under FSDP no parameter (or optimizer moment) of >= 16 KiB stays whole on every device.
  assert sharding.replicated_parameters(ts.state, ts.shardings, threshold_bytes=1 << 14) == []
  if "fsdp" in mesh:
    kernel = ts.shardings["params"]["clip"]["vision_model"]["encoder"]["layers"][0]["mlp"]["fc1"]["kernel"]
    assert "fsdp" in kernel.spec
