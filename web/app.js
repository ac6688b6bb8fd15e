// MedVision web page: extraction with boxes over the page, custom analysis, benchmarks.
// Plain DOM code; values from documents are only ever set through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["diagnoses", "medications", "labs", "vitals", "allergies", "procedures", "immunizations", "followups"];
const state = { extraction: null, fhir: null, imageUrl: null, fileName: "document", page: 1 };

function apiHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...apiHeaders(), ...(options.headers || {}) } });
  let body = null;
  const text = await res.text();
  try { body = JSON.parse(text); } catch (_) { body = { detail: text }; }
  if (!res.ok) {
    const msg = (body && (body.detail || (body.error && body.error.message))) || res.statusText;
    const retry = res.headers.get("Retry-After");
    throw new Error(`${res.status}: ${msg}${retry ? ` (retry in ${retry} s)` : ""}`);
  }
  return body;
}

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// ---- tabs ------------------------------------------------------------------------------------------
function selectTab(button) {
  for (const b of document.querySelectorAll('nav [role="tab"]')) {
    const on = b === button;
    b.setAttribute("aria-selected", on ? "true" : "false");
    $(b.dataset.panel).hidden = !on;
  }
  if (button.id === "tab-bench") loadBenchmarks();
}

// ---- health ----------------------------------------------------------------------------------------
async function loadHealth() {
  const h = $("health");
  try {
    const j = await api("/health");
    h.textContent = `${j.backend} backend · ${j.model}${j.chat_model && j.chat_model !== j.model ? " · chat " + j.chat_model : ""} · v${j.version}` +
      (j.gpu_available ? ` · ${j.gpu_name}` : " · CPU");
    h.className = "health ok";
  } catch (e) {
    h.textContent = "server unreachable";
    h.className = "health bad";
  }
}

// ---- extraction ------------------------------------------------------------------------------------
function itemLabel(section, it) {
  const join = (...xs) => xs.filter((x) => x !== undefined && x !== null && x !== "").join(" ");
  switch (section) {
    case "diagnoses": return [it.text, join(it.icd10 ? `(${it.icd10})` : "", it.status || "")];
    case "medications": return [it.name, join(it.strength, it.dose, it.unit, it.form, it.route, it.frequency, it.prn ? "PRN" : "", it.duration)];
    case "labs": return [it.test, join(it.value, it.unit, it.flag ? `[${it.flag}]` : "", it.reference_range ? `ref ${it.reference_range}` : "")];
    case "vitals": return [it.name, join(it.value, it.unit)];
    case "allergies": return [it.substance, join(it.reaction, it.severity)];
    case "procedures": return [it.name, join(it.date, it.impression || it.findings)];
    case "immunizations": return [it.vaccine, join(it.date, it.dose_number ? `dose ${it.dose_number}` : "")];
    case "followups": return [it.text, it.when || ""];
    default: return [JSON.stringify(it), ""];
  }
}

function collectFields(ex) {
  // Every shown field: section, label, detail, page, box.
  const rows = [];
  for (const key of ["patient", "encounter"]) {
    const obj = ex[key];
    if (!obj) continue;
    const prov = obj.provenance || {};
    for (const [name, value] of Object.entries(obj)) {
      if (name === "provenance" || value === null || value === undefined) continue;
      const box = normBox(prov.fields && prov.fields[name]);
      rows.push({ section: key, label: name.replace(/_/g, " "), detail: String(value), page: prov.page || 1, box, confidence: prov.confidence });
    }
  }
  for (const section of SECTIONS) {
    for (const it of ex[section] || []) {
      const prov = it.provenance || {};
      const [label, detail] = itemLabel(section, it);
      rows.push({ section, label, detail, page: prov.page || 1, box: normBox(prov.bbox), confidence: prov.confidence, verified: prov.verified });
    }
  }
  return rows;
}

// Boxes are [x0, y0, x1, y1] in page pixels (docs/schema.json); objects with x0..y1 are accepted too.
function normBox(b) {
  if (!b) return null;
  if (Array.isArray(b)) return b.length === 4 ? { x0: b[0], y0: b[1], x1: b[2], y1: b[3] } : null;
  return typeof b.x0 === "number" ? b : null;
}

