"""The zero-shot protocol's evaluation: mIoU over every class plus mIoU(seen), mIoU(unseen) and
hIoU, for a dataset with a seen/unseen split (`input_pipeline.vocab.unseen_classes`).

  config.evals.zs = dict(type="zero_shot", dataset="voc_20", protocol="zero_shot",
                         baseline="maskclip", ...)      # plus every `miou` key

The model is scored over the dataset's whole vocabulary (seen and unseen classes compete, as in
ZS3Net / MVP-SEG). `baseline="maskclip"` also scores training-free MaskCLIP with the run's initial
CLIP (`config.clip`) and handcrafted templates on the same split, once per run, under `baseline`.
"""
from __future__ import annotations

from ovs_jax.evaluators.miou import MIoU


class ZeroShotMIoU(MIoU):
  extra = {**MIoU.extra, "protocol": "zero_shot", "baseline": ""}

  def __init__(self, name, cfg, run_config):
    super().__init__(name, cfg, run_config)
    from input_pipeline.zero_shot import unseen_for
    if self.options["baseline"] not in ("", "maskclip"):
      raise ValueError(f"config.evals.{name}.baseline={self.options['baseline']!r}: expected '' or 'maskclip'")
    try:
      self.unseen = unseen_for(self.dataset, self.options["protocol"])
    except ValueError as e:
      raise ValueError(f"config.evals.{name}: {e}") from None
    self._baseline = None

  def run(self, segmenter_for, step, out_dir) -> dict:
    out = self.score(segmenter_for(self.vocabulary))
    if self.options["baseline"] == "maskclip":
      if self._baseline is None:  # the initial CLIP never changes: score it once
        self._baseline = self.score(self.baseline_model(), desc=f"{self.name}: MaskCLIP baseline")
      out["baseline"] = self._baseline
    return out

  def baseline_model(self):
    from ovs_jax.methods.common import clip_from_config
    from ovs_jax.methods.maskclip import maskclip_model
    from ovs_jax.templates import get_templates
    return maskclip_model(clip_from_config(self.run_config), self.vocabulary,
                          templates=get_templates(self.run_config.clip.templates),
                          name="MaskCLIP baseline")
