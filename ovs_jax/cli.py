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
  130 interrupted (Ctrl-C, SIGINT): a checkpoint was saved at the next step boundary; re-run to
      resume. 128 + SIGINT, what shells report for Ctrl-C, so scripts stop instead of requeueing.
"""
from __future__ import annotations

import difflib
import functools
import sys

from absl import app, flags

OK, FAILED, USAGE, PREEMPTED, INTERRUPTED = 0, 1, 2, 75, 130


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
    except app.UsageError as e:  # absl would print the whole --help after it
      print(f"error: {e}", file=sys.stderr)
      sys.exit(USAGE)
    except (ConfigError, VocabularyError, DataError, CheckpointError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(USAGE if isinstance(e, (ConfigError, VocabularyError)) else FAILED)
  return wrapped


def run(main):
  """`app.run(guard(main))`, with flag and `--config.*` errors as one line and exit 2 (absl
  prints them with a traceback or the whole help, and exits 1)."""
  app.run(guard(main), flags_parser=_parse_flags)


def _parse_flags(argv):
  try:
    args = flags.FLAGS(argv)
    if "config" in flags.FLAGS:  # ml_collections loads the recipe lazily: load it here
      flags.FLAGS["config"].value.keys()
    return args
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # ml_collections raises AttributeError/KeyError for an unknown `--config.` key, and wraps
    # errors of the recipe's get_config (unknown variant) in a flags.Error holding a traceback.
    print(f"error: {_config_key_error(argv) or _last_line(e)}", file=sys.stderr)
    sys.exit(USAGE)


def _last_line(e: BaseException) -> str:
  if isinstance(e, OSError) or isinstance(e.__cause__, OSError):  # --config names no file
    missing = next((str(a) for a in (e.__cause__ or e).args if "No such file" in str(a)), "")
    return f"--config: cannot read the recipe file{': ' + missing.splitlines()[-1].strip() if missing else ''}"
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if isinstance(e, flags.Error) and "Traceback" in str(e):  # the recipe's own message
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines) or type(e).__name__


def _config_key_error(argv) -> str | None:
  """'--config.train.stepz: no such key in configs/x.py:demo (did you mean train.steps?)' for
  the first `--config.` override whose key the recipe lacks; None when all exist."""
  from ovs_jax.config_utils import recipe_config
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    config = recipe_config(path, arg)
  except Exception:  # noqa: BLE001 (the recipe's own error is reported instead)
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    key = a[len("--config."):].split("=", 1)[0]
    node, done = config, []
    for part in key.split("."):
      fields = list(node.keys()) if hasattr(node, "keys") else []
      if part not in fields:
        close = difflib.get_close_matches(part, fields, 1)
        hint = f" (did you mean {'.'.join(done + close)}?)" if close else (
            f" ({'.'.join(done) or 'the config'} has: {', '.join(sorted(fields))})" if fields else "")
        return f"--config.{key}: no such key in {spec}{hint}"
      node, done = node[part], done + [part]
  return None
