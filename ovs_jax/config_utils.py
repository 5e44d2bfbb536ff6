"""Helpers for recipe files (`configs/*.py`, big_vision style `get_config(arg)`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def parse_variants(arg: str | None, known, recipe: str, combine=()) -> set[str]:
  """'demo,panoptic' -> {'demo', 'panoptic'}. An unknown variant is an error naming the known
  ones; several variants are an error unless `combine` lists them (sets of variants the recipe
  honours together): a combination the recipe would silently ignore part of is refused."""
  variants = set(filter(None, (arg or "").split(",")))
  unknown = variants - set(known)
  if unknown:
    raise ValueError(f"{recipe}: unknown variant(s) {sorted(unknown)}; expected any of: "
                     f"{', '.join(sorted(known))}")
  if len(variants) > 1 and not any(variants <= set(c) for c in combine):
    together = "; ".join(",".join(sorted(c)) for c in combine)
    raise ValueError(f"{recipe}: variants {','.join(sorted(variants))} do not combine (the recipe "
                     "would ignore part of them); give one variant"
                     + (f", or one of these combinations: {together}" if together else ""))
  return variants


def recipe_module(path):
  """The recipe file at `path` as a module (recipes are files, not a package)."""
  spec = importlib.util.spec_from_file_location(f"ovs_jax_recipe_{Path(path).stem}", str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def recipe_config(path, arg: str = ""):
  """`get_config(arg)` of the recipe file at `path` (for recipe aliases and tests)."""
  return recipe_module(path).get_config(arg)
