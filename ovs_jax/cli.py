"""What the command-line programs share: their exit codes, and errors shown as one message.

Exit codes (docs/robustness.md):
  0   done
  1   failed: bad input, data or checkpoint (the message says which file and why), or a crash
      (a Python traceback)
  2   the command or config is wrong: nothing was run and the workdir is untouched
  75  preempted (SIGTERM): a checkpoint was saved; re-run the same command to resume. 75 is
      EX_TEMPFAIL of sysexits.h ("try again later"): Slurm requeues on it with
      `RequeueExit=75`, a Kubernetes Job retries it without counting a failure with a
      `podFailurePolicy` rule `{action: Ignore, onExitCodes: {operator: In, values: [75]}}`.
"""
from __future__ import annotations

import functools
import sys

OK, FAILED, USAGE, PREEMPTED = 0, 1, 2, 75


class ConfigError(ValueError):
  """A config value, flag or workdir that cannot work; the message names the key, the value and
  what is allowed. Raised before anything is built or written."""


def guard(main):
  """absl `main` that prints a user error (its message is the whole story) as one line on stderr
  and exits 2 (config, flags, class list) or 1 (data, checkpoint); other errors keep their
  traceback."""
  from input_pipeline.files import DataError
  from input_pipeline.vocab import VocabularyError
  from ovs_jax.interchange.errors import CheckpointError

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (ConfigError, VocabularyError, DataError, CheckpointError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(USAGE if isinstance(e, (ConfigError, VocabularyError)) else FAILED)
  return wrapped
