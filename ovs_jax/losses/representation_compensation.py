"""Representation Compensation (MAFT+): keep the fine-tuned CLIP image tower near its frozen copy.

The distance is taken between POD descriptors (Douillard et al. 2020, "PODNet"; spatial pyramid
form of PLOP) of the student and teacher dense maps, as in MAFT+ `representation_compensation.py`.
"""
import jax
import jax.numpy as jnp

from ovs_jax.ops.resize import resize


def smooth_l1(x, y, beta=1.0):
  """Elementwise SmoothL1 (Huber / β): 0.5·d²/β where |d| < β, else |d| − 0.5·β."""
  d = jnp.abs(x - y)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def pod_descriptor(x, scales=(1, 2, 4)):
  """Pooled Outputs Distillation descriptor of a dense map.

  A non-square map is first resized bilinearly (half-pixel centres, as `F.interpolate(...,
  align_corners=False)`) to a square of side max(H, W). For each scale s the map is average-pooled
  with kernel = stride = W//s (W the width *before* resizing, as in MAFT+; floor mode, trailing
  rows/columns dropped), then summed over height (a width profile) and over width (a height
  profile), each flattened channel-major like torch's NCHW `.view(B, -1)`.

  Args:
    x: (B, H, W, C) map.
    scales: pyramid scales; W//s must be ≥ 1.
  Returns:
    (B, N) float32, N = Σ_s C·(w_s + h_s), per scale [width profile, height profile].
  """
  b, h, w, c = x.shape
  x = x.astype(jnp.float32)
  side = max(h, w)
  if h != w:
    x = resize(x, side, side)
  out = []
  for s in scales:
    k = w // s
    if k < 1:
      raise ValueError(f'POD scale {s} is larger than the map width {w}')
    n = side // k
    pooled = x[:, :n * k, :n * k].reshape(b, n, k, n, k, c).mean((2, 4))  # (B, n, n, C)
    out.append(pooled.sum(1).transpose(0, 2, 1).reshape(b, -1))  # sum over height: (B, C·n)
    out.append(pooled.sum(2).transpose(0, 2, 1).reshape(b, -1))  # sum over width: (B, C·n)
  return jnp.concatenate(out, axis=1)


def representation_compensation_loss(student, teacher, scales=(1, 2, 4)):
  """loss_rc = SmoothL1_β=1,mean(POD(relu(S)), POD(relu(T))), the teacher under stop_gradient.

  Unweighted: the method multiplies by its weight (0.1 in MAFT+).

  Args:
    student, teacher: (B, h, w, D) dense maps of the trained and the frozen image tower.
  Returns:
    scalar float32, the mean over all B·N descriptor entries.
  """
  if student.shape != teacher.shape:
    raise ValueError(f'student {student.shape} and teacher {teacher.shape} maps differ in shape')
  teacher = jax.lax.stop_gradient(teacher)
  a = pod_descriptor(jax.nn.relu(student), scales)
  b = pod_descriptor(jax.nn.relu(teacher), scales)
  return jnp.mean(smooth_l1(a, b))
