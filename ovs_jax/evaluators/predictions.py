"""Prediction pictures (overlay + legend, raw labels, side by side with the ground truth) of the
first `num` images of a dataset split, under `<local workdir>/predictions/step_<n>/`. With
`protocol="zero_shot"` the legends mark the split's unseen classes "(unseen)"."""
from __future__ import annotations

from pathlib import Path

from ovs_jax.evaluators.base import DatasetEvaluator


class Predictions(DatasetEvaluator):
  extra = {"num": 4, "short_side": 800, "max_size": 1333, "protocol": ""}

  def __init__(self, name, cfg, run_config):
    super().__init__(name, cfg, run_config)
    from input_pipeline.zero_shot import unseen_for
    try:
      self.unseen = set(unseen_for(self.dataset, self.options["protocol"]))
    except ValueError as e:
      raise ValueError(f"config.evals.{name}: {e}") from None

  def run(self, segmenter_for, step, out_dir) -> dict:
    from ovs_jax.inference.segmenter import Segmenter, output_names, write_prediction
    o = self.options
    segment = Segmenter(segmenter_for(self.vocabulary), short_side=o["short_side"],
                        max_size=o["max_size"])
    names = [f"{n} (unseen)" if c in self.unseen else n for c, n in enumerate(segment.names)]
    out = Path(out_dir) / "predictions" / f"step_{step}"
    records = [r for r in (self.source[i] for i in range(min(o["num"], len(self.source)))) if r]
    for name, rec in zip(output_names([Path(r["file_name"]) for r in records]), records):
      write_prediction(out, name, rec["image"], segment(rec["image"]), names, rec["label"])
    return {"pictures": str(out), "count": len(records)}
