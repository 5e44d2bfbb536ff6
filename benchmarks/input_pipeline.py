"""Training input pipeline throughput (images/s) at 640×640 crops with 0, 1 and 2 workers.

  python benchmarks/input_pipeline.py [--images 48] [--batches 12] [--workers 0,1,2] [--with_masks]

Writes an ADE20K-150-layout folder of JPEG scenes (512×683, ADE's typical size; the demo
generator's textures) in a temp dir, then times `make_train_loader` with the lsj mapper's
transforms (random resize ×0.5–2, category-capped crop, flip, pad, mask targets, CLIP
normalisation) over `--batches` batches after one warm-up batch.
"""
import argparse
import os
import sys
import tempfile
import time

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `input_pipeline` package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path.pop(0)

import numpy as np
from PIL import Image

from input_pipeline import datasets, demo, loader


def write_ade_folder(root: str, num: int, hw=(512, 683)) -> None:
  image_dir, label_dir = datasets.DATASETS["ade20k_150"].layout.dirs(root, "train")
  os.makedirs(image_dir)
  os.makedirs(label_dir)
  for i in range(num):
    image, label = demo.generate_scene(np.random.default_rng(i), hw)
    Image.fromarray(image).save(os.path.join(image_dir, f"{i:06d}.jpg"), quality=90)
    Image.fromarray(label).save(os.path.join(label_dir, f"{i:06d}.png"))


def measure(source, workers: int, batch_size: int, batches: int, with_masks: bool,
            normalize: bool = True) -> float:
  ds = loader.make_train_loader(source, batch_size, mapper="lsj", crop_size=(640, 640), num_masks=100,
                                with_masks=with_masks, normalize=normalize, worker_count=workers,
                                shard_index=0, shard_count=1)
  it = iter(ds)
  next(it)  # warm-up: worker start, first reads
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  return batches * batch_size / elapsed


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--images", type=int, default=48)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--batches", type=int, default=12)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--with_masks", action="store_true", help="also ship (100, 640, 640) bool masks")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as root:
    t = time.perf_counter()
    write_ade_folder(root, args.images)
    print(f"wrote {args.images} ADE-layout scenes in {time.perf_counter() - t:.1f}s; "
          f"{os.cpu_count()} CPUs; batch {args.batch_size}; masks={'bool' if args.with_masks else 'ids only'}")
    source = datasets.get_dataset("ade20k_150", "train", root=root)
    print("| workers | images/s, float32 CLIP-normalised | images/s, uint8 (normalise on device) |")
    print("| --- | --- | --- |")
    for w in (int(x) for x in args.workers.split(",")):
      f32, u8 = (measure(source, w, args.batch_size, args.batches, args.with_masks, norm)
                 for norm in (True, False))
      print(f"| {w} | {f32:.1f} | {u8:.1f} |", flush=True)


if __name__ == "__main__":
  main()
