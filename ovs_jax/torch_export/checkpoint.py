"""Trained MAFT+ checkpoints <-> a PyTorch export directory (JAX side of `ovs_jax.convert`).

Export directory (`to_torch`):
  config.json                  format 'ovs_jax.maft_plus', step, model sizes, CLIP architecture,
                               input normalisation, training vocabulary, the training config
  model.safetensors            the whole segmentation model (`clip.*`, `pyramid.*`, `head.*`,
                               `in_vocab.*`, `cdt.*`; `teacher.*` only with include_teacher)
  key_map.json                 PyTorch name -> our parameter path and layout op
  clip/                        HF `CLIPModel` directory (config.json + model.safetensors)
  text_classifier.safetensors  optional: 'embeddings' (S, D), 'synonym_index' (C, K) of the
                               training vocabulary (class names in config.json)

Names are the NNX attribute paths joined by '.', with `torch_state`'s layouts, except that the
feature pyramid's 2×2 transposed convolutions take ConvTranspose2d's (in, out, kh, kw).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ovs_jax.interchange import state_dict_io, torch_state
from ovs_jax.interchange.clip_weights import clip_files
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.models import clip_family
from ovs_jax.torch_export.maft_plus_torch import CLIP_MEAN, CLIP_STD, FORMAT, read_export_config

FORMAT_VERSION = 1
LAYOUTS = dict(torch_state.LAYOUTS, hwio_to_iohw="ConvTranspose kernel (kh, kw, in, out) -> weight (in, out, kh, kw)")


def _np_dtype(dtype: str):
  if dtype == "bfloat16":
    import ml_dtypes
    return ml_dtypes.bfloat16
  return np.dtype(dtype)


def _conv_transpose_names(model) -> set[str]:
  from ovs_jax.heads.feature_pyramid import Upsample2x
  return {".".join(map(str, path)) + ".weight" for path, node in nnx.iter_graph(model)
          if isinstance(node, Upsample2x)}


def model_state_dict(model, *, include_teacher=False, dtype=np.float32):
  """-> ({pytorch_name: array}, key map) of a MAFT+ model."""
  sd = torch_state.export_state_dict(model, dtype)
  keys = torch_state.key_map(model)
  for name in _conv_transpose_names(model):
    sd[name] = np.array(sd[name].transpose(1, 0, 2, 3), order="C")
    keys[name]["layout"] = "hwio_to_iohw"
  if not include_teacher:
    sd = {k: v for k, v in sd.items() if not k.startswith("teacher.")}
  for k, v in sd.items():
    keys[k]["shape"] = list(v.shape)
  return sd, {k: keys[k] for k in sorted(sd)}


def load_model_state(model, sd: dict, source: str):
  """Inverse of `model_state_dict` into `model` (in place; strict keys and shapes)."""
  sd = dict(sd)
  for name in _conv_transpose_names(model):
    if name in sd and np.ndim(sd[name]) == 4:
      sd[name] = np.asarray(sd[name]).transpose(1, 0, 2, 3)
  torch_state.import_state_dict(model, sd, source=source)


def training_vocabulary(config):
  from input_pipeline.datasets import dataset_meta
  from input_pipeline.vocab import load_vocabulary
  return load_vocabulary(dataset_meta(config.data.train, "train").vocabulary)


def export_model(model, config, out, *, step=0, dtype="float32", include_teacher=False,
                 text_classifier=True, cache_dir=None) -> Path:
  """Write the export directory (module docstring) for a MAFT+ `model` trained with `config`."""
  from ovs_jax.methods.registry import get_method
  np_dtype = _np_dtype(dtype)
  sd, keys = model_state_dict(model, include_teacher=include_teacher, dtype=np_dtype)
  meta = {
      "format": f"ovs_jax.{config.method}", "format_version": FORMAT_VERSION, "method": config.method,
      "step": int(step), "dtype": dtype, "includes_teacher": include_teacher,
      "model": {k: v for k, v in config.model.to_dict().items() if k not in ("dtype", "scan", "remat")},
      "architecture": get_method(config.method).architecture(model),
      "input": {"layout": "NCHW", "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "size_multiple": 32,
                "note": "RGB in [0, 1], then (x - mean) / std"},
      "text_classifier": None,
      "run_config": json.loads(json.dumps(config.to_dict(), default=str)),
  }
  files = {"model.safetensors": sd}
  clip = getattr(model, "clip", None)
  if clip is not None:  # the CLIP towers also as an HF (ViT) or OpenCLIP directory (new vocabularies)
    meta["clip"] = clip_family.to_record(clip.config)
    for name, content in clip_files(clip, np_dtype).items():
      files[f"clip/{name}"] = content
  if text_classifier and clip is not None:
    from ovs_jax.templates import get_templates
    from ovs_jax.text_classifier import build_text_classifier
    vocab = training_vocabulary(config)
    clf = build_text_classifier(clip, vocab, get_templates(config.clip.templates), cache_dir=cache_dir)
    files["text_classifier.safetensors"] = {"embeddings": np.asarray(clf.embeddings, np.float32),
                                            "synonym_index": np.asarray(clf.synonym_index, np.int32)}
    meta["text_classifier"] = {"vocabulary": config.data.train, "templates": config.clip.templates,
                               "class_names": [v[0] for v in vocab], "synonyms": vocab}
  files["config.json"] = json.dumps(meta, indent=1).encode()
  files["key_map.json"] = json.dumps({"format": meta["format"], "layouts": LAYOUTS, "keys": keys}, indent=1).encode()
  state_dict_io.write_dir_atomically(out, files)
  return Path(out)


def parse_checkpoint(path) -> tuple[Path, int | None]:
  """WORKDIR, WORKDIR/STEP or WORKDIR/checkpoints/STEP -> (workdir, step or None)."""
  path = Path(path)
  if path.name.isdigit() and not (path / "config.json").is_file():
    parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return parent, int(path.name)
  return path, None


def to_torch(checkpoint, out, *, dtype="float32", include_teacher=False, text_classifier=True) -> Path:
  """A training workdir's checkpoint (newest, or WORKDIR/STEP) -> export directory, on one device.

  Any registered method exports its whole model (`model.safetensors` + `key_map.json`); MAFT+
  exports also load into `maft_plus_torch.MAFTPlusTorch` for PyTorch inference."""
  from ovs_jax import sharding
  from ovs_jax.restore import restore_workdir
  workdir, step = parse_checkpoint(checkpoint)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])  # any saved mesh restores here
  config, graphdef, state, step = restore_workdir(workdir, step, mesh)
  model = nnx.merge(graphdef, state["params"], state["frozen"])
  return export_model(model, config, out, step=step, dtype=dtype, include_teacher=include_teacher,
                      text_classifier=text_classifier, cache_dir=workdir / "cache")


def _read_export_meta(src: Path) -> dict:
  """config.json of an export of any method (MAFT+'s reader checks its own format)."""
  path = src / "config.json"
  try:
    meta = json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{src}: no config.json; expected a directory written by "
                          "`python -m ovs_jax.convert to-torch`") from None
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
  if meta.get("format") == FORMAT:
    return read_export_config(src)
  if not str(meta.get("format", "")).startswith("ovs_jax.") or "method" not in meta:
    what = f"model_type {meta['model_type']!r}" if "model_type" in meta else f"format {meta.get('format')!r}"
    raise CheckpointError(f"{path}: {what} is not an ovs_jax export (expected format "
                          "'ovs_jax.<method>', written by `python -m ovs_jax.convert to-torch`)")
  return meta


