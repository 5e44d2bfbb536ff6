"""What every evaluator shares: its dataset (opened once, lazily) and its vocabulary."""
from __future__ import annotations

KNOWN = {"type", "dataset", "split", "every", "max_images"}


class DatasetEvaluator:
  """An evaluator over one dataset split (`config.evals.<name>`), with `extra` keys of its own."""

  extra: dict = {}

  def __init__(self, name, cfg, run_config):
    unknown = set(cfg) - KNOWN - set(self.extra)
    if unknown:
      raise ValueError(f"config.evals.{name}: unknown key(s) {sorted(unknown)}; expected "
                       f"{sorted(KNOWN | set(self.extra))}")
    self.name, self.run_config = name, run_config
    self.dataset, self.split = cfg.get("dataset"), cfg.get("split", "val")
    self.every, self.max_images = cfg.get("every", 0), cfg.get("max_images", 0)
    self.options = {k: cfg.get(k, v) for k, v in self.extra.items()}
    self._source = None

  @property
  def source(self):
    if self._source is None:
      from input_pipeline.datasets import get_dataset
      d = self.run_config.data
      self._source = get_dataset(self.dataset, self.split, root=d.root or None, skip_bad=d.skip_bad)
    return self._source

  @property
  def vocabulary(self):
    from input_pipeline.vocab import load_vocabulary
    return load_vocabulary(self.source.vocabulary)
