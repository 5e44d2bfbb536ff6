"""Converts a dataset split into ArrayRecord shards plus a JSON manifest.

  python -m input_pipeline.prepare --dataset ade20k_150 --split val --root datasets --out prepared

writes prepared/ade20k_150/val/{manifest.json, shard-00000-of-0000N.array_record}. Every record is
decoded and validated first (same checks as training reads), so a prepared split is known good;
--skip_bad drops bad records instead of stopping, and the manifest lists what was skipped.
The manifest holds counts, class names, per-shard sha256 and the source folder.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys

from array_record.python import array_record_module

from input_pipeline import array_record, datasets
from input_pipeline.files import DataError


def prepare(name: str, split: str, root: str, out: str, num_shards: int | None = None,
            skip_bad: bool = False, records_per_shard: int = 2000, log=print) -> dict:
  """Writes the shards and manifest for one split; returns the manifest."""
  src = datasets.get_dataset(name, split, root=root, source="folder", skip_bad=skip_bad)
  return write_split(src, datasets.prepared_dir(out, name, split), root, num_shards, skip_bad,
                     records_per_shard, log, extra={"class_names": src.class_names})


def write_split(src, directory: str, root: str, num_shards: int | None = None, skip_bad: bool = False,
                records_per_shard: int = 2000, log=print, extra: dict | None = None) -> dict:
  """Every record of `src` (any Source: `raw(i)` stored, `decode` validates) into ArrayRecord
  shards and a manifest at `directory`, written to a temporary folder and renamed at the end."""
  what = f"{src.meta.name}/{src.meta.split}"
  num_shards = num_shards or max(1, -(-len(src) // records_per_shard))
  tmp = directory + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  files = [f"shard-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
  writers = [array_record_module.ArrayRecordWriter(os.path.join(tmp, f), "group_size:1") for f in files]
  count = 0
  for i in range(len(src)):
    try:
      raw = src.raw(i)
      src.decode(raw)  # validate before storing
    except DataError as e:
      if not skip_bad:
        for w in writers:
          w.close()
        raise
      src.skips.skip(e)
      continue
    # Contiguous blocks per shard keep the record order equal to the folder order.
    writers[count * num_shards // len(src)].write(array_record.pack_record(raw))
    count += 1
    if log and (i + 1) % 1000 == 0:
      log(f"{what}: {i + 1}/{len(src)}")
  for w in writers:
    w.close()
  if count == 0:
    raise DataError(f"{root}: every record of {what} was bad; nothing written")
  manifest = {
      "format_version": array_record.FORMAT_VERSION,
      "meta": dataclasses.asdict(src.meta),
      **(extra or {}),
      "num_records": count,
      "num_skipped": src.skips.count,
      "skipped": src.skips.messages,
      "source_root": os.path.abspath(root),
      "shards": [{"file": f, "bytes": os.path.getsize(os.path.join(tmp, f)),
                  "sha256": array_record.sha256(os.path.join(tmp, f))} for f in files],
  }
  with open(os.path.join(tmp, array_record.MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(tmp, directory)
  if log:
    log(f"{what}: wrote {count} records in {num_shards} shards to {directory} "
        f"({manifest['num_skipped']} skipped)")
  return manifest


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m input_pipeline.prepare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, help=f"one of {datasets.dataset_names()}")
  p.add_argument("--split", default="val", help="train or val (comma-separated for several)")
  p.add_argument("--root", default=None,
                 help="data root (default $OVS_JAX_DATA, $DETECTRON2_DATASETS or ./datasets)")
  p.add_argument("--out", required=True, help="output root; the split goes to OUT/<dataset>/<split>")
  p.add_argument("--num_shards", type=int, default=None)
  p.add_argument("--skip_bad", action="store_true", help="skip (and list) bad records instead of failing")
  args = p.parse_args(argv)
  root = args.root or datasets.default_root()
  try:
    for split in args.split.split(","):
      prepare(args.dataset, split, root, args.out, args.num_shards, args.skip_bad)
  except (DataError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
