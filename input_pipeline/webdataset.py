"""Image–caption pairs read straight from webdataset shards as img2dataset writes them (SimZSS's
data format, and what every LAION-scale user has): each shard `NNNNN.tar` holds, per sample key,
`KEY.jpg` (or .png/.jpeg/.webp), `KEY.txt` (the caption) and `KEY.json` (img2dataset's metadata),
one sample per image–caption pair, as the release iterates them (tileb1/simzss @2142ac5,
src/training/data.py L367-470: `tarfile_to_samples`, keys by `base_plus_ext`, `txt` + an image).

    source = WebDatasetSource("gs://bucket/mscoco/{00000..00295}.tar")  # or local paths, "::"-joined

Random access (so the grain loader's host sharding, seeded shuffling and exact resume after a kill
work as for every other source): at construction each shard's tar headers are read once and every
sample's member offsets kept (nothing of the image payloads is read); a record is then one ranged
read of its members. Remote paths (gs://, s3://, ...) go through fsspec (gs:// needs `gcsfs`).

Bad data is never dropped silently. Problems found while indexing (a truncated tar, a sample without
caption, a sample without image, a shard that cannot be opened) are one line each, counted in
`problems`; they raise DataError at construction unless `skip_bad`, which keeps the rest of the
shard (what the release's `log_and_continue` does, but named and counted). Problems found when a
record is read (an undecodable image, an empty caption) are DataErrors naming shard and key,
counted by `Source.skips` under `skip_bad`.

The release's post-processed shards also carry spaCy outputs as pickles (`*.pyd`, from
make_shards_spacy.py); pickles are never loaded here: concepts come from our own per-shard cache
(`input_pipeline.caption_concepts`) or the fallback matcher.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import tarfile

from input_pipeline import files
from input_pipeline.files import DataError
from input_pipeline.source import DatasetMeta, Source

log = logging.getLogger(__name__)

NAME = "webdataset"
IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")  # the release's rename(image="jpg;png;jpeg;webp")
CAPTION_EXT = "txt"
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shards(spec: str) -> list[str]:
  """'a/{00000..00002}.tar::b/x.tar' -> the shard list (braceexpand's numeric ranges, zero-padded
  as written, and comma lists; '::' joins several lists as OpenCLIP's `expand_urls`)."""
  out = []
  for part in (p.strip() for p in spec.split("::")):
    if not part:
      continue
    m = _BRACE.search(part)
    if not m:
      out.append(part)
      continue
    body, head, tail = m.group(1), part[:m.start()], part[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
      lo, hi, width = int(r.group(1)), int(r.group(2)), len(r.group(1))
      if hi < lo:
        raise ValueError(f"shard list {spec!r}: range {{{body}}} runs backwards")
      choices = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
      choices = body.split(",")
    out.extend(s for c in choices for s in expand_shards(head + c + tail))
  return out


def split_key(name: str) -> tuple[str, str] | None:
  """webdataset's `base_plus_ext`: 'dir/000012.jpg' -> ('dir/000012', 'jpg'); the extension is
  everything after the first dot of the base name (lower-cased as the release does)."""
  m = re.fullmatch(r"((?:.*/|)[^./]+)\.([^/]*)", name)
  return (m.group(1), m.group(2).lower()) if m else None


def _open(url: str):
  if "://" not in url or url.startswith("file://"):
    return open(url.removeprefix("file://"), "rb")
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
    return fsspec.open(url, "rb").open()
  except ImportError as e:  # e.g. gs:// without gcsfs
    raise DataError(f"{url}: cannot open ({e}; gs:// needs `pip install gcsfs`)") from None


@dataclasses.dataclass(frozen=True)
class Sample:
  shard: int
  key: str
  members: tuple  # ((ext, offset, size), ...)


def index_shard(url: str, shard: int) -> tuple[list[Sample], list[str]]:
  """(complete samples in tar order, one line per problem) of one shard, from its headers only."""
  problems, groups, order = [], {}, []
  try:
    f = _open(url)
  except (OSError, DataError) as e:
    return [], [f"{url}: cannot open shard ({e})"]
  with f:
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        while True:
          member = tar.next()
          if member is None:
            break
          if not member.isfile():
            continue
          if member.offset_data + member.size > size:
            problems.append(f"{url}: truncated tar: member {member.name} needs "
                            f"{member.offset_data + member.size} bytes, the file has {size}")
            break
          parts = split_key(member.name)
          if parts is None:
            continue
          key, ext = parts
          if key not in groups:
            groups[key] = {}
            order.append(key)
          groups[key][ext] = (member.offset_data, member.size)
        # tarfile ends quietly at a header cut short: a complete tar ends with zero blocks there.
        f.seek(tar.offset)
        end = f.read(tarfile.BLOCKSIZE)
        if len(end) < tarfile.BLOCKSIZE or any(end):
          problems.append(f"{url}: truncated tar: no end-of-archive block at byte {tar.offset} "
                          f"(the file has {size}) after {len(order)} sample keys")
    except (tarfile.TarError, EOFError, OSError) as e:
      problems.append(f"{url}: truncated or corrupt tar after {len(order)} sample keys "
                      f"({type(e).__name__}: {e})")
  samples = []
  for key in order:
    exts = groups[key]
    image = next((e for e in IMAGE_EXTS if e in exts), None)
    if CAPTION_EXT not in exts:
      problems.append(f"{url}: sample {key}: no caption ({key}.{CAPTION_EXT} missing; has {sorted(exts)})")
    elif image is None:
      problems.append(f"{url}: sample {key}: no image (none of {IMAGE_EXTS}; has {sorted(exts)})")
    else:
      samples.append(Sample(shard, key, ((image, *exts[image]), (CAPTION_EXT, *exts[CAPTION_EXT]))))
  return samples, problems


class WebDatasetSource(Source):
  """Image–caption records {image, captions [caption], file_name 'shard#key'} of img2dataset
  webdataset shards (module docstring); the record order is shard by shard, tar order."""

  def __init__(self, shards: str | list[str], split: str = "train", skip_bad: bool = False,
               concepts_dir: str | None = None):
    super().__init__(DatasetMeta(NAME, split, vocabulary="", num_classes=0, kind="captions"), skip_bad)
    self.shards = expand_shards(shards) if isinstance(shards, str) else list(shards)
    if not self.shards:
      raise DataError(f"webdataset shard list {shards!r} names no shard")
    self.concepts_dir, self._concepts = concepts_dir or None, {}
    self.samples, self.problems = [], []
    for i, url in enumerate(self.shards):
      samples, problems = index_shard(url, i)
      self.samples += samples
      self.problems += problems
    for p in self.problems:
      log.warning("webdataset: %s", p)
    if self.problems and not skip_bad:
      raise DataError(f"{len(self.problems)} problem(s) in {len(self.shards)} shard(s), first: "
                      f"{self.problems[0]} (set data.skip_bad to train on the rest; each is logged)")
    if not self.samples:
      raise DataError(f"webdataset shards {self.shards[:3]}{'...' if len(self.shards) > 3 else ''}: "
                      "no complete image–caption sample")
    if self.problems:
      log.warning("webdataset: %d problem(s) in %d shard(s); %d samples kept", len(self.problems),
                  len(self.shards), len(self.samples))

  def __len__(self) -> int:
    return len(self.samples)

  def raw(self, index: int) -> dict:
    s = self.samples[index]
    url, out = self.shards[s.shard], {}
    try:
      with _open(url) as f:
        for ext, offset, size in s.members:
          f.seek(offset)
          data = f.read(size)
          if len(data) != size:
            raise DataError(f"{url}#{s.key}.{ext}: read {len(data)} of {size} bytes (shard changed?)")
          out[ext] = data
    except OSError as e:
      raise DataError(f"{url}#{s.key}: cannot read ({e})") from None
    image_ext, caption_ext = s.members[0][0], s.members[1][0]
    return {"file_name": f"{url}#{s.key}.{image_ext}", "image_bytes": out[image_ext],
            "caption_bytes": out[caption_ext], "shard": url, "key": s.key}

  def decode(self, raw: dict) -> dict:
    where = f"{raw['shard']}#{raw['key']}"
    try:
      caption = raw["caption_bytes"].decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{where}.{CAPTION_EXT}: caption is not UTF-8 ({e})") from None
    if not caption.strip():
      raise DataError(f"{where}.{CAPTION_EXT}: empty caption")
    image = files.read_image(raw["file_name"], raw["image_bytes"])
    record = {"image": image, "captions": [caption], "file_name": raw["file_name"]}
    if self.concepts_dir:  # the per-shard cache of `python -m input_pipeline.caption_concepts`
      record["concepts"] = self._cached_concepts(raw["shard"], raw["key"])
    return record

  def _cached_concepts(self, url: str, key: str):
    from input_pipeline import caption_concepts  # pylint: disable=g-import-not-at-top
    path = caption_concepts.cache_path(self.concepts_dir, url)
    if path not in self._concepts:
      self._concepts = {path: caption_concepts.read_cache(path)}  # one shard at a time
    found = self._concepts[path].get(key)
    if found is None:
      raise DataError(f"{path}: no concepts for sample {key} of {url} (re-run the extraction)")
    return found

  def image_hw(self, index: int) -> tuple[int, int]:
    raw = self.raw(int(index))
    return files.image_size(raw["file_name"], raw["image_bytes"])
