"""mIoU (and fwIoU, mACC, pACC, per-class) of the run's model on a dataset split, jitted and
sharded over every device (`inference.engine.evaluate_source`)."""
from __future__ import annotations

from ovs_jax import metrics
from ovs_jax.evaluators.base import DatasetEvaluator


class MIoU(DatasetEvaluator):
  # Test protocol (detectron2 MIN/MAX_SIZE_TEST); batch_size 0 = one image per device.
  # mode "slide": window × window crops every `stride` pixels (TCL/mmseg's protocol, SimZSS's).
  extra = {"short_side": 800, "max_size": 1333, "batch_size": 0,
           "miou_convention": metrics.DEFAULT_MIOU_CONVENTION, "mode": "whole", "window": 448,
           "stride": 224}

  def __init__(self, name, cfg, run_config):
    super().__init__(name, cfg, run_config)
    metrics.check_miou_convention(self.options["miou_convention"],
                                  f"config.evals.{name}.miou_convention")

  def score(self, model, desc=None) -> dict:
    """`model` (a SegmentationModel over `self.vocabulary`) on the split -> summarized metrics."""
    from ovs_jax.evaluation import summarize
    from ovs_jax.inference.batching import InferenceConfig
    from ovs_jax.inference.engine import data_mesh, evaluate_source
    o = self.options
    mesh = data_mesh()
    cfg = InferenceConfig(mode=o["mode"], short_side=o["short_side"], max_size=o["max_size"],
                          window=o["window"], stride=o["stride"])
    counts, n, skipped = evaluate_source(model, self.source, cfg,
                                         batch_size=o["batch_size"] or mesh.size, mesh=mesh,
                                         max_images=self.max_images or None,
                                         desc=desc or f"{self.name}: {self.dataset}")
    return dict(summarize(counts, model.class_names, n, o["miou_convention"], skipped, self.unseen),
                model=model.name)  # the name says e.g. GKC's test-vocabulary rule

  unseen = None  # label ids of unseen classes: seen/unseen/hIoU are reported too

  def run(self, segmenter_for, step, out_dir) -> dict:
    return self.score(segmenter_for(self.vocabulary))