function pageInfo(ex, number) {
  return (ex.pages || []).find((p) => p.number === number) || null;
}

function drawBoxes() {
  const ex = state.extraction;
  const boxes = $("boxes");
  boxes.replaceChildren();
  if (!ex) return;
  const info = pageInfo(ex, state.page);
  if (!info || !info.width || !info.height) return;
  let i = 0;
  for (const f of collectFields(ex)) {
    const index = i++;
    if (!f.box || f.page !== state.page) continue;
    const b = el("div", { class: `box ${f.section}`, "data-field": String(index), title: `${f.section}: ${f.label}` });
    b.style.left = `${(100 * f.box.x0) / info.width}%`;
    b.style.top = `${(100 * f.box.y0) / info.height}%`;
    b.style.width = `${(100 * (f.box.x1 - f.box.x0)) / info.width}%`;
    b.style.height = `${(100 * (f.box.y1 - f.box.y0)) / info.height}%`;
    boxes.appendChild(b);
  }
}

function highlight(index, on) {
  for (const b of document.querySelectorAll(`.box[data-field="${index}"]`)) b.classList.toggle("active", on);
  for (const r of document.querySelectorAll(`tr.field[data-field="${index}"]`)) r.classList.toggle("active", on);
}

function renderFields() {
  const ex = state.extraction;
  const container = $("fields");
  container.replaceChildren();
  const rows = collectFields(ex);
  let current = null;
  let tbody = null;
  rows.forEach((f, index) => {
    if (f.section !== current) {
      current = f.section;
      container.appendChild(el("h3", {}, f.section));
      const table = el("table", { "data-section": f.section });
      tbody = el("tbody");
      table.appendChild(tbody);
      container.appendChild(table);
    }
    const tr = el("tr", { class: "field", "data-field": String(index), "data-section": f.section });
    tr.appendChild(el("td", { class: "label" }, f.label));
    tr.appendChild(el("td", { class: "detail" }, f.detail));
    const conf = f.confidence !== undefined && f.confidence !== null ? `${Math.round(100 * f.confidence)}%` : "";
    tr.appendChild(el("td", { class: "conf" }, `${conf}${f.verified === true ? " ✓" : ""}${f.box ? "" : " (no box)"} p${f.page}`));
    tr.addEventListener("mouseenter", () => highlight(index, true));
    tr.addEventListener("mouseleave", () => highlight(index, false));
    tr.addEventListener("click", () => {
      if (f.page !== state.page && pageInfo(ex, f.page)) { state.page = f.page; $("page-picker").value = String(f.page); drawBoxes(); }
      const b = document.querySelector(`.box[data-field="${index}"]`);
      if (b) b.scrollIntoView({ block: "center", behavior: "smooth" });
    });
    tbody.appendChild(tr);
  });
  if (!rows.length) container.appendChild(el("p", { class: "note" }, "No fields were found in this document."));
}

function renderResults(body, file) {
  state.extraction = body.extraction;
  state.fhir = body.fhir || null;
  state.fileName = (file.name || "document").replace(/\.[^.]*$/, "");
  state.page = (body.extraction.pages && body.extraction.pages[0] && body.extraction.pages[0].number) || 1;
  $("results").hidden = false;
  $("doc-type").textContent = body.extraction.document_type.replace(/_/g, " ");
  $("latency").textContent = `${body.inference_latency_seconds.toFixed(2)} s · ${body.model_info.backend}`;
  $("download-fhir").disabled = !state.fhir;
  const picker = $("page-picker");
  picker.replaceChildren();
  for (const p of body.extraction.pages || []) picker.appendChild(el("option", { value: String(p.number) }, String(p.number)));
  $("page-picker-label").hidden = (body.extraction.pages || []).length < 2;
  // Browsers draw PNG, JPEG, WebP and BMP themselves; the boxes need the page image.
  const viewable = /^image\/(png|jpeg|webp|bmp|gif)$/.test(file.type);
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = viewable ? URL.createObjectURL(file) : null;
  const img = $("page-image");
  $("page").hidden = !viewable;
  $("preview-note").hidden = viewable;
  $("preview-note").textContent = viewable ? "" : "This browser cannot show this file type; the fields are listed with their page numbers.";
  if (viewable) img.src = state.imageUrl;
  renderFields();
  drawBoxes();
}

