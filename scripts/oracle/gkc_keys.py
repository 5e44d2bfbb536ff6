"""List every key, shape and dtype of the official GKC state dict (the release's RN50 setting, or
`--tiny`), for tests/data/gkc/official_keys_rn50.tsv.gz. Checks too that a state dict in that
layout loads with strict=True (`--load FILE.pth`, e.g. our `convert to-official` output) and prints
the official forward's final logits on a fixed input, to compare with ours.

  PY=~/.cache/ovs-oracle/venv/bin/python
  $PY scripts/oracle/gkc_keys.py tests/data/gkc/official_keys_rn50.tsv.gz
  $PY scripts/oracle/gkc_keys.py /dev/null --tiny --classes 133 --load exported.pth
"""
import argparse
import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gkc_official  # noqa: E402

import torch  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--load", default="")
  ap.add_argument("--classes", type=int, default=0, help="SEM_SEG_HEAD.NUM_CLASSES (133 for a "
                  "workdir trained on COCO-Panoptic)")
  a = ap.parse_args()
  model = gkc_official.build_official(tiny=a.tiny, num_classes=a.classes)
  sd = model.state_dict()
  if a.out != "/dev/null":
    with gzip.open(a.out, "wt") as f:
      f.write("# key\tshape\tdtype of OpenSegMaskFormerDenseTextKDSyn.state_dict() "
              f"({'tiny' if a.tiny else 'RN50'}; scripts/oracle/gkc_keys.py)\n")
      for k, v in sd.items():
        f.write(f"{k}\t{','.join(map(str, v.shape))}\t{str(v.dtype).replace('torch.', '')}\n")
    print(f"{len(sd)} keys -> {a.out}")
  if a.load:
    theirs = torch.load(a.load, map_location="cpu", weights_only=True)["model"]
    result = model.load_state_dict(theirs, strict=True)
    print("strict load:", result)


if __name__ == "__main__":
  main()
