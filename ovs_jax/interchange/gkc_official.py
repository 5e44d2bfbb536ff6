"""Our GKC state <-> the official GKC checkpoint layout (`OpenSegMaskFormerDenseTextKDSyn.state_dict()`,
yongliu20/GKC mask2former/maskformer_model_voca_dense_kd_syn.py), CLIP ResNet students.

Values keep PyTorch layouts on both sides (`torch_state`); names map as below (release file:line):
  ours                                  official
  clip.visual.*  (no attnpool)          backbone.*   (its attnpool is deleted: :175-176,
                                                      clip_models.py:313-315)
  teacher.tower.*                       vision_clip.*  (kd_clip.py CLIPResNetWithAttention, :277)
  clip.text_model.*, clip.text_projection  text_encoder.* (OpenAI names, clip_models.py:666-757)
  head.pixel_decoder.*, head.predictor.*  sem_seg_head.* (the MAFT+ table's Mask2Former rows)
  class_path.shared                     sem_seg_head.predictor.class_embed
                                        (mask2former_transformer_decoder_voca.py:337)
  class_path.class_proj.{i}             aux_embed_porj_{i}.1 (i < last), embed_proj.1 (last) (:190-199)
  class_path.void_embedding             non_object_embedding (:160)
  class_path.logit_scale                logit_scale (:173)
  kd_proj.proj.{i}                      aux_kd_porj_{i} (i < last), kd_proj (last) (:248-252, 'prior')
  kd_scale                              text_kd_logit_scale (:263)
Written from the config and dropped on import: the buffers `empty_weight` (no-object weight, :168)
and `criterion.empty_weight`. Not in the release, so not exported: our student's CLIP attention pool
(on import it is the teacher's, `vision_clip.attnpool`: both start from the same CLIP) and
`clip.logit_scale` (CLIP's initial value log(1/0.07) on import; GKC never reads it). Every key must
be claimed in both directions.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ovs_jax.interchange import clip_keys
from ovs_jax.interchange.errors import CheckpointError, raise_listed
from ovs_jax.interchange.maft_official import rows as maft_rows

_SLOTS = {"i": r"\d+", "j": r"\d+", "w": r"weight|bias", "p": r"[qkv]", "rest": r".+"}
# (ours, official, op); 'last' rows are the final prediction set's projection (the highest index).
_OWN = [
    ("clip.visual.attnpool.{rest}", "-", "student_head"),
    ("clip.logit_scale", "-", "clip_scale"),
    ("clip.visual.{rest}", "backbone.{rest}", "same"),
    ("teacher.tower.{rest}", "vision_clip.{rest}", "same"),
    ("clip.{rest}", "text_encoder.{rest}", "openclip"),
    ("class_path.shared.{w}", "sem_seg_head.predictor.class_embed.{w}", "same"),
    ("class_path.class_proj.{i}.{w}", "aux_embed_porj_{i}.1.{w}", "aux"),
    ("class_path.class_proj.{i}.{w}", "embed_proj.1.{w}", "last"),
    ("class_path.void_embedding", "non_object_embedding", "same"),
    ("class_path.logit_scale", "logit_scale", "same"),
    ("kd_proj.proj.{i}.{w}", "aux_kd_porj_{i}.{w}", "aux"),
    ("kd_proj.proj.{i}.{w}", "kd_proj.{w}", "last"),
    ("kd_scale", "text_kd_logit_scale", "same"),
    ("-", "empty_weight", "buffer"),
    ("-", "criterion.empty_weight", "buffer"),
]


# Module versions the official loader reads from the state dict's `_metadata`: without them the
# release's MaskFormerHead renames every non-predictor key on load (mask_former_head.py:20-45) and
# its decoder upgrades query names (mask2former_transformer_decoder_voca.py:210-233).
MODULE_VERSIONS = {"sem_seg_head": 2, "sem_seg_head.predictor": 2}


def _rows():
  """Our rows, then the Mask2Former head rows of the MAFT+ table (same modules, same names)."""
  head = [r for r in maft_rows() if r[0].startswith(("head.pixel_decoder.", "head.predictor."))]
  return _OWN + head


def _pattern(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})"
                            for i, p in enumerate(parts)))


def _match(name: str, side: int, last: int):
  for row in _rows():
    if row[side] == "-" or not (m := _pattern(row[side]).fullmatch(name)):
      continue
    slots = m.groupdict()
    if side == 0 and row[2] in ("aux", "last") and (int(slots["i"]) == last) != (row[2] == "last"):
      continue
    return row, slots
  return None, None


def num_sets(sd: dict, side: int) -> int:
  """Prediction sets (final + aux) of a state dict, ours (side 0) or official (side 1)."""
  if side == 0:
    return 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("class_path.class_proj."))
  return 1 + len({k.split(".")[0] for k in sd if k.startswith("aux_embed_porj_")})


def to_official(sd: dict[str, np.ndarray], *, num_classes: int, void_weight: float) -> dict[str, np.ndarray]:
  """Our PyTorch-layout GKC state dict (`torch_state.export_state_dict`, teacher included) -> the
  official checkpoint's `model` state dict."""
  last = num_sets(sd, 0) - 1
  out, qkv, clip, unclaimed = {}, {}, {}, []
  for name, value in sd.items():
    row, slots = _match(name, 0, last)
    if row is None:
      unclaimed.append(name)
    elif row[2] in ("student_head", "clip_scale"):
      continue
    elif row[2] == "openclip":
      clip[slots["rest"]] = value
    elif row[2] == "qkv":
      qkv.setdefault(row[1].format(**slots), {})[slots["p"]] = value
    else:
      out[row[1].format(**slots)] = value
  if unclaimed:
    raise_listed("the GKC key table has no row for our parameters", [repr(k) for k in unclaimed])
  for key, parts in qkv.items():
    out[key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  out |= {f"text_encoder.{k}": v for k, v in clip_keys.hf_to_openclip(clip).items()}
  out["empty_weight"] = np.full((1,), void_weight, np.float32)
  out["criterion.empty_weight"] = np.concatenate(
      [np.ones(num_classes, np.float32), np.full(1, void_weight, np.float32)])
  return out


def from_official(sd: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """The official checkpoint's `model` state dict -> our PyTorch-layout names (teacher included)."""
  last = num_sets(sd, 1) - 1
  out, clip, unclaimed = {}, {}, []
  for name, value in sd.items():
    row, slots = _match(name, 1, last)
    if row is None:
      unclaimed.append(name)
    elif row[2] == "buffer":
      continue
    elif row[2] == "openclip":
      clip[slots["rest"]] = value
    elif row[2] == "qkv":
      for p, part in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
        out[row[0].format(**slots, p=p)] = part
    else:
      out[row[0].format(**(slots | ({"i": last} if row[2] == "last" else {})))] = value
  if unclaimed:
    raise_listed(f"{source}: keys that are not part of an official GKC checkpoint",
                 [repr(k) for k in unclaimed])
  out |= {f"clip.{k}": v for k, v in clip_keys.openclip_to_hf(clip).items()}
  out |= {"clip.visual." + k[len("teacher.tower."):]: v for k, v in out.items()
          if k.startswith("teacher.tower.attnpool.")}
  out["clip.logit_scale"] = np.asarray(math.log(1 / 0.07), np.float32)
  return out


def read_official_checkpoint(path) -> dict[str, np.ndarray]:
  """The `model` state dict of a detectron2 checkpoint (`torch.load(weights_only=True)`)."""
  from ovs_jax.interchange.state_dict_io import read_state_dict
  sd = read_state_dict(path)
  if not any(k.startswith("backbone.") for k in sd) or "non_object_embedding" not in sd:
    raise CheckpointError(f"{path}: not an official GKC checkpoint (no backbone.* keys or no "
                          f"non_object_embedding; first keys: {sorted(sd)[:3]})")
  if "backbone.class_embedding" in sd:
    raise CheckpointError(f"{path}: a ViT GKC (backbone.class_embedding); only the CLIP ResNet "
                          "students of the release convert (docs/gkc.md)")
  return sd
