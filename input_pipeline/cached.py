"""Directories built once into the cache: written in a temp dir, renamed into place when complete.

A finished build holds `done.json` (its builder writes it last), so a killed build never looks
finished, and concurrent builders (several processes or hosts) are all safe: the first rename wins
and the others' identical copies are dropped.
"""
import os
import shutil
import tempfile


def build_once(path: str, build) -> str:
  """`path` when it holds a finished build, else `build(tmp_dir)` and an atomic rename to `path`."""
  if os.path.isfile(os.path.join(path, "done.json")):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp", dir=os.path.dirname(path))
  try:
    build(tmp)
    try:
      os.rename(tmp, path)
    except OSError:  # another process finished first; its copy is identical
      if not os.path.isfile(os.path.join(path, "done.json")):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path
