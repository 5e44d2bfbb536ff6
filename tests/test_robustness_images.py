"""Images as a person sees them: every PIL mode and EXIF orientation through the one decoder
(`input_pipeline.files`), label maps checked against the upright size, and prediction outputs
that never overwrite each other. References are numpy re-derivations of each documented rule."""
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from input_pipeline import files
from input_pipeline.files import DataError
from input_pipeline.source import DatasetMeta, decode_semantic
from ovs_jax.cli import ConfigError
from ovs_jax.inference.segmenter import output_names

BG = np.array(files.ALPHA_BACKGROUND, np.float64)
RNG = np.random.default_rng(0)
GREY16 = np.array([[0, 128, 257, 32767], [32768, 40000, 65278, 65535]], np.uint16)
RGBA = RNG.integers(0, 256, (2, 4, 4)).astype(np.uint8)
PALETTE = RNG.integers(0, 256, 768).astype(np.uint8)
INDICES = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)


def _over_background(rgb, alpha):
  a = alpha[..., None] / 255.0
  return np.round(rgb * a + BG * (1 - a)).astype(np.uint8)


def _grey(v):
  return np.repeat(np.asarray(v, np.uint8)[..., None], 3, -1)


def _palette_image(mode="P", alpha=None):
  img = Image.fromarray(INDICES, "L")
  img.putpalette(PALETTE.tolist())
  img = img.convert("P") if img.mode != "P" else img
  if alpha is not None:
    img.info["transparency"] = bytes(alpha)
  return img


# mode -> (in-memory PIL image, expected (H, W, 3) uint8 from the documented rule)
def _cases():
  lut = PALETTE.reshape(256, 3)
  a = RGBA[..., 3]
  premult = np.round(RGBA[..., :3] * (a[..., None] / 255.0)).astype(np.uint8)
  cmyk = Image.fromarray(RGBA, "CMYK")
  ycc = Image.fromarray(RGBA[..., :3], "YCbCr")
  lab = Image.frombytes("LAB", (4, 2), RGBA[..., :3].tobytes())
  hsv = Image.frombytes("HSV", (4, 2), RGBA[..., :3].tobytes())
  i32 = np.array([[0, 1 << 8, 1 << 24, 2**31 - 1]] * 2, np.int32)
  pa = Image.frombytes("PA", (4, 2), np.dstack([INDICES, a]).tobytes())
  pa.putpalette(PALETTE.tolist())
  return {
      "RGB": (Image.fromarray(RGBA[..., :3]), RGBA[..., :3]),
      "RGBX": (Image.frombytes("RGBX", (4, 2), RGBA.tobytes()), RGBA[..., :3]),
      "L": (Image.fromarray(RGBA[..., 0]), _grey(RGBA[..., 0])),
      "1": (Image.fromarray(INDICES > 1), _grey(255 * (INDICES > 1))),
      "P": (_palette_image(), lut[INDICES]),
      "I;16": (Image.fromarray(GREY16), _grey(np.round(GREY16 / 257.0))),
      "I;16L": (Image.frombytes("I;16L", (4, 2), GREY16.astype("<u2").tobytes()), _grey(np.round(GREY16 / 257.0))),
      "I;16B": (Image.frombytes("I;16B", (4, 2), GREY16.astype(">u2").tobytes()), _grey(np.round(GREY16 / 257.0))),
      "I;16N": (Image.frombytes("I;16N", (4, 2), GREY16.tobytes()), _grey(np.round(GREY16 / 257.0))),
      "I": (Image.fromarray(i32), _grey(np.round(i32 * (255 / (2**31 - 1))))),
      "F": (Image.fromarray(np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)),
            _grey(np.round(np.linspace(0, 1, 8).reshape(2, 4) * 255))),
      "LA": (Image.fromarray(RGBA[..., [0, 3]], "LA"), _over_background(RGBA[..., [0, 0, 0]], a)),
      "La": (Image.frombytes("La", (4, 2), np.dstack([premult[..., 0], a]).tobytes()),
             np.round(premult[..., [0, 0, 0]] + BG * (1 - a[..., None] / 255.0)).astype(np.uint8)),
      "PA": (pa, _over_background(lut[INDICES], a)),
      "RGBA": (Image.fromarray(RGBA, "RGBA"), _over_background(RGBA[..., :3], a)),
      "RGBa": (Image.frombytes("RGBa", (4, 2), np.dstack([premult, a]).tobytes()),
               np.round(premult + BG * (1 - a[..., None] / 255.0)).astype(np.uint8)),
      "CMYK": (cmyk, np.asarray(cmyk.convert("RGB"))),
      "YCbCr": (ycc, np.asarray(ycc.convert("RGB"))),
      "LAB": (lab, np.asarray(lab.convert("RGB"))),
      "HSV": (hsv, np.asarray(hsv.convert("RGB"))),
  }


