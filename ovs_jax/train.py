"""Train a model from a config file.

  python -m ovs_jax.train --config=configs/cdt_vitb.py --workdir=runs/cdt_vitb [--config.train.steps=1000]
  python -m ovs_jax.train --config=configs/cdt_vitb.py:demo --workdir=runs/demo

Re-running the same command resumes from the newest checkpoint in the workdir; a changed config is
refused unless its keys are listed in --allow_config_change. Exit codes: `ovs_jax/cli.py`
(0 done, 1 failed, 2 bad config or flags, 75 preempted: re-run to resume).
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app, flags, logging
from ml_collections import config_flags

from ovs_jax import cli, distributed
from ovs_jax.trainer import outcome, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "recipe file, e.g. configs/cdt_vitb.py[:demo]",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs, metrics and predictions")
flags.DEFINE_list("allow_config_change", [], "config keys (fnmatch patterns, e.g. train.steps,optim.lr "
                  "or 'optim.*') that may differ from the workdir's saved config when resuming")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process runs (automatic on Cloud TPU; see ovs_jax/distributed.py for the env variables).
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process GPU/CPU runs")
flags.DEFINE_integer("num_processes", None, "number of processes in a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)")
flags.DEFINE_string("local_device_ids", None, "comma-separated local devices of this process, e.g. one GPU: '3'")
flags.DEFINE_integer("num_cpu_devices", None, "simulated CPU devices per process (testing)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # progress and metrics go to the console and TensorBoard
  f = flags.FLAGS
  distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, f.local_device_ids,
                         f.num_cpu_devices)
  message, code = outcome(train_and_evaluate(_CONFIG.value, f.workdir, f.allow_config_change))
  if distributed.is_main_process():
    print(message, file=sys.stderr if code else sys.stdout)
  sys.exit(code)


if __name__ == "__main__":
  cli.run(main)
