"""Checkpoint integrity: every save records a checksum of each array, every restore verifies it; a
damaged or foreign newest step falls back to an older one and is moved aside (never deleted);
when none restores, the error lists each step and what to move aside."""
import collections
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovs_jax import checkpointing, sharding
from ovs_jax.checkpointing import Checkpointer, CorruptCheckpointError, fingerprint
from ovs_jax.interchange.errors import CheckpointError
from trainer_helpers import file_digests

# orbax leaves the coroutines of a failed restore un-awaited
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(k):
  return {"w": jnp.arange(4096.0, dtype=jnp.float32).reshape(64, 64) * k,
          "b": jnp.linspace(-1, 1, 96, dtype=jnp.bfloat16) * k,
          "step": jnp.asarray(k, jnp.int32), "rng": jax.random.PRNGKey(k)}


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(1))


def _numpy_fingerprint(x) -> list[int]:
  """Independent re-derivation: the array's bytes as 32/16-bit words w_i in C order,
  [Σ w_i, Σ w_i·(i·K + 1), #non-finite] mod 2^32 with Python integers."""
  x = np.asarray(x)
  words = x.reshape(-1).view(f"uint{min(32, 8 * x.dtype.itemsize)}").astype(object)
  k = checkpointing._MIX
  finite = np.isfinite(x.astype(np.float32)) if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else True
  return [int(sum(words)) % 2**32, int(sum(w * (i * k + 1) for i, w in enumerate(words))) % 2**32,
          int(np.size(x) - np.count_nonzero(finite)) if finite is not True else 0]


def test_fingerprint_equals_a_numpy_derivation_on_any_mesh():
  state = _state(3)
  state["w"] = state["w"].at[5, 7].set(jnp.nan)
  want = {jax.tree_util.keystr(p): _numpy_fingerprint(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  assert fingerprint(state) == want and want["['w']"][2] == 1
  for mesh in ({"data": 1, "fsdp": 8}, {"data": 2, "fsdp": 4}):
    m = sharding.make_mesh(mesh)
    spec = jax.sharding.PartitionSpec("fsdp", "data")
    sharded = dict(state, w=jax.device_put(state["w"], jax.sharding.NamedSharding(m, spec)))
    assert fingerprint(sharded) == want, mesh
  swapped = dict(state, w=state["w"].at[0, :2].set(state["w"][0, 1::-1]))  # same values, moved
  assert fingerprint(swapped)["['w']"][0] == want["['w']"][0]
  assert fingerprint(swapped)["['w']"][1] != want["['w']"][1]


@pytest.fixture
def three_steps(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", use_async=False)
  for k in (1, 2, 3):
    ckpt.save(k, _state(k), meta={"step": k})
  ckpt.close()
  return tmp_path / "ckpt"


def _largest_state_file(step_dir):
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _damage(step_dir, how, tmp_path):
  data = _largest_state_file(step_dir)
  raw = data.read_bytes()
  if how == "truncated":
    data.write_bytes(raw[:len(raw) // 2])
  elif how == "flipped bytes":  # same size: orbax alone restores it without an error
    mid = len(raw) // 2
    data.write_bytes(raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 64]) + raw[mid + 64:])
  elif how == "deleted file":
    data.unlink()
  elif how == "damaged meta":
    (step_dir / "meta" / "metadata").write_text("{not json")
  elif how == "foreign checkpoint":  # another model's step copied in under this number
    other = Checkpointer(tmp_path / "other", use_async=False)
    other.save(int(step_dir.name), {"w": jnp.ones((8, 8)), "step": jnp.zeros((), jnp.int32)}, meta={})
    other.close()
    shutil.rmtree(step_dir)
    shutil.copytree(tmp_path / "other" / step_dir.name, step_dir)


DAMAGE = ["truncated", "flipped bytes", "deleted file", "damaged meta", "foreign checkpoint"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_newest_step_falls_back_and_is_moved_aside(three_steps, tmp_path, how, caplog):
  _damage(three_steps / "3", how, tmp_path)
  before = collections.Counter(file_digests(three_steps).values())
  ckpt = Checkpointer(three_steps, use_async=False)
  step, state, meta = ckpt.restore(ABSTRACT)
  ckpt.close()
  assert step == 2 and meta == {"step": 2}
  jax.tree.map(np.testing.assert_array_equal, state, _state(2))
  names = sorted(p.name for p in three_steps.iterdir())
  assert names[:2] == ["1", "2"] and names[2].startswith("corrupt-3-") and len(names) == 3
  assert not collections.Counter(before) - collections.Counter(file_digests(three_steps).values())
  assert f"{three_steps}/3 is unreadable or damaged" in caplog.text and "moved to" in caplog.text


def test_when_no_step_restores_the_error_lists_them_and_says_what_to_move(three_steps, tmp_path):
  for k in ("1", "2", "3"):
    _damage(three_steps / k, "flipped bytes", tmp_path)
  before = file_digests(three_steps)
  ckpt = Checkpointer(three_steps, use_async=False)
  with pytest.raises(CheckpointError) as e:
    ckpt.restore(ABSTRACT)
  ckpt.close()
  lines = str(e.value).splitlines()
  # Flipped compressed bytes fail either our checksum or orbax's decompression: one line each.
  assert [l.split(": cannot restore (")[0] for l in lines[:3]] == [
      f"{three_steps}/3", f"{three_steps}/2", f"{three_steps}/1"]
  assert lines[3].startswith("Every checkpoint is damaged; to start this run afresh, move them aside "
                             f"(nothing is deleted automatically): mv {three_steps} {three_steps}.bad-")
  assert file_digests(three_steps) == before  # nothing moved or deleted


def test_checkpoints_without_checksums_are_checked_for_non_finite_values(tmp_path, caplog):
  ckpt = Checkpointer(tmp_path / "ckpt", use_async=False)
  bad = _state(1)
  bad["w"] = bad["w"].at[0, 0].set(jnp.inf)
  ckpt.save(1, _state(1), meta={"step": 1})
  ckpt.save(2, bad, meta={"step": 2})
  ckpt.close()
  for k in ("1", "2"):  # as written before checksums existed
    meta = tmp_path / "ckpt" / k / "meta" / "metadata"
    meta.write_text(json.dumps({"step": int(k)}))
  ckpt = Checkpointer(tmp_path / "ckpt", use_async=False)
  with pytest.raises(CheckpointError, match=r"ckpt/2: cannot restore \(CorruptCheckpointError: .*\['w'\]: 1 "
                                            r"values not finite"):
    ckpt.restore(ABSTRACT, step=2)
  step, state, _ = ckpt.restore(ABSTRACT, step=1)
  ckpt.close()
  assert step == 1 and "has no checksums (written by an older version)" in caplog.text
  with pytest.raises(CorruptCheckpointError, match=r"x: 1 array\(s\) differ .*\['w'\]: 1 values not finite "
                                                   r"where 0 were saved"):
    checkpointing.verify(bad, fingerprint(_state(1)), "x")
