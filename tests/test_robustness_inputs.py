"""Round two of "nothing silently wrong" (issue 31): config keys and flags, evaluate requests,
class-list files and names, and the text-classifier cache, each refused or handled in one line."""
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline.vocab import VocabularyError, parse_vocabulary, read_vocabulary_file
from ovs_jax.models import clip_family
from ovs_jax.text_classifier import build_text_classifier

REPO = Path(__file__).resolve().parents[1]


def _cli(module, *args, timeout=120):
  r = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                     text=True, errors="replace", timeout=timeout)
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  return r.returncode, errors, r.stderr


# (arguments, what the one line must say); each used to end in a traceback or the whole --help, exit 1
TRAIN_FLAGS = [
    (["--config=configs/cdt_vitb.py:demo", "--config.train.stepz=4"],
     "--config.train.stepz: no such key in configs/cdt_vitb.py:demo (did you mean train.steps?)"),
    (["--config=configs/simzss_dinov2_b14.py:demo", "--config.evals.vall.every=-1"],
     "--config.evals.vall.every: no such key"),
    (["--config=configs/cdt_vitb.py:demo", "--config.train.steps=abc"],
     "--config.train.steps=abc: invalid literal for int()"),
    (["--config=configs/cdt_vitb.py:demoo"], "unknown variant(s) ['demoo']"),
    (["--config=configs/no_such_recipe.py"], "--config: cannot read the recipe file"),
]


@pytest.mark.parametrize("args,message", TRAIN_FLAGS, ids=[a[-1] for a, _ in TRAIN_FLAGS])
def test_train_flag_errors_are_one_line_exit_2(tmp_path, args, message):
  code, errors, stderr = _cli("ovs_jax.train", *args, f"--workdir={tmp_path / 'w'}")
  assert code == 2 and len(errors) == 1 and message in errors[0], stderr[-2000:]
  assert "Traceback" not in stderr and not (tmp_path / "w").exists()


EVALUATE = [
    (["--datasets=ade20k_1500"], "--datasets: unknown dataset 'ade20k_1500'"),
    (["--vocab=voc_20", "--datasets=ade20k_150"], "has 20 classes but ade20k_150 has 150"),
    (["--datasets=demo", "--split=tset"], "unknown split 'tset' for demo"),
]


@pytest.mark.parametrize("args,message", EVALUATE, ids=[a[0] for a, _ in EVALUATE])
def test_evaluate_request_checked_before_loading(tmp_path, args, message):
  # a CLIP spec that cannot load: the request must be refused before any model is opened
  code, errors, stderr = _cli("ovs_jax.evaluate", *args, f"--clip={tmp_path / 'no_clip'}",
                              f"--workdir={tmp_path / 'e'}")
  assert code == 2 and len(errors) == 1 and message in errors[0], stderr[-2000:]


def test_predict_usage_error_is_one_line(tmp_path):
  code, errors, stderr = _cli("ovs_jax.predict", "--clip=random:tiny", "--images=x.png", "--classes=")
  assert code == 2 and len(errors) == 1 and "give --clip" in errors[0], stderr[-2000:]
  assert "--helpfull" not in stderr  # not the whole help


@pytest.mark.parametrize("content", [b"\xef\xbb\xbfsky; sea\n", b"\xef\xbb\xbfsky;\r\nsea\r\n", b"sky\r\nsea\r\n"],
                         ids=["bom", "bom+crlf", "crlf"])
def test_vocabulary_file_bom_and_crlf(tmp_path, content):
  path = tmp_path / "classes.txt"
  path.write_bytes(content)
  assert read_vocabulary_file(path) == [["sky"], ["sea"]]


def test_bom_prefixed_duplicate_is_caught():
  assert parse_vocabulary("\ufeffsky; sea") == [["sky"], ["sea"]]  # web-app input
  with pytest.raises(VocabularyError, match="names both class 0"):
    parse_vocabulary("sky; \ufeffsky")


def test_vocabulary_duplicates_compared_as_the_tokenizer_does():
  # NFC: 'é' composed and decomposed tokenise alike, so they are the same name
  with pytest.raises(VocabularyError, match="names both class 0"):
    parse_vocabulary("caf\u00e9; cafe\u0301")
  # casefold would merge 'straße' and 'strasse'; the tokenizer keeps them apart
  assert len(parse_vocabulary("straße; strasse")) == 2


