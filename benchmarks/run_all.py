"""Every benchmark with a reference, at a small size, in a few minutes: one table of ours-vs-reference
speed ratios (>1 = we are faster) on this machine.

  python benchmarks/run_all.py [--only=attention,clip_encode,...] [--timeout=900]

Each script runs in its own process with the arguments below (stated in the table); its printed
table is parsed for its ours/reference columns. The full-size numbers are in docs/benchmarks.md;
the cost model (no reference to compare with) is `benchmarks/cost_model.py`.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL = {
    "attention": ["--lengths=197,785,1601", "--chunks=128", "--repeats=2"],
    "clip_encode": ["--batch=2", "--sizes=224,448", "--repeats=2"],
    "convnext_tower": ["--size=256", "--batch=1", "--repeats=1"],
    "evaluate": ["--images=1"],
    "mask_head": ["--image=256", "--batch=1", "--repeats=1"],
    "train_step": ["--backbone_only", "--size=320", "--batch=1", "--repeats=1", "--dtype=float32"],
}


def number(cell):
  try:
    return float(cell.strip().rstrip("x"))
  except ValueError:
    return None


def markdown_ratios(text):
  """(row, column, ratio) for every column whose header says ours/<reference>."""
  out, header = [], None
  for line in text.splitlines():
    if not line.startswith("|"):
      header = None
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if any("ours/" in c for c in cells):
      header = cells
      continue
    if header is None or set(line) <= set("|-: "):
      continue
    label = " ".join([cells[0]] + [c for c in cells[1:] if c and number(c) is None])  # e.g. "785 chunked/128"
    for i, name in enumerate(header):
      if "ours/" in name and i < len(cells) and number(cells[i]) is not None:
        out.append((label, name, number(cells[i])))
  return out


def mask_head_ratios(text):
  """mask_head.py prints fixed-width rows: name, JAX ms, reference ms, compile s."""
  out = []
  for line in text.splitlines():
    m = re.match(r"^(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line)
    if m:
      out.append((m.group(1).strip(), "ref ms / JAX ms", float(m.group(3)) / float(m.group(2))))
  return out


def train_step_ratios(text):
  """The backbone fwd+bwd row against the PyTorch backbone row (seconds)."""
  rows = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 2 and number(cells[1]) is not None:
      rows[cells[0]] = number(cells[1])
  ours = rows.get("student backbone fwd+bwd")
  ref = next((v for k, v in rows.items() if k.startswith("reference: PyTorch")), None)
  return [("CLIP ViT-B/16 backbone fwd+bwd", "PyTorch s / ours s", ref / ours)] if ours and ref else []


PARSERS = {"mask_head": mask_head_ratios, "train_step": train_step_ratios}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--only", default=",".join(SMALL))
  p.add_argument("--timeout", type=int, default=900, help="seconds per script")
  args = p.parse_args()
  summary = []
  for name in args.only.split(","):
    cmd = [sys.executable, str(HERE / f"{name}.py"), *SMALL[name]]
    t = time.time()
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                            cwd=HERE.parent, env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
      text, ok = proc.stdout, proc.returncode == 0
      err = proc.stderr.strip().splitlines()[-1:] if not ok else []
    except subprocess.TimeoutExpired:
      text, ok, err = "", False, [f"timed out after {args.timeout} s"]
    ratios = PARSERS.get(name, markdown_ratios)(text)
    print(f"{name} {' '.join(SMALL[name])}: {time.time() - t:.0f} s" + ("" if ok else f", FAILED: {err}"),
          flush=True)
    summary += [(name, *r) for r in ratios] or [(name, "failed" if not ok else "no ratio printed", "", float("nan"))]
  print(f"\n{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; "
        "ratio > 1: ours faster")
  print("| benchmark | measurement | ratio column | ours vs reference |")
  print("|---|---|---|---:|")
  for name, row, col, ratio in summary:
    print(f"| {name} | {row} | {col} | {ratio:.2f} |")


if __name__ == "__main__":
  main()
