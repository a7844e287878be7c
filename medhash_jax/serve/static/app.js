// The search page: plain JS, no build step. Talks to /api/info and /api/search.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let chosen = null;

function setStatus(text) { $("status").textContent = text; }
function showError(text) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
}

async function loadInfo() {
  try {
    const r = await fetch("/api/info");
    info = await r.json();
    $("model-info").textContent =
      `${info.method.toUpperCase()} · ${info.num_bits} bits · ${info.num_cases} cases · ` +
      `${info.dataset} (${info.class_names.join(", ")}) · model step ${info.model_step}`;
    $("k-input").max = info.num_cases;
    $("k-input").value = Math.min(info.server.default_k, info.num_cases);
  } catch (err) {
    $("model-info").textContent = "could not load model information";
  }
}

function choose(file) {
  if (!file) return;
  chosen = file;
  $("drop-text").textContent = file.name;
  $("search-button").disabled = false;
  // Browsers cannot show DICOM: hide the preview when it does not load.
  const preview = $("query-preview");
  preview.parentElement.hidden = false;
  preview.onerror = () => { preview.parentElement.hidden = true; };
  preview.src = URL.createObjectURL(file);
  $("query-view").hidden = false;
  $("gradcam-figure").hidden = true;
  search();
}

function hitCard(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.id = hit.id;
  const img = document.createElement("img");
  img.src = hit.thumbnail;
  img.alt = hit.name;
  img.loading = "lazy";
  const head = document.createElement("div");
  head.innerHTML = `<span class="rank"></span>`;
  head.querySelector(".rank").textContent = `#${hit.rank}`;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = hit.name;
  const labels = document.createElement("div");
  labels.className = "labels";
  const list = hit.labels.length ? hit.labels : ["no label"];
  for (const l of list) {
    const s = document.createElement("span");
    s.className = hit.labels.length ? "label" : "label none";
    s.textContent = l;
    labels.appendChild(s);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `distance ${hit.distance} · tie group ${hit.tie_group}`;
  meta.title = `${hit.tie_group} case(s) in the database are at Hamming distance ${hit.distance}`;
  li.append(img, head, name, labels, meta);
  return li;
}

async function search() {
  if (!chosen) return;
  showError("");
  $("search-button").disabled = true;
  setStatus("searching…");
  const body = new FormData();
  body.append("file", chosen);
  body.append("k", $("k-input").value);
  if (info && info.explain) body.append("explain", "1");
  try {
    const r = await fetch("/api/search", { method: "POST", body });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    const g = $("gallery");
    g.replaceChildren(...data.hits.map(hitCard));
    $("results-title").hidden = false;
    if (data.gradcam) {
      $("gradcam").src = data.gradcam;
      $("gradcam-figure").hidden = false;
    }
    const t = data.timing_ms;
    setStatus(`${data.hits.length} of ${data.num_cases} cases (${data.query.type.toUpperCase()} ` +
      `${data.query.width}×${data.query.height}) in ${t.total.toFixed(0)} ms`);
    g.dataset.state = "done";
  } catch (err) {
    $("gallery").replaceChildren();
    $("gallery").dataset.state = "error";
    setStatus("");
    showError(`Search failed: ${err.message}`);
  } finally {
    $("search-button").disabled = false;
  }
}

$("file-input").addEventListener("change", (e) => choose(e.target.files[0]));
$("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
const dz = $("drop-zone");
for (const ev of ["dragenter", "dragover"]) {
  dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.add("over"); });
}
for (const ev of ["dragleave", "drop"]) {
  dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.remove("over"); });
}
dz.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
loadInfo();