def test_latin1_vocabulary_file_is_one_clear_error(tmp_path):
  path = tmp_path / "classes.txt"
  path.write_bytes("café; thé\n".encode("latin-1"))
  with pytest.raises(VocabularyError, match=r"classes.txt: not UTF-8 \(byte 3"):
    read_vocabulary_file(path)


@pytest.fixture(scope="module")
def tiny_clip():
  return clip_family.build_clip(clip_family.get_arch("tiny"), rngs=nnx.Rngs(0))


def test_long_names_that_collide_are_refused(tiny_clip, caplog):
  long = "a " + "very " * 80
  ctx = tiny_clip.config.text.max_position_embeddings
  with pytest.raises(VocabularyError, match=rf"classes 0 .* and 1 .* within the text tower's {ctx} tokens"):
    build_text_classifier(tiny_clip, [[long + "red cat"], [long + "blue dog"], ["sky"]], ("{}",))
  clf = build_text_classifier(tiny_clip, [[long + "red cat"], ["sky"]], ("{}",))  # cut, no collision
  assert clf.num_classes == 2 and "are cut at the end: 0 (" in caplog.text


def test_classifier_cache_keyed_by_compute_dtype(tmp_path, tiny_clip):
  """A bfloat16 classifier must not be reused by a float32 run of the same weights."""
  arch = clip_family.get_arch("tiny")
  bf16 = clip_family.build_clip(arch, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  nnx.update(bf16, nnx.state(tiny_clip, nnx.Param))
  vocab = [["cat"], ["dog"], ["sky"]]
  build_text_classifier(bf16, vocab, ("a photo of a {}.",), cache_dir=tmp_path)
  got = build_text_classifier(tiny_clip, vocab, ("a photo of a {}.",), cache_dir=tmp_path)
  want = build_text_classifier(tiny_clip, vocab, ("a photo of a {}.",))
  np.testing.assert_array_equal(got.embeddings, want.embeddings)
  assert len(list(tmp_path.glob("text_classifier-*.npz"))) == 2


# ---- predict: never writes over an input or a file it did not write; names with commas; folders

def _png(path, size=(24, 20)):
  from PIL import Image
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)).save(path)
  return path


def test_predict_never_overwrites_an_input(tmp_path):
  a, victim = _png(tmp_path / "a.png"), _png(tmp_path / "a_label.png", (30, 30))
  before = victim.read_bytes()
  code, errors, stderr = _cli("ovs_jax.predict", "--clip=random:tiny", f"--images={a},{victim}",
                              "--classes=sky; sea", f"--out={tmp_path}")
  assert code == 2 and len(errors) == 1 and f"would overwrite the input {victim}" in errors[0], stderr[-2000:]
  assert victim.read_bytes() == before


def test_outputs_may_replace_only_what_an_earlier_predict_wrote(tmp_path):
  from ovs_jax.cli import ConfigError
  from ovs_jax.inference.segmenter import check_outputs, output_paths
  out = tmp_path / "out"
  out.mkdir()
  (out / "x_overlay.png").write_bytes(b"someone's file")
  with pytest.raises(ConfigError, match=r"1 file\(s\) not written by an earlier predict .*x_overlay.png"):
    check_outputs(out, ["x"], [], with_gt=False)
  (out / "summary.json").write_text(json.dumps({"predicted": [
      {"input": "x.png", "outputs": [str(p) for p in output_paths(out, "x", False)]}]}))
  check_outputs(out, ["x"], [], with_gt=False)  # a re-run replaces its own outputs


@pytest.mark.parametrize("given,want", [
    ("{d}/b,c.jpg", ["b,c.jpg"]),
    ("{d}/a.png,{d}/b,c.jpg", ["a.png", "b,c.jpg"]),
    ("{d}/b,c.jpg,{d}/a.png", ["b,c.jpg", "a.png"]),
])
def test_images_may_hold_commas(tmp_path, given, want):
  from ovs_jax.inference.segmenter import list_images
  _png(tmp_path / "a.png"), _png(tmp_path / "b,c.jpg")
  assert [p.name for p in list_images(given.format(d=tmp_path))] == want


def test_missing_image_names_what_was_typed(tmp_path):
  from ovs_jax.inference.segmenter import list_images
  _png(tmp_path / "a.png")
  with pytest.raises(FileNotFoundError, match=r"^b: no such image file or folder \(in --images="):
    list_images(f"{tmp_path}/a.png,b")


