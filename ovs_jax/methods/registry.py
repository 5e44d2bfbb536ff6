"""The one registry of methods: name -> module exposing `METHOD` (a `methods.base.Method`).

Used by train, evaluate, predict, restore, convert and the benchmarks. Modules are imported on
first use, so an unused method costs nothing. Adding a method is one line here (or `register` at
run time, e.g. from a test or a plug-in package).
"""
from __future__ import annotations

import importlib

METHODS = {
    "clearclip": "ovs_jax.methods.clearclip",
    "gkc": "ovs_jax.methods.gkc",
    "maft_plus": "ovs_jax.methods.maft_plus",
    "maskclip": "ovs_jax.methods.maskclip",
    "maskclip_plus": "ovs_jax.methods.maskclip_plus",
    "mvp_seg": "ovs_jax.methods.mvp_seg",
    "mvp_seg_plus": "ovs_jax.methods.mvp_seg_plus",
    "naclip": "ovs_jax.methods.naclip",
    "proxyclip": "ovs_jax.methods.proxyclip",
    "sclip": "ovs_jax.methods.sclip",
    "simzss": "ovs_jax.methods.simzss",
}


def register(name: str, module: str) -> None:
  """Make `module` (exposing METHOD) available as `config.method = name`."""
  METHODS[name] = module


def method_names() -> list[str]:
  return sorted(METHODS)


def get_method(name: str):
  """The `Method` registered as `name`; a clear error naming the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f"method {name!r} is not registered; known: {', '.join(method_names())}")
  method = importlib.import_module(METHODS[name]).METHOD
  if method.name != name:
    raise ValueError(f"{METHODS[name]}.METHOD is named {method.name!r}, registered as {name!r}")
  return method
