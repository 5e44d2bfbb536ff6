"""The per-device batch of the official PyTorch trainers.

Terms that the official code computes on each GPU's own images (GKC's synonym classifier padding,
its ≤ 200 distillation crops, its caption contrast) are computed here on groups of consecutive
images of the global batch, one group per device: the batch is laid out device by device along
the 'data' axis, so a group's arrays stay on its device.
"""
import jax


def images_per_device(batch_size: int, configured: int = 0) -> int:
  """Group size: `configured` when set, else the batch over the devices (the whole batch when it
  does not divide evenly, e.g. a traced sub-batch)."""
  if configured:
    if batch_size % configured:
      raise ValueError(f"images_per_device={configured} does not divide the batch of {batch_size}")
    return configured
  n = jax.device_count()
  return batch_size // n if batch_size % n == 0 and batch_size >= n else batch_size


def split(x, group: int):
  """(B, ...) -> (B / group, group, ...)."""
  return x.reshape(x.shape[0] // group, group, *x.shape[1:])