def test_folder_names_the_sub_folders_it_does_not_search(tmp_path, caplog):
  from ovs_jax.inference.segmenter import list_images
  _png(tmp_path / "a.png")
  (tmp_path / "more").mkdir()
  _png(tmp_path / "more" / "b.png")
  assert [p.name for p in list_images(str(tmp_path))] == ["a.png"]
  assert "1 sub-folder(s) not searched (more)" in caplog.text


def test_summary_is_strict_utf8_json_for_non_utf8_names(tmp_path):
  import os
  d = os.fsencode(tmp_path)
  name = d + b"/caf\xe9.png"  # a latin-1 file name on a UTF-8 system
  _png(os.fsdecode(name))
  code, errors, stderr = _cli("ovs_jax.predict", "--clip=random:tiny", f"--images={tmp_path}",
                              "--classes=sky; sea", f"--out={tmp_path / 'out'}")
  assert code == 0, stderr[-2000:]
  raw = (tmp_path / "out" / "summary.json").read_bytes()
  summary = json.loads(raw.decode("utf-8"))  # strict: no lone surrogates
  (entry,) = summary["predicted"]
  assert entry["input"].endswith("caf\\xe9.png")
  entry["input"].encode("utf-8")


# ---- the web app: client errors are 4xx with the reason

@pytest.mark.parametrize("body,content_type", [
    (b"garbage", "multipart/form-data"),  # no boundary
    (b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nabc",
     "multipart/form-data; boundary=xx"),  # never closed
    (b"--xx\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n" + b"x" * 10 + b"\r\n--xx--\r\n"
     + b"--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--xx--\r\n" * 6,
     "multipart/form-data; boundary=xx"),  # too many fields
], ids=["no-boundary", "unterminated", "too-many-fields"])
def test_malformed_multipart_is_a_client_error(body, content_type):
  from starlette.testclient import TestClient
  from ovs_jax.serve.app import create_app
  from ovs_jax.serve.service import SegmentService
  client = TestClient(create_app(SegmentService("x", lambda vocabulary: None, {})))
  r = client.post("/api/segment", content=body, headers={"content-type": content_type})
  assert 400 <= r.status_code < 500 and r.json()["error"], r.text
  assert "internal error" not in r.text


# ---- precision: an imported official checkpoint evaluates as its own code does

def test_imported_checkpoints_run_at_their_official_precision(tmp_path, monkeypatch):
  from ovs_jax.cli import ConfigError
  from ovs_jax.inference import segmentation_model as sm
  config = {"method": "maft_plus", "model": {"dtype": "bfloat16"}}
  (tmp_path / "config.json").write_text(json.dumps(config))
  seen = []

  class Stub:
    def open_checkpoint(self, directory, config, **options):
      seen.append(config["model"]["dtype"])
  monkeypatch.setattr("ovs_jax.methods.registry.get_method", lambda name: Stub())
  sm.open_checkpoint(tmp_path)  # a run of ours: its own dtype
  (tmp_path / sm.IMPORTED_FILE).write_text(json.dumps({"source": "x.pth", "precision": "float32"}))
  sm.open_checkpoint(tmp_path)  # imported: the official precision
  sm.open_checkpoint(tmp_path, precision="bfloat16")  # asked for
  assert seen == ["bfloat16", "float32", "bfloat16"]
  with pytest.raises(ConfigError, match="--precision='fp16'; expected one of auto, float32, bfloat16"):
    sm.open_checkpoint(tmp_path, precision="fp16")


# ---- recipe variants: a combination is honoured or refused, never partly ignored

def _recipes_and_variants():
  import itertools
  import re
  from ovs_jax.config_utils import recipe_config
  cases = []
  for path in sorted((REPO / "configs").glob("*.py")):
    try:
      recipe_config(path, "__no_such_variant__")
    except ValueError as e:
      known = re.search(r"expected any of: (.*)$", str(e)).group(1).split(", ")
      cases += [(path.name, a, b) for a, b in itertools.combinations(sorted(known), 2)]
  return cases


@pytest.mark.parametrize("recipe,a,b", _recipes_and_variants())
def test_variant_pairs_are_honoured_or_refused(recipe, a, b):
  from ovs_jax.config_utils import recipe_config
  path = REPO / "configs" / recipe
  try:
    both = recipe_config(path, f"{a},{b}").to_dict()
  except ValueError as e:
    assert "do not combine" in str(e) or "variant" in str(e)
    return
  for single in (a, b):
    try:
      alone = recipe_config(path, single).to_dict()
    except ValueError:
      continue  # e.g. gkc_vitb's zero_shot exists only with demo
    assert both != alone, f"{recipe}:{a},{b} ignores {b if single == a else a}"
