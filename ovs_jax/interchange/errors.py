"""The one error type for checkpoints that do not fit the model they are loaded into."""


class CheckpointError(ValueError):
  """A checkpoint file is unreadable, or its keys/shapes/architecture differ from what is expected."""


def raise_listed(what: str, problems: list[str], most: int = 8):
  """One CheckpointError: `what`, then the first `most` problems and how many more there are."""
  more = f" (and {len(problems) - most} more)" if len(problems) > most else ""
  raise CheckpointError(f"{what}: " + "; ".join(problems[:most]) + more)
