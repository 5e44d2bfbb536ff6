"""The zero-shot protocol's evaluation: mIoU over every class plus mIoU(seen), mIoU(unseen) and
hIoU, for a dataset with a seen/unseen split (`input_pipeline.vocab.unseen_classes`).

  config.evals.zs = dict(type="zero_shot", dataset="voc_20", protocol="zero_shot",
                         baseline="maskclip", ...)      # plus every `miou` key

The model is scored over the dataset's whole vocabulary (seen and unseen classes compete, as in
ZS3Net / MVP-SEG). `baseline="maskclip"` also scores training-free MaskCLIP with the run's initial
CLIP (`config.clip`) and its templates (`config.clip.templates`; MaskCLIP's 85 in the MVP-SEG and
MaskCLIP+ recipes) on the same split, once per run, under `baseline`.

Every result names its setting (`setting`): "inductive" (the unseen classes' names never reached
training) or "transductive" (they did: MaskCLIP+ / MVP-SEG+ pseudo-label their pixels); the
baseline is "training-free". `setting=""` takes the run's (`config.data.transductive`); asking for
"transductive" on a run that never saw the unseen names, or "inductive" on one that did, is an error.
"""
from __future__ import annotations

from ovs_jax.evaluators.miou import MIoU


class ZeroShotMIoU(MIoU):
  extra = {**MIoU.extra, "protocol": "zero_shot", "baseline": "", "setting": "",
           "baseline_pd_thresh": 0.0, "baseline_ks_thresh": 0.0}

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
    self.setting = training_setting(run_config, self.options["setting"], f"config.evals.{name}.setting")

  @property
  def vocabulary(self):
    """The dataset's vocabulary; one name per class where the run says so (`data.class_synonyms`),
    for the model and its MaskCLIP baseline alike."""
    vocab = super().vocabulary
    if self.run_config.get("data", {}).get("class_synonyms", True):
      return vocab
    return [names[:1] for names in vocab]

  def run(self, segmenter_for, step, out_dir) -> dict:
    out = dict(self.score(segmenter_for(self.vocabulary)), setting=self.setting)
    if self.options["baseline"] == "maskclip":
      if self._baseline is None:  # the initial CLIP never changes: score it once
        self._baseline = dict(self.score(self.baseline_model(), desc=f"{self.name}: MaskCLIP baseline"),
                              setting="training-free")
      out["baseline"] = self._baseline
    return out

  def baseline_model(self):
    from ovs_jax.methods.common import clip_from_config
    from ovs_jax.methods.maskclip import maskclip_model
    from ovs_jax.templates import get_templates
    return maskclip_model(clip_from_config(self.run_config), self.vocabulary,
                          templates=get_templates(self.run_config.clip.templates),
                          name="MaskCLIP baseline", pd_thresh=self.options["baseline_pd_thresh"],
                          ks_thresh=self.options["baseline_ks_thresh"])


SETTINGS = ("inductive", "transductive")


def training_setting(run_config, requested: str, where: str) -> str:
  """The zero-shot setting of a run: transductive iff its training saw the unseen names."""
  saw_unseen = bool(run_config.get("data", {}).get("transductive", False))
  actual = SETTINGS[saw_unseen]
  if requested not in ("",) + SETTINGS:
    raise ValueError(f"{where}={requested!r}: expected '', 'inductive' or 'transductive'")
  if requested and requested != actual:
    why = ("its training never saw the unseen classes' names (config.data.transductive=False)"
           if requested == "transductive" else
           "its training saw the unseen classes' names (config.data.transductive=True)")
    raise ValueError(f"{where}={requested!r} refused: {why}")
  return actual