function download(name, object, type) {
  const blob = new Blob([JSON.stringify(object, null, 2)], { type });
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function runExtract(ev) {
  ev.preventDefault();
  const file = $("extract-file").files[0];
  if (!file) return;
  const fd = new FormData();
  fd.append("file", file);
  const params = new URLSearchParams();
  if ($("extract-fhir").checked) params.set("format", "fhir");
  const pages = $("extract-pages").value.trim();
  if (pages) params.set("pages", pages);
  $("extract-run").disabled = true;
  setStatus("extract-status", "Extracting…");
  try {
    const body = await api("/extract" + (params.toString() ? "?" + params : ""), { method: "POST", body: fd });
    renderResults(body, file);
    setStatus("extract-status", `Done: ${collectFields(body.extraction).length} fields.`);
  } catch (e) {
    setStatus("extract-status", e.message, true);
  } finally {
    $("extract-run").disabled = false;
  }
}

// ---- custom analysis -------------------------------------------------------------------------------
async function runAnalyze(ev) {
  ev.preventDefault();
  const file = $("analyze-file").files[0];
  if (!file) return;
  const fd = new FormData();
  fd.append("file", file);
  fd.append("prompt", $("analyze-prompt").value);
  const max = parseInt($("analyze-max").value, 10);
  $("analyze-run").disabled = true;
  $("analyze-answer").hidden = true;
  setStatus("analyze-status", "Thinking…");
  try {
    const body = await api(`/analyze?max_tokens=${Number.isFinite(max) ? max : 512}`, { method: "POST", body: fd });
    $("analyze-answer").textContent = body.answer;
    $("analyze-answer").hidden = false;
    setStatus("analyze-status", `${body.inference_latency_seconds.toFixed(2)} s · ${body.usage.completion_tokens} tokens (${body.finish_reason})`);
  } catch (e) {
    setStatus("analyze-status", e.message, true);
  } finally {
    $("analyze-run").disabled = false;
  }
}

// ---- benchmarks ------------------------------------------------------------------------------------
async function loadBenchmarks() {
  setStatus("bench-status", "Loading…");
  const list = $("bench-list");
  try {
    const body = await api("/benchmark");
    list.replaceChildren();
    for (const [name, content] of Object.entries(body.benchmarks)) {
      const d = el("details", { class: "bench", "data-name": name });
      d.appendChild(el("summary", {}, name));
      d.appendChild(el("pre", {}, JSON.stringify(content, null, 2)));
      list.appendChild(d);
    }
    const errors = Object.keys(body.errors || {});
    setStatus("bench-status", `${body.count} benchmark files${errors.length ? `; unreadable: ${errors.join(", ")}` : ""}.`);
  } catch (e) {
    setStatus("bench-status", e.message, true);
  }
}

// ---- wiring ----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("medvision-api-key");
  if (saved) $("api-key").value = saved;
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("medvision-api-key", $("api-key").value.trim()); loadHealth(); });
  for (const b of document.querySelectorAll('nav [role="tab"]')) b.addEventListener("click", () => selectTab(b));
  $("extract-form").addEventListener("submit", runExtract);
  $("analyze-form").addEventListener("submit", runAnalyze);
  $("bench-refresh").addEventListener("click", loadBenchmarks);
  $("page-picker").addEventListener("change", () => { state.page = parseInt($("page-picker").value, 10); drawBoxes(); });
  $("download-json").addEventListener("click", () => state.extraction && download(`${state.fileName}.extraction.json`, state.extraction, "application/json"));
  $("download-fhir").addEventListener("click", () => state.fhir && download(`${state.fileName}.fhir.json`, state.fhir, "application/fhir+json"));
  loadHealth();
});
