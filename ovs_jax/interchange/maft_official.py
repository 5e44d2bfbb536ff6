"""Our MAFT+ state <-> the official MAFT-Plus checkpoint layout (`maftp_b.pth`, `maftp_l.pth`).

The name correspondence is data: `maft_plus_official_keys.tsv` (rows of templates and a layout
op, read in either direction). Values keep PyTorch layouts on both sides (`torch_state` already
gives Linear (out, in) and OIHW convs); only q/k/v projections merge into `in_proj_*` and the CLIP
names become OpenCLIP's. Every direction checks coverage: a key no row claims is an error.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from ovs_jax.interchange import clip_keys
from ovs_jax.interchange.errors import CheckpointError, raise_listed

TABLE = Path(__file__).with_name("maft_plus_official_keys.tsv")
_SLOTS = {"i": r"\d+", "j": r"\d+", "w": r"weight|bias", "p": r"[qkv]", "rest": r".+"}


@lru_cache(maxsize=1)
def rows() -> list[tuple[str, str, str]]:
  """(ours template, official template, op) rows of the key table."""
  lines = [ln for ln in TABLE.read_text().splitlines() if ln and not ln.startswith("#")]
  return [tuple(ln.split("\t")) for ln in lines[1:]]


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  out = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for i, p in enumerate(parts))
  return re.compile(out)


def _match(name: str, side: int):
  """The first row whose template on `side` (0 ours, 1 official) matches `name`, with its slots."""
  for row in rows():
    if row[side] != "-" and (m := _pattern(row[side]).fullmatch(name)):
      return row, m.groupdict()
  return None, None


def to_official(sd: dict[str, np.ndarray], *, num_classes: int, void_weight: float) -> dict[str, np.ndarray]:
  """Our PyTorch-layout MAFT+ state dict (`torch_state.export_state_dict`, teacher included) -> the
  official checkpoint's `model` state dict. `num_classes`/`void_weight` fill `criterion.empty_weight`."""
  out, qkv, clip, unclaimed = {}, {}, {}, []
  for name, value in sd.items():
    row, slots = _match(name, 0)
    if row is None:
      unclaimed.append(name)
    elif row[2] == "openclip":
      clip[slots["rest"]] = value
    elif row[2] == "qkv":
      key = row[1].format(**slots)
      qkv.setdefault(key, {})[slots["p"]] = value
    else:
      out[row[1].format(**slots)] = value
  if unclaimed:
    raise_listed("the official key table has no row for our parameters", [repr(k) for k in unclaimed])
  for key, parts in qkv.items():
    out[key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  for k, v in clip_keys.hf_to_openclip(clip).items():
    out[f"backbone.clip_model.{k}"] = v
    if not k.startswith("visual."):  # the teacher's frozen text tower, as the official model holds it
      out[f"backbone_t.clip_model.{k}"] = v
  out["criterion.empty_weight"] = np.concatenate(
      [np.ones(num_classes, np.float32), np.full(1, void_weight, np.float32)])
  return out


def from_official(sd: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """The official checkpoint's `model` state dict -> our PyTorch-layout names (teacher included:
  `backbone_t`'s image tower, or the student's when the file has none)."""
  out, clip, unclaimed = {}, {}, []
  for name, value in sd.items():
    row, slots = _match(name, 1)
    if row is None:
      unclaimed.append(name)
    elif row[2] in ("text_copy", "buffer"):
      continue
    elif row[2] == "openclip":
      clip[slots["rest"]] = value
    elif row[2] == "qkv":
      for p, part in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
        out[row[0].format(**slots, p=p)] = part
    else:
      out[row[0].format(**slots)] = value
  if unclaimed:
    raise_listed(f"{source}: keys that are not part of an official MAFT+ checkpoint",
          [repr(k) for k in unclaimed])
  out |= {f"clip.{k}": v for k, v in clip_keys.openclip_to_hf(clip).items()}
  if not any(k.startswith("teacher.") for k in out):
    out |= {"teacher." + k[len("clip.visual."):]: v for k, v in out.items() if k.startswith("clip.visual.")}
  return out


def read_official_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
  """The `model` state dict of a detectron2 checkpoint (`torch.load(weights_only=True)`: pickled
  code is never executed)."""
  from ovs_jax.interchange.state_dict_io import read_state_dict
  sd = read_state_dict(path)
  if not any(k.startswith(("backbone.clip_model.", "sem_seg_head.")) for k in sd):
    raise CheckpointError(f"{path}: not an official MAFT+ checkpoint (no backbone.clip_model.* or "
                          f"sem_seg_head.* keys; first keys: {sorted(sd)[:3]})")
  return sd
