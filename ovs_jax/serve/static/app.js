// The page's logic: choose an image, a class list, POST /api/segment, show the JSON result.
// Every refusal arrives as {"error": message} and is shown as is: the server owns validation.
"use strict";
const $ = (id) => document.getElementById(id);
let chosen = null;   // {blob, name}: the image to segment
let typed = "";      // the user's own classes, kept while a preset's list is shown
let hoverMap = null; // {w, h, data, names}: class id per pixel, decoded from the result's id PNG

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON: a proxy's page, a dropped connection */ }
  if (!response.ok) throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function choose(blob, name) {
  chosen = {blob, name};
  $("preview").src = URL.createObjectURL(blob);
  $("preview").hidden = false;
  $("drop-text").textContent = name;
  showError("");
}

async function vocabularyChanged() {
  const name = $("vocab").value, box = $("classes");
  if (!name) { box.value = typed; box.disabled = false; return; }
  if (!box.disabled) typed = box.value;
  box.disabled = true;  // a preset is sent by name; its list is shown for reading
  const vocabulary = await getJSON(`/api/vocabularies/${encodeURIComponent(name)}`);
  box.value = vocabulary.classes.map((names) => names.join(", ")).join("\n");
}

function decodeHoverMap(url, w, h, names) {
  const img = new Image();
  img.onload = () => {
    const canvas = document.createElement("canvas");
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    hoverMap = {w, h, data: ctx.getImageData(0, 0, w, h).data, names};
  };
  img.src = url;
}

function showResult(res, stem) {
  $("overlay").src = res.overlay;
  $("download-overlay").href = res.overlay;
  $("download-overlay").download = `${stem}_overlay.png`;
  $("download-label").href = res.label;
  $("download-label").download = `${stem}_label.png`;
  $("legend").replaceChildren(...res.classes.map((c) => {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.innerHTML = '<span class="swatch"></span><span class="name"></span><span class="share"></span>';
    li.querySelector(".swatch").style.background = c.color;
    li.querySelector(".name").textContent = c.name;
    li.querySelector(".share").textContent = `${(100 * c.share).toFixed(1)}%`;
    return li;
  }));
  hoverMap = null;
  decodeHoverMap(res.ids, res.width, res.height, res.names);
  $("result").hidden = false;
  $("status").textContent = `${res.width} × ${res.height} px, ${res.classes.length} of ${res.names.length} ` +
    `classes present, ${res.seconds} s`;
}

async function run() {
  showError("");
  const form = new FormData();
  if (chosen) form.append("image", chosen.blob, chosen.name);
  if ($("vocab").value) form.append("vocab", $("vocab").value);
  else form.append("classes", $("classes").value);
  $("run").disabled = true;
  $("status").textContent = "segmenting… (a new class list or image size compiles first: seconds)";
  try {
    const res = await getJSON("/api/segment", {method: "POST", body: form});
    showResult(res, chosen.name.replace(/\.[^.]*$/, ""));
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  } finally {
    $("run").disabled = false;
  }
}

$("overlay").addEventListener("mousemove", (e) => {
  if (!hoverMap) return;
  const r = e.target.getBoundingClientRect();
  const x = Math.min(hoverMap.w - 1, Math.max(0, Math.floor((e.clientX - r.left) * hoverMap.w / r.width)));
  const y = Math.min(hoverMap.h - 1, Math.max(0, Math.floor((e.clientY - r.top) * hoverMap.h / r.height)));
  const k = 4 * (y * hoverMap.w + x), id = hoverMap.data[k] + 256 * hoverMap.data[k + 1];
  $("hover").textContent = `(${x}, ${y}): ${hoverMap.names[id]}`;
  for (const li of $("legend").children) li.classList.toggle("active", Number(li.dataset.id) === id);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) choose(e.target.files[0], e.target.files[0].name); });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0], e.dataTransfer.files[0].name);
});
$("vocab").addEventListener("change", () => vocabularyChanged().catch((e) => showError(e.message)));
$("run").addEventListener("click", run);

(async () => {
  const info = await getJSON("/api/info");
  $("model").textContent = info.model;
  for (const v of info.vocabularies) $("vocab").add(new Option(`${v.name} (${v.classes} classes)`, v.name));
  const l = info.limits;
  $("limits").textContent = `Limits: ${l.max_upload_mb} MB, ${l.max_megapixels} megapixels, ${l.max_classes} classes.`;
  for (let i = 0; i < info.demo_images; i++) {
    const img = new Image();
    img.src = `/api/demo/${i}.png`;
    img.alt = `demo image ${i}`;
    img.addEventListener("click", async () => choose(await (await fetch(img.src)).blob(), `demo_${i}.png`));
    $("demos").append(img);
  }
  if (info.default_vocabulary) { $("vocab").value = info.default_vocabulary; await vocabularyChanged(); }
})().catch((e) => showError(`cannot reach the server: ${e.message}`));
