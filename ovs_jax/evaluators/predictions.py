"""Prediction pictures (overlay + legend, raw labels, side by side with the ground truth) of the
first `num` images of a dataset split, under `<local workdir>/predictions/step_<n>/`."""
from __future__ import annotations

from pathlib import Path

from ovs_jax.evaluators.base import DatasetEvaluator


class Predictions(DatasetEvaluator):
  extra = {"num": 4, "short_side": 800, "max_size": 1333}

  def run(self, segmenter_for, step, out_dir) -> dict:
    from ovs_jax.inference.segmenter import Segmenter, write_prediction
    o = self.options
    segment = Segmenter(segmenter_for(self.vocabulary), short_side=o["short_side"],
                        max_size=o["max_size"])
    out = Path(out_dir) / "predictions" / f"step_{step}"
    count = min(o["num"], len(self.source))
    for i in range(count):
      rec = self.source[i]
      write_prediction(out, Path(rec["file_name"]).stem, rec["image"], segment(rec["image"]),
                       segment.names, rec["label"])
    return {"pictures": str(out), "count": count}
