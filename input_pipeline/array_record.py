"""ArrayRecord shards of raw records plus a JSON manifest, and the source that reads them.

A shard record is a source's `raw(i)` dict packed as
  uint32 little-endian header length | JSON header | concatenated byte fields
so images and labels stay in their original encodings (bit-exact, no re-compression).
"""
import json
import os
import struct

import grain

from input_pipeline.files import DataError, sha256  # sha256: also used by prepare.py
from input_pipeline.source import DatasetMeta, Source

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def pack_record(raw: dict) -> bytes:
  """raw dict (bytes and JSON-able values) -> one record's bytes."""
  blobs = {k: v for k, v in raw.items() if isinstance(v, bytes)}
  header = {"meta": {k: v for k, v in raw.items() if k not in blobs},
            "blobs": [[k, len(v)] for k, v in blobs.items()]}
  h = json.dumps(header).encode()
  return struct.pack("<I", len(h)) + h + b"".join(blobs.values())


def unpack_record(data: bytes, where: str) -> dict:
  try:
    (n,) = struct.unpack_from("<I", data)
    header = json.loads(data[4:4 + n])
    raw, pos = dict(header["meta"]), 4 + n
    for k, size in header["blobs"]:
      raw[k] = data[pos:pos + size]
      pos += size
    if pos != len(data):
      raise ValueError(f"{len(data) - pos} trailing bytes")
    return raw
  except (struct.error, ValueError, KeyError, TypeError) as e:
    raise DataError(f"{where}: corrupt record ({type(e).__name__}: {e})") from None


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: no manifest; run `python -m input_pipeline.prepare` first") from None
  except ValueError as e:
    raise DataError(f"{path}: invalid JSON ({e})") from None
  if manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path}: format_version {manifest.get('format_version')}, expected {FORMAT_VERSION}")
  return manifest


class ArrayRecordSource(Source):
  """Reads a prepared split folder (manifest.json + *.array_record shards), random access.

  verify=True re-hashes every shard against the manifest's sha256 (slow for big splits); sizes
  and record counts are always checked.
  """

  def __init__(self, directory: str, skip_bad: bool = False, verify: bool = False):
    m = read_manifest(directory)
    super().__init__(DatasetMeta(**m["meta"]), skip_bad)
    self.paths = []
    for shard in m["shards"]:
      path = os.path.join(directory, shard["file"])
      if not os.path.isfile(path):
        raise DataError(f"{path}: shard listed in the manifest is missing")
      if os.path.getsize(path) != shard["bytes"]:
        raise DataError(f"{path}: {os.path.getsize(path)} bytes, the manifest says {shard['bytes']}")
      if verify and sha256(path) != shard["sha256"]:
        raise DataError(f"{path}: sha256 differs from the manifest (corrupt or replaced shard)")
      self.paths.append(path)
    self._records = grain.sources.ArrayRecordDataSource(self.paths)
    if len(self._records) != m["num_records"]:
      raise DataError(f"{directory}: shards hold {len(self._records)} records, the manifest says "
                      f"{m['num_records']}")
    self.manifest = m

  def __len__(self) -> int:
    return len(self._records)

  def raw(self, index: int) -> dict:
    return unpack_record(self._records[index], f"{self.paths[0]}.. record {index}")

  def __getstate__(self):
    # The ArrayRecord reader holds file handles; workers reopen the shards lazily.
    return {**self.__dict__, "_records": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._records = grain.sources.ArrayRecordDataSource(self.paths)