CASES = _cases()


def test_every_pil_mode_has_a_documented_rule():
  assert set(files.MODES) == set(Image.MODES) == set(CASES)
  table = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
  for mode in files.MODES:
    assert f"| `{mode}` |" in table, mode


@pytest.mark.parametrize("mode", sorted(CASES))
def test_mode_matrix(mode):
  img, want = CASES[mode]
  assert img.mode == mode
  got = files.to_rgb(img, "x.png")
  assert got.dtype == np.uint8 and got.shape == (2, 4, 3)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt,array,want", [
    # The headline case: 16-bit grey PNGs used to decode as all white (PIL's clip to 255).
    ("PNG", GREY16, _grey(np.round(GREY16 / 257.0))),
    ("TIFF", GREY16, _grey(np.round(GREY16 / 257.0))),
    ("TIFF", np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), _grey([[0, 64], [128, 255]])),
    ("PPM", GREY16, _grey(np.round(GREY16 / 257.0))),  # 16-bit PGM: mode I, Pillow's 16-bit range
])
def test_high_bit_depth_files_are_scaled_not_clipped(fmt, array, want):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt)
  got = files.read_image("x", buf.getvalue())
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(got)) > 1  # not a flat white (or black) picture


def test_transparent_palette_png_and_bad_values():
  img = _palette_image(alpha=[0, 128, 255, 255])
  buf = io.BytesIO()
  img.save(buf, "PNG")
  alpha = np.array([0, 128, 255, 255], np.uint8)[INDICES]
  np.testing.assert_array_equal(files.read_image("p.png", buf.getvalue()),
                                _over_background(PALETTE.reshape(256, 3)[INDICES], alpha))
  for array, match in [(np.array([[0.5, 1.5]], np.float32), r"float image values span \[0.5, 1.5\]"),
                       (np.array([[0.5, np.nan]], np.float32), "float image values span"),
                       (np.array([[-3, 7]], np.int32), r"32-bit integer image values span \[-3, 7\]")]:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "TIFF")
    with pytest.raises(DataError, match="bad.tif: " + match):
      files.read_image("bad.tif", buf.getvalue())


# EXIF orientation -> how a viewer shows the stored pixels (EXIF 2.32, tag 0x0112)
UPRIGHT = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(np.rot90(a, 2), 0, 1), 8: lambda a: np.rot90(a, 1)}


def _with_exif(array, orientation, fmt="PNG"):
  img = Image.fromarray(array)
  exif = img.getexif()
  exif[files.EXIF_ORIENTATION] = orientation
  buf = io.BytesIO()
  img.save(buf, fmt, exif=exif.tobytes())
  return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_a_viewer_shows_it(orientation):
  stored = RNG.integers(0, 256, (3, 5, 3)).astype(np.uint8)  # asymmetric: every transform differs
  data = _with_exif(stored, orientation)
  np.testing.assert_array_equal(files.read_image("phone.png", data), UPRIGHT[orientation](stored))
  assert files.image_size("phone.png", data) == UPRIGHT[orientation](stored).shape[:2]
  label = RNG.integers(0, 5, (3, 5)).astype(np.uint8)
  np.testing.assert_array_equal(files.read_label("l.png", _with_exif(label, orientation)),
                                UPRIGHT[orientation](label))


def _move_exif_after_pixels(png: bytes) -> bytes:
  """The same PNG with its eXIf chunk moved after IDAT (allowed; PIL then finds it on decode)."""
  chunks, pos = [], 8
  while pos < len(png):
    n = struct.unpack(">I", png[pos:pos + 4])[0]
    chunks.append(png[pos:pos + 12 + n])
    pos += 12 + n
  exif = next(c for c in chunks if c[4:8] == b"eXIf")
  rest = [c for c in chunks if c is not exif]
  return png[:8] + b"".join(rest[:-1]) + exif + rest[-1]


