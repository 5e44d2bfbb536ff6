"""Directories built once into the cache: written in a temp dir, renamed into place when complete,
checked on every use.

A finished build holds `done.json` (its builder writes it last) and `manifest.json` (the entry's
name and the sha256 of every file, written by `build_once`), so a killed build never looks
finished, and concurrent builders (several processes or hosts) are all safe: the first rename wins
and the others' identical copies are dropped. An entry whose files no longer match its manifest
(damaged or deleted files) or whose manifest names another entry (a foreign directory copied
into place) is moved aside and rebuilt, with a warning naming the file.
"""
import json
import logging
import os
import shutil
import tempfile
import time

from input_pipeline.files import sha256

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _files(root: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                if f != MANIFEST)


def _write_manifest(root: str, name: str) -> None:
  manifest = {"name": name, "files": {p: sha256(os.path.join(root, p)) for p in _files(root)}}
  tmp = os.path.join(root, f".{MANIFEST}.{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(manifest, f)
  os.replace(tmp, os.path.join(root, MANIFEST))


def problem(path: str) -> str | None:
  """Why the finished build at `path` cannot be used (naming the file), or None."""
  try:
    with open(os.path.join(path, MANIFEST)) as f:
      manifest = json.load(f)
    name, files = manifest["name"], dict(manifest["files"])
  except FileNotFoundError:
    return None  # built before manifests: adopted by build_once
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{os.path.join(path, MANIFEST)} is unreadable ({type(e).__name__}: {e})"
  if name != os.path.basename(path):
    return f"{os.path.join(path, MANIFEST)} belongs to another cache entry ({name!r})"
  for rel, digest in files.items():
    full = os.path.join(path, rel)
    if not os.path.isfile(full):
      return f"{full} is missing"
    if sha256(full) != digest:
      return f"{full} is damaged (its sha256 differs from the manifest's)"
  return None


def build_once(path: str, build) -> str:
  """`path` when it holds an intact finished build, else `build(tmp_dir)` and an atomic rename to
  `path` (a damaged or foreign entry is first moved aside, with a warning)."""
  name = os.path.basename(path)
  if os.path.isdir(path):
    done = os.path.join(path, "done.json")
    bad = problem(path) if os.path.isfile(done) else f"{done} is missing"
    if bad is None:
      if not os.path.isfile(os.path.join(path, MANIFEST)):
        _write_manifest(path, name)  # an entry from before manifests: recorded as it is now
      return path
    log.warning("cache entry %s: %s; discarding it and rebuilding", path, bad)
    aside = f"{path}.discarded-{int(time.time())}-{os.getpid()}"
    try:
      os.rename(path, aside)
    except OSError:  # another process moved it first
      pass
    shutil.rmtree(aside, ignore_errors=True)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=name + ".tmp", dir=os.path.dirname(path))
  try:
    build(tmp)
    _write_manifest(tmp, name)
    try:
      os.rename(tmp, path)
    except OSError:  # another process finished first; its copy is identical
      if not os.path.isfile(os.path.join(path, "done.json")):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path