def read_export(src) -> tuple[dict, dict]:
  """(export config.json, full numpy state dict): text tower from `clip/` and the RC teacher from
  the student image tower where `model.safetensors` lacks them (PyTorch-side edits keep only what
  inference uses)."""
  src = Path(src)
  meta = _read_export_meta(src)
  sd = state_dict_io.read_state_dict(src / "model.safetensors")
  if not any(k.startswith("clip.text_model.") for k in sd) and (src / "clip").is_dir():
    clip_sd = state_dict_io.read_state_dict(src / "clip")
    sd.update({f"clip.{k}": v for k, v in clip_sd.items()
               if k.startswith(("text_model.", "text_projection.")) and f"clip.{k}" not in sd})
  # MAFT+'s RC teacher restarts from the imported tower when the export left it out.
  if meta["method"] == "maft_plus" and not any(k.startswith("teacher.") for k in sd):
    for prefix in ("clip.vision_model.", "clip.visual."):  # ViT, ConvNeXt
      sd.update({"teacher." + k[len(prefix):]: v for k, v in list(sd.items()) if k.startswith(prefix)})
  from ovs_jax.methods.registry import get_method
  return meta, get_method(meta["method"]).complete_state_dict(sd)


def from_torch(src, workdir) -> Path:
  """Export directory -> a new training workdir (config.json + orbax checkpoint at the exported step).

  The optimizer state is fresh (zero moments); evaluate/predict/to-torch read the workdir as any other.
  """
  src = Path(src)
  meta, sd = read_export(src)
  config = ml_collections.ConfigDict(meta["run_config"])
  architecture = meta.get("architecture") or {"clip": meta["clip"]}  # exports before the record
  return write_imported_workdir(
      workdir, config, architecture, step=meta["step"], source=str(src),
      load=lambda model: load_model_state(model, sd, source=str(src / "model.safetensors")))


def write_imported_workdir(workdir, config, architecture, *, step, source, load,
                           precision: str | None = None) -> Path:
  """A new workdir (config.json + orbax checkpoint at `step`) holding a model built from the
  `architecture` record and filled by `load(model)`; fresh optimizer state. Refuses a workdir
  that already holds checkpoints. `precision`: the dtype the source's own code evaluates in,
  recorded in imported.json so evaluate/predict/serve use it by default."""
  from ovs_jax import sharding
  from ovs_jax.checkpointing import Checkpointer
  from ovs_jax.methods.registry import get_method
  from ovs_jax.restore import write_run_config
  from ovs_jax.train_step import init_train_state
  workdir = Path(workdir)
  ckpt_dir = workdir / "checkpoints"
  if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
    raise FileExistsError(f"{ckpt_dir} already holds checkpoints; give a new --workdir")
  method = get_method(config.method)
  model = nnx.eval_shape(lambda: method.build_model(config, architecture))
  load(model)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ts = init_train_state(method, config, mesh, model=model)
  state = dict(ts.state, step=jnp.asarray(step, jnp.int32))
  workdir.mkdir(parents=True, exist_ok=True)
  write_run_config(workdir, config, architecture)
  if precision:
    from ovs_jax.inference.segmentation_model import IMPORTED_FILE
    (workdir / IMPORTED_FILE).write_text(json.dumps({"source": source, "precision": precision}) + "\n")
  ckpt = Checkpointer(ckpt_dir, use_async=False)
  try:
    ckpt.save(step, state, meta={"config": config.to_dict(), "step": step, "imported_from": source},
              force=True)
  finally:
    ckpt.close()
  return workdir