def test_phone_photo_jpeg_and_late_exif_png_sizes_agree_with_pixels():
  stored = RNG.integers(0, 256, (4, 6, 3)).astype(np.uint8)
  jpeg = _with_exif(stored, 6, "JPEG")
  assert files.read_image("p.jpg", jpeg).shape == (6, 4, 3) and files.image_size("p.jpg", jpeg) == (6, 4)
  late = _move_exif_after_pixels(_with_exif(stored, 6))
  assert zlib.crc32(late) != zlib.crc32(_with_exif(stored, 6))
  assert files.read_image("p.png", late).shape == (6, 4, 3) and files.image_size("p.png", late) == (6, 4)


def test_labels_are_checked_against_the_upright_image():
  meta = DatasetMeta("demo", "val", "demo", 10)
  stored = RNG.integers(0, 256, (4, 6, 3)).astype(np.uint8)
  raw = {"file_name": "a.jpg", "label_file": "a.png", "image_bytes": _with_exif(stored, 6)}
  buf = io.BytesIO()
  Image.fromarray(np.zeros((4, 6), np.uint8)).save(buf, "PNG")  # drawn on the stored pixels
  with pytest.raises(DataError, match=r"a.png: label map is 4x6 \(HxW\) but its image is 6x4 after its "
                                      r"EXIF orientation 6"):
    decode_semantic(dict(raw, label_bytes=buf.getvalue()), meta)
  buf = io.BytesIO()
  Image.fromarray(np.zeros((6, 4), np.uint8)).save(buf, "PNG")  # drawn on the upright picture
  rec = decode_semantic(dict(raw, label_bytes=buf.getvalue()), meta)
  assert rec["image"].shape == (6, 4, 3) and rec["label"].shape == (6, 4)


@pytest.mark.parametrize("paths,want", [
    (["d/a.jpg", "d/b.png"], ["a", "b"]),
    (["d/a.jpg", "d/a.png"], ["a.jpg", "a.png"]),
    (["d/A.jpg", "d/a.png"], ["A.jpg", "a.png"]),  # one file on macOS/Windows
    (["r/d1/x.png", "r/d2/x.png", "r/d2/y.png"], ["d1__x.png", "d2__x.png", "y"]),
])
def test_output_names_never_collide(tmp_path, paths, want):
  assert output_names([tmp_path / p for p in paths]) == want


def test_output_names_refuse_what_cannot_be_told_apart(tmp_path):
  # Folders that differ only in case: one output file on macOS/Windows.
  with pytest.raises(ConfigError, match=r"inputs would write the same output files: \[\['.*/a/x.png', "
                                        r"'.*/A/x.png'\]\]; rename them"):
    output_names([tmp_path / "a" / "x.png", tmp_path / "A" / "x.png"])


def test_predict_keeps_every_output_and_skips_bad_images_with_a_summary(tmp_path):
  imgs = tmp_path / "imgs"
  (imgs / "more").mkdir(parents=True)
  rgb = RNG.integers(0, 256, (40, 48, 3)).astype(np.uint8)
  Image.fromarray(rgb).save(imgs / "same.png")
  Image.fromarray(rgb[::-1]).save(imgs / "same.jpg", "JPEG")
  Image.fromarray(rgb[:, ::-1]).save(imgs / "more" / "same.png")
  Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)).save(imgs / "grey16.png")
  (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, "-m", "ovs_jax.predict", "--clip=random:tiny",
                      f"--images={imgs},{imgs / 'more'}", "--classes=sky; grass", "--templates=plain",
                      "--short_side=32", f"--out={out}", "--skip_bad"], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert [s["input"] for s in summary["skipped"]] == [str(imgs / "broken.png")]
  assert "cannot decode image" in summary["skipped"][0]["reason"]
  assert "skipped 1 of 5 images" in r.stderr and "broken.png: " in r.stderr
  labels = sorted(p.name for p in out.glob("*_label.png"))
  assert labels == ["grey16_label.png", "more__same.png_label.png", "same.jpg_label.png",
                    "same.png_label.png"], labels
  assert len(summary["predicted"]) == 4
  assert len({o for p in summary["predicted"] for o in p["outputs"]}) == 8  # none overwritten
