"""The web app (`python -m ovs_jax.serve`): its JSON API through Starlette's TestClient (results,
refusals, the wait queue) and the page in a real headless Chromium against the server on localhost.

The browser test needs Debian's chromium + chromium-driver (scripts/install_browser.sh) and skips,
saying so, without them. OVS_JAX_SCREENSHOT=path runs it with the demo CLIP and saves the page
with a result there (docs/images/serve.png)."""
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the web app needs the serve extra: pip install -e '.[serve]'")
from starlette.testclient import TestClient  # noqa: E402

from ovs_jax import visualize  # noqa: E402
from ovs_jax.serve.app import create_app  # noqa: E402
from ovs_jax.serve.service import Limits, SegmentService, load_model  # noqa: E402

CLASSES = "sky, blue sky; grass; cat"
SETTINGS = dict(short_side=64)


def png_bytes(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def decode(url: str) -> np.ndarray:
  """A result's PNG data URL -> its pixels."""
  assert url.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def scene(h=70, w=90) -> np.ndarray:
  """Blue sky over green grass with some noise: an odd, non-square size."""
  rng = np.random.RandomState(0)
  image = np.where(np.arange(h)[:, None, None] < h // 2, [90, 150, 230], [60, 160, 50])
  return np.clip(image + rng.randint(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
  return load_model(clip="random:tiny", cache_dir=None)


def client(model, **limits):
  name, make_model = model
  return TestClient(create_app(SegmentService(name, make_model, SETTINGS, Limits(**limits))))


def post(c, data=b"", name="scene.png", **form):
  files = {"image": (name, data, "image/png")} if data is not None else None
  return c.post("/api/segment", files=files, data=form)


def test_upload_gives_overlay_label_map_and_legend_at_the_input_size(model):
  image = scene()
  r = post(client(model), png_bytes(image), classes=CLASSES)
  assert r.status_code == 200, r.text
  res = r.json()
  assert (res["height"], res["width"]) == image.shape[:2] and res["names"] == ["sky", "grass", "cat"]
  label = decode(res["label"])
  assert label.shape == image.shape[:2] and label.max() < 3
  # the hover map encodes the same ids; the overlay is the label map blended into the image
  ids = decode(res["ids"]).astype(int)
  np.testing.assert_array_equal(ids[..., 0] + 256 * ids[..., 1], label)
  np.testing.assert_array_equal(decode(res["overlay"]), visualize.blend(image, label, 3))
  # the legend: present classes only, by pixel share, shares counted on the label map
  present, counts = np.unique(label, return_counts=True)
  shares = dict(zip(present.tolist(), (counts / label.size).tolist()))
  assert [c["id"] for c in res["classes"]] == sorted(shares, key=shares.get, reverse=True)
  for c in res["classes"]:
    assert c["name"] == res["names"][c["id"]] and c["share"] == pytest.approx(shares[c["id"]])
    assert c["color"] == "#%02x%02x%02x" % tuple(visualize.palette(3)[c["id"]])


def test_a_preset_by_name_and_synonyms_as_the_predict_cli_reads_them(model):
  c = client(model)
  r = post(c, IMAGE, vocab="voc_20")
  assert r.status_code == 200, r.text
  assert len(r.json()["names"]) == 20 and r.json()["names"][0] == "aeroplane"
  # typed classes win over a preset; ';' and newlines separate classes, ',' synonyms
  r = post(c, IMAGE, classes="sofa, couch\nlamp; cat", vocab="voc_20")
  assert r.json()["names"] == ["sofa", "lamp", "cat"]


IMAGE = png_bytes(scene())


@pytest.mark.parametrize("data, name, form, status, message", [
    pytest.param(b"hello", "notes.txt", {"classes": "cat"}, 415,
                 "notes.txt: not an image this app can read", id="not-an-image"),
    pytest.param(IMAGE[:60], "cut.png", {"classes": "cat"}, 415, "cut.png: cannot decode image",
                 id="truncated"),
    pytest.param(b"", "empty.png", {"classes": "cat"}, 400, "empty.png: empty file (0 bytes)", id="empty-file"),
    pytest.param(None, "", {"classes": "cat"}, 400, "no image", id="no-file"),
    pytest.param(IMAGE, "scene.png", {"classes": " \n "}, 400, "no class names", id="blank-classes"),
    pytest.param(IMAGE, "scene.png", {}, 400, "no class names", id="no-classes"),
    pytest.param(IMAGE, "scene.png", {"classes": "cat;;dog"}, 400, "class 1 is empty", id="empty-class"),
    pytest.param(IMAGE, "scene.png", {"classes": "cat; dog, cat"}, 400, "'cat' names both class 0",
                 id="name-in-two-classes"),
    pytest.param(IMAGE, "scene.png", {"vocab": "ade30k"}, 400, "unknown vocabulary 'ade30k'",
                 id="unknown-preset"),
    pytest.param(IMAGE, "scene.png", {"classes": "a; b; c; d; e"}, 400,
                 "5 classes; this server takes at most 4", id="too-many-classes"),
    pytest.param(png_bytes(scene(120, 120)), "big.png", {"classes": "cat"}, 413,
                 "big.png: 120 x 120 pixels (0.0144 MP) is over this server's limit of 0.01 MP",
                 id="too-many-pixels"),
])
def test_bad_requests_get_one_clear_message(model, data, name, form, status, message):
  r = post(client(model, max_classes=4, max_pixels=100 * 100), data, name, **form)
  assert r.status_code == status and message in r.json()["error"], r.text
  assert "Traceback" not in r.text


def test_uploads_over_the_limit_are_refused_before_decoding(model):
  c = client(model, max_upload_bytes=2**20)
  noise = np.random.RandomState(0).randint(0, 255, (700, 700, 3), np.uint8)  # ~1.4 MB as PNG
  r = post(c, png_bytes(noise), classes="cat")
  assert r.status_code == 413 and "over this server's limit of 1 MB" in r.json()["error"]
  # no Content-Length (a chunked upload): the bytes themselves are measured
  body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"n.png\"\r\n\r\n"
  body += png_bytes(noise) + b"\r\n--b--\r\n"
  r = c.post("/api/segment", content=iter([body]),
             headers={"content-type": "multipart/form-data; boundary=b"})
  assert r.status_code == 413 and "n.png: 1.4" in r.json()["error"], r.text


def test_a_failure_inside_the_model_is_a_sentence_not_a_trace(model):
  def broken(vocabulary):
    raise RuntimeError("device lost")
  c = TestClient(create_app(SegmentService("broken", broken, SETTINGS)))
  r = post(c, png_bytes(scene()), classes="cat")
  assert r.status_code == 500 and r.json() == {
      "error": "internal error while segmenting (RuntimeError); the server log has the details"}


class SlowSegmenter:
  """Stands in for the model: blocks until released and records how many run at once."""

  def __init__(self):
    self.names, self.release, self.running, self.most = ["cat"], threading.Event(), 0, 0
    self.lock = threading.Lock()

  def __call__(self, image):
    with self.lock:
      self.running += 1
      self.most = max(self.most, self.running)
    self.release.wait(30)
    with self.lock:
      self.running -= 1
    return np.zeros(image.shape[:2], np.int32)


def test_concurrent_requests_queue_behind_one_model_and_overflow_gets_503(model):
  service = SegmentService("slow", None, SETTINGS, Limits(max_waiting=1))
  slow = SlowSegmenter()
  service._segmenter = lambda vocabulary: slow
  c, data, results = TestClient(create_app(service)), png_bytes(scene()), []
  threads = [threading.Thread(target=lambda: results.append(post(c, data, classes="cat")))
             for _ in range(2)]
  for t in threads:
    t.start()
  deadline = time.time() + 30
  while service._admitted < 2 and time.time() < deadline:  # one running, one waiting
    time.sleep(0.01)
  r = post(c, data, classes="cat")
  assert r.status_code == 503 and r.json()["error"].startswith("busy: 2 requests are ahead"), r.text
  slow.release.set()
  for t in threads:
    t.join(30)
  assert [r.status_code for r in results] == [200, 200] and slow.most == 1


def test_parallel_requests_share_one_compiled_segmenter(model):
  name, make_model = model
  service = SegmentService(name, make_model, SETTINGS)
  c, data = TestClient(create_app(service)), png_bytes(scene())
  results = []
  threads = [threading.Thread(target=lambda: results.append(post(c, data, classes=CLASSES)))
             for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(120)
  assert [r.status_code for r in results] == [200] * 3
  assert len({r.json()["label"] for r in results}) == 1 and len(service._segmenters) == 1


def test_a_checkpoint_loads_once_for_every_vocabulary(tmp_path, monkeypatch):
  import jax
  from ovs_jax.interchange import clip_weights
  from ovs_jax.methods.maskclip import clip_from_spec
  clip_weights.save_orbax_clip(clip_from_spec("random:tiny"), tmp_path / "clip")
  (tmp_path / "config.json").write_text(json.dumps({"method": "maskclip", "clip": "clip"}))
  loads = []
  real = clip_weights.load_clip
  monkeypatch.setattr(clip_weights, "load_clip", lambda *a, **k: loads.append(a) or real(*a, **k))
  name, make_model = load_model(checkpoint=tmp_path, cache_dir=None)
  a, b = make_model([["cat"], ["dog"]]), make_model([["sky"]])
  assert len(loads) == 1  # and both use the very same weight arrays
  assert all(x is y for x, y in zip(jax.tree.leaves(a.params[0]), jax.tree.leaves(b.params[0])))
  assert (a.class_names, b.class_names) == (["cat", "dog"], ["sky"])


def test_the_command_refuses_a_missing_model_or_settings_it_cannot_take_in_one_line():
  def serve(*args):
    r = subprocess.run([sys.executable, "-m", "ovs_jax.serve", *args], capture_output=True, text=True)
    return r.returncode, r.stderr.strip().splitlines()[-1]
  assert serve("--port=1") == (2, "error: give one model: --checkpoint=WORKDIR, --clip=WEIGHTS or "
                                  "--demo (with --demo, --clip replaces the demo CLIP)")
  # before listening: a window the ViT's 16-pixel patches do not divide
  assert serve("--clip=random:tiny", "--mode=slide", "--window=100", "--stride=50", "--port=1") == (
      2, "error: window=100 is not a multiple of the model's input multiple 16")


# --- the page in a real browser ----------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """`python -m ovs_jax.serve` on a free localhost port, the random tiny CLIP (the demo CLIP when
  taking the screenshot); yields its URL."""
  port = free_port()
  model = (["--demo", "--short_side=160"] if os.environ.get("OVS_JAX_SCREENSHOT")
           else ["--clip=random:tiny", "--templates=plain", "--short_side=64"])
  log = tmp_path_factory.mktemp("serve") / "server.log"
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, "-m", "ovs_jax.serve", *model, f"--port={port}"],
                            stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 300
    while True:
      try:
        urllib.request.urlopen(url + "/api/info", timeout=2)
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    yield url
  finally:
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def browser():
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no Chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver, "
                "or scripts/install_browser.sh)")
  webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
  yield driver
  driver.quit()


def submit(driver, path, classes):
  """Choose the file, type the classes, press Segment; -> the error text ('' on success)."""
  from selenium.webdriver.support.ui import Select, WebDriverWait
  driver.execute_script("document.getElementById('error').hidden = true;"
                        "document.getElementById('result').hidden = true;")
  driver.find_element("id", "file").send_keys(str(path))
  Select(driver.find_element("id", "vocab")).select_by_value("")
  box = driver.find_element("id", "classes")
  box.clear()
  box.send_keys(classes)
  driver.find_element("id", "run").click()
  WebDriverWait(driver, 120).until(lambda d: d.find_element("id", "error").is_displayed()
                                   or d.find_element("id", "result").is_displayed())
  error = driver.find_element("id", "error")
  return error.text if error.is_displayed() else ""


def test_the_page_segments_an_upload_and_shows_refusals(browser, server, tmp_path):
  # (browser before server: without a browser the test skips before starting the server)
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.support.ui import WebDriverWait
  driver = browser
  driver.get(server)
  WebDriverWait(driver, 30).until(lambda d: len(d.find_elements("css selector", "#vocab option")) > 5)
  image = scene()
  Image.fromarray(image).save(tmp_path / "scene.png")
  assert submit(driver, tmp_path / "scene.png", "sky, blue sky\ngrass; cat") == ""
  names = ["sky", "grass", "cat"]
  label = decode(driver.find_element("id", "download-label").get_attribute("href"))
  assert label.shape == image.shape[:2]
  legend = [li.find_element("class name", "name").text
            for li in driver.find_elements("css selector", "#legend li")]
  assert sorted(legend) == sorted(names[i] for i in np.unique(label))
  size = driver.execute_script("const i = document.getElementById('overlay');"
                               "return [i.naturalHeight, i.naturalWidth];")
  assert tuple(size) == image.shape[:2]
  assert driver.find_element("id", "download-label").get_attribute("download") == "scene_label.png"
  overlay_png = decode(driver.find_element("id", "download-overlay").get_attribute("href"))
  assert overlay_png.shape == (*image.shape[:2], 3)
  # hovering reads the pixel's class from the label map
  overlay = driver.find_element("id", "overlay")
  WebDriverWait(driver, 10).until(lambda d: d.execute_script("return hoverMap !== null"))
  ActionChains(driver).move_to_element_with_offset(overlay, -overlay.size["width"] // 4, 0).perform()
  m = re.fullmatch(r"\((\d+), (\d+)\): (.+)", driver.find_element("id", "hover").text)
  assert m, driver.find_element("id", "hover").text
  x, y, name = int(m[1]), int(m[2]), m[3]
  assert name == names[label[y, x]]
  assert driver.find_element("css selector", "#legend li.active .name").text == name
  # refusals appear on the page as the server's sentence
  (tmp_path / "notes.txt").write_text("not a picture")
  assert submit(driver, tmp_path / "notes.txt", "cat").startswith("notes.txt: not an image this app can read")
  assert submit(driver, tmp_path / "scene.png", "").startswith("no class names")
  Image.new("RGB", (5000, 5000), (90, 150, 230)).save(tmp_path / "large.png")  # 84 kB, 25 MP
  assert "large.png: 5000 x 5000 pixels (25 MP) is over this server's limit of 16.8 MP" in submit(
      driver, tmp_path / "large.png", "cat")
  # a demo scene becomes the chosen image
  driver.find_element("css selector", "#demos img").click()
  WebDriverWait(driver, 60).until(lambda d: d.find_element("id", "drop-text").text == "demo_0.png")
  if os.environ.get("OVS_JAX_SCREENSHOT"):
    screenshot(driver)


def screenshot(driver):
  """The page with a demo scene segmented over the demo vocabulary, saved for docs/serve.md."""
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.support.ui import Select, WebDriverWait
  driver.execute_script("document.getElementById('error').hidden = true;")
  Select(driver.find_element("id", "vocab")).select_by_value("demo")
  driver.find_element("id", "run").click()
  WebDriverWait(driver, 120).until(
      lambda d: d.find_element("id", "download-label").get_attribute("download") == "demo_0_label.png")
  overlay = driver.find_element("id", "overlay")
  ActionChains(driver).move_to_element_with_offset(overlay, 0, overlay.size["height"] // 4).perform()
  driver.save_screenshot(os.environ["OVS_JAX_SCREENSHOT"])
