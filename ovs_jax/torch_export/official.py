"""Official MAFT+ checkpoints (`maftp_b.pth`, `maftp_l.pth`) <-> our workdirs.

  from_official: detectron2 checkpoint -> a new workdir that evaluate, predict, convert and train
                 (fine-tuning) read; the recipe (Base/Large) is chosen from the CLIP's width.
  to_official:   a ConvNeXt MAFT+ workdir -> `{'model': state dict}` the official code loads with
                 `strict=True` (`DetectionCheckpointer(model).load(...)` / `model.load_state_dict`).

Names follow `interchange/maft_plus_official_keys.tsv`. The official model's CDT reads its dense map
as `nchw_rows` does, so imported models keep `model.cdt_dense='official'`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from ovs_jax.interchange import maft_official, torch_state
from ovs_jax.interchange.errors import CheckpointError

RECIPES = {640: "maft_plus_convnext_b.py", 768: "maft_plus_convnext_l.py"}  # by CLIP embed dim
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def recipe_for(sd: dict[str, np.ndarray], source: str) -> str:
  """The recipe file whose CLIP the checkpoint holds (by the void embedding's width)."""
  void = sd.get("void_embedding.weight")
  dim = None if void is None else void.shape[-1]
  if dim not in RECIPES:
    raise CheckpointError(f"{source}: CLIP embedding width {dim} matches no official MAFT+ recipe "
                          f"({', '.join(f'{d}: {r}' for d, r in RECIPES.items())})")
  return RECIPES[dim]


def _infer_model_sizes(sd) -> dict:
  """Head sizes the state dict fixes (a checkpoint trained with other settings still imports)."""
  def count(prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
  queries, hidden = sd["sem_seg_head.predictor.query_feat.weight"].shape
  return dict(num_queries=queries, hidden_dim=hidden,
              dec_layers=count("sem_seg_head.predictor.transformer_ffn_layers."),
              enc_layers=count("sem_seg_head.pixel_decoder.transformer.encoder.layers."),
              dec_ffn_dim=sd["sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight"].shape[0],
              enc_ffn_dim=sd["sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight"].shape[0])


def from_official(src, workdir, *, recipe: str | None = None, step: int = 0) -> Path:
  """An official MAFT+ checkpoint -> a new workdir (see module docstring). `recipe`: a file in
  configs/ with an optional ':variant' (default: Base or Large by the CLIP width)."""
  from ovs_jax.config_utils import recipe_config
  from ovs_jax.methods.registry import get_method
  from ovs_jax.torch_export.checkpoint import write_imported_workdir
  src = Path(src).absolute()
  official = maft_official.read_official_checkpoint(src)
  name, _, variant = (recipe or recipe_for(official, str(src))).partition(":")
  config = recipe_config(CONFIGS_DIR / name, variant)
  config.model.update(_infer_model_sizes(official))
  config.model.cdt_dense = "official"
  ours = maft_official.from_official(official, str(src))
  method = get_method(config.method)
  config.clip.weights = "random"  # shapes only: the record is all this build is for
  architecture = method.architecture(nnx.eval_shape(lambda: method.build_model(config)))
  # Fine-tuning rebuilds the CLIP from this file's student (`backbone.clip_model`), then restores.
  config.clip.weights = str(src)
  return write_imported_workdir(
      workdir, config, architecture, step=step, source=str(src), precision="float32",  # as its evaluation
      load=lambda model: torch_state.import_state_dict(model, ours, source=str(src)))


def to_official(checkpoint, out) -> Path:
  """A ConvNeXt MAFT+ workdir's checkpoint (newest, or WORKDIR/STEP) -> `out` (.pth), atomically."""
  import jax
  import torch

  from input_pipeline.datasets import dataset_meta
  from input_pipeline.vocab import load_vocabulary
  from ovs_jax import sharding
  from ovs_jax.restore import restore_workdir
  from ovs_jax.torch_export.checkpoint import parse_checkpoint
  workdir, step = parse_checkpoint(checkpoint)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  config, graphdef, state, step = restore_workdir(workdir, step, mesh)
  if config.method != "maft_plus":
    raise CheckpointError(f"{workdir}: method {config.method!r}; only MAFT+ has an official layout")
  model = nnx.merge(graphdef, state["params"], state["frozen"])
  if model.pyramid is not None:
    raise CheckpointError(f"{workdir}: a ViT MAFT+ has no official counterpart (the official code "
                          "builds OpenCLIP ConvNeXt/ResNet backbones); use `convert to-torch`")
  if config.model.get("cdt_dense", "per_pixel") != "official":
    raise CheckpointError(f"{workdir}: trained with model.cdt_dense="
                          f"{config.model.get('cdt_dense', 'per_pixel')!r}; the official code's CDT "
                          "reads its map as 'official', so its outputs would differ")
  num_classes = len(load_vocabulary(dataset_meta(config.data.train, "train").vocabulary))
  sd = maft_official.to_official(torch_state.export_state_dict(model), num_classes=num_classes,
                                 void_weight=config.loss.void_weight)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  torch.save({"model": {k: torch.from_numpy(np.array(v, order="C")) for k, v in sd.items()},
              "iteration": int(step)}, tmp)
  tmp.replace(out)
  return out
