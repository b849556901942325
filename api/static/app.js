// FlexBin dashboard: plain JavaScript, no build step, no network but this API.
// Routes (location.hash): #/jobs, #/job/<id>, #/upload, #/tryit[/<checkpoint id>].
// The API key lives in sessionStorage only (gone when the tab closes).
"use strict";

const KEY_STORAGE = "flexbin.apiKey";
const RECENT_STORAGE = "flexbin.recent"; // ids uploaded in this tab: {models: [...], datasets: [...]}
const POLL_JOBS_MS = 1500;
const POLL_JOB_ACTIVE_MS = 1000;
const POLL_JOB_IDLE_MS = 5000;
const ACTIVE = new Set(["queued", "running"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------------------------------------
// DOM helpers (text nodes only: names and server messages are never parsed as HTML)
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const c of children.flat()) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  for (const c of children.flat()) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
}
function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}
function toast(message) {
  const el = $("#toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 3500);
}

// ---------------------------------------------------------------------------------------------
// Formatting
const short = (id) => (id ? String(id).slice(0, 8) : "—");
const fmt = (x, digits = 3) => (x == null || Number.isNaN(x) ? "—" : Number(x).toFixed(digits));
function fmtRatio(x) { return x == null ? "—" : `×${Number(x).toFixed(x >= 10 ? 1 : 2)}`; }
function fmtMs(x) { return x == null ? "—" : `${Number(x).toFixed(x >= 10 ? 1 : 2)} ms`; }

// A job with deploy_format openvino-int8 judges its target on each step's int8 file: its MR⁻² and
// latency are the ones the plot shows (null where the int8 file could not be made).
function judgesInt8(job) { return (job.config || {}).deploy_format === "openvino-int8"; }
function judged(job, st) {
  if (!judgesInt8(job)) return { miss_rate: st.miss_rate, latency_ms: st.latency_ms };
  return st.int8 ? { miss_rate: st.int8.miss_rate, latency_ms: st.int8.latency_ms } : { miss_rate: null, latency_ms: null };
}
// Which convs a step's int8 file quantizes, and with int8_after_1bit "auto" the file it did not keep.
function int8Scope(int8) {
  const scope = int8.after_1bit ? "int8 on every other conv" : "int8 on the other convs except those a 1-bit conv feeds";
  const other = (int8.variants || []).find((v) => !v.kept);
  return other ? `${scope}; kept for its MR⁻² on the training images (${fmt(other.calibration_miss_rate)} for the other `
    + `file, which scored ${fmt(other.miss_rate)} on validation)` : scope;
}
function withInt8(asTrained, int8Value, format, int8) {
  return int8Value == null ? asTrained
    : [asTrained, h("span", { class: "int8", title: `its openvino-int8 file, as the job measured it (${int8Scope(int8)})` },
      ` · int8 ${format(int8Value)}`)];
}
function fmtDuration(sec) {
  if (sec == null || !Number.isFinite(sec)) return "—";
  sec = Math.max(0, Math.round(sec));
  const hh = Math.floor(sec / 3600), mm = Math.floor((sec % 3600) / 60), ss = sec % 60;
  if (hh) return `${hh}h ${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m ${String(ss).padStart(2, "0")}s`;
  return `${ss}s`;
}
function parseTime(t) {
  if (!t) return null;
  // The API sends timezone-aware ISO times; treat any without an offset as UTC.
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(t) ? t : `${t}Z`);
}
function fmtTime(t) {
  const d = parseTime(t);
  if (!d) return "—";
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}
function fmtBytes(n) {
  if (n == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtTarget(target) {
  if (!target) return "—";
  if (target.min_compression_ratio != null) return `ratio ≥ ${target.min_compression_ratio}`;
  if (target.max_miss_rate_increase != null) {
    return `ΔMR⁻² ≤ ${target.max_miss_rate_increase}` + (target.patience ? ` (patience ${target.patience})` : "");
  }
  if (target.max_latency_ms != null) return `latency ≤ ${target.max_latency_ms} ms`;
  if (target.min_speedup != null) return `speed-up ≥ ×${target.min_speedup}`;
  return JSON.stringify(target);
}

// ---------------------------------------------------------------------------------------------
// API access
const auth = {
  get key() { return sessionStorage.getItem(KEY_STORAGE); },
  set key(v) { if (v) sessionStorage.setItem(KEY_STORAGE, v); else sessionStorage.removeItem(KEY_STORAGE); },
};

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, { method = "GET", json, form, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${auth.key}` };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let res;
  try {
    res = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, `the API does not answer (${err.message})`);
  }
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try {
      const data = await res.json();
      if (typeof data.detail === "string") detail = data.detail;
      else if (data.detail !== undefined) detail = JSON.stringify(data.detail);
    } catch { /* not JSON: keep the status line */ }
    if (res.status === 401 && path !== "/deployment?probe") signOut(detail);
    throw new ApiError(res.status, detail);
  }
  if (raw) return res;
  return res.status === 204 ? null : res.json();
}

// Small caches for names shown in lists (models and datasets never change once uploaded).
const nameCache = new Map();
const nameRequests = new Map(); // key -> the request in flight (one per id, however many cells)
function describe(kind, id, cell) {
  const key = `${kind}:${id}`;
  const render = (text, title) => { cell.textContent = text; cell.title = title; };
  if (nameCache.has(key)) { const v = nameCache.get(key); render(v.text, v.title); return; }
  render(short(id), id);
  if (!nameRequests.has(key)) nameRequests.set(key, api(`/${kind}/${id}`).finally(() => nameRequests.delete(key)));
  nameRequests.get(key).then((row) => {
    const text = row.name || (kind === "models" ? `${row.architecture} ${short(id)}` : `${row.num_images} images ${short(id)}`);
    const title = kind === "models"
      ? `${id}\n${row.architecture}, ${row.num_params.toLocaleString()} params, ${fmtBytes(row.size_bytes)}`
      : `${id}\n${row.num_images} images, ${row.num_boxes} boxes`;
    nameCache.set(key, { text, title });
    render(text, title);
  }).catch(() => {});
}

function recent() {
  try { return JSON.parse(sessionStorage.getItem(RECENT_STORAGE)) || { models: [], datasets: [] }; }
  catch { return { models: [], datasets: [] }; }
}
function remember(kind, id, label) {
  const r = recent();
  r[kind] = [{ id, label }, ...r[kind].filter((x) => x.id !== id)].slice(0, 20);
  sessionStorage.setItem(RECENT_STORAGE, JSON.stringify(r));
}

// ---------------------------------------------------------------------------------------------
// Polling: one timer per page, cleared when the page changes.
let pollTimer = null;
let pollGeneration = 0;
function poll(fn, delayFor) {
  const gen = ++pollGeneration;
  clearTimeout(pollTimer);
  const tick = async () => {
    let delay = 2000;
    try { delay = (await fn()) ?? delayFor; } catch (err) { console.warn(err); delay = delayFor * 2; }
    if (gen === pollGeneration && auth.key) pollTimer = setTimeout(tick, delay);
  };
  tick();
}
function stopPolling() { pollGeneration++; clearTimeout(pollTimer); }

// ---------------------------------------------------------------------------------------------
// Router
const pages = ["signin", "jobs", "job", "upload", "tryit"];
function show(page) {
  for (const p of pages) $(`#page-${p}`).hidden = p !== page;
  document.body.dataset.page = page;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.route === page);
}

function route() {
  stopPolling();
  const signedIn = !!auth.key;
  $("#nav").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
  if (!signedIn) { show("signin"); $("#deployed-badge").hidden = true; $("#signin-key").focus(); return; }
  refreshDeployment();
  const [, page, arg] = (location.hash || "#/jobs").split("/");
  if (page === "job" && arg) { show("job"); openJob(decodeURIComponent(arg)); }
  else if (page === "upload") { show("upload"); openUpload(); }
  else if (page === "tryit") { show("tryit"); openTryIt(arg ? decodeURIComponent(arg) : ""); }
  else { show("jobs"); openJobs(); }
}
window.addEventListener("hashchange", route);

function signOut(reason) {
  auth.key = null;
  stopPolling();
  if (reason) showError($("#signin-error"), reason);
  route();
}

// ---------------------------------------------------------------------------------------------
// Sign-in
$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("#signin-key").value.trim();
  const err = $("#signin-error");
  showError(err, "");
  auth.key = key;
  try {
    await api("/deployment?probe");
    $("#signin-key").value = "";
    if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
    route();
  } catch (e) {
    auth.key = null;
    showError(err, e.message);
  }
});
$("#signout").addEventListener("click", () => { sessionStorage.clear(); signOut(); });

let deployment = { checkpoint_id: null, model_id: null };
async function refreshDeployment() {
  try {
    deployment = await api("/deployment");
    const badge = $("#deployed-badge");
    badge.hidden = false;
    badge.textContent = deployment.checkpoint_id ? `deployed: ${short(deployment.checkpoint_id)}` : "nothing deployed";
    badge.title = deployment.checkpoint_id || "";
  } catch { /* shown elsewhere */ }
  return deployment;
}

// Tables re-render only when their data changed, and never under a pressed mouse button (a
// click must land on the button it started on).
let pointerDown = false;
document.addEventListener("pointerdown", () => { pointerDown = true; });
for (const ev of ["pointerup", "pointercancel"]) document.addEventListener(ev, () => { pointerDown = false; });
window.addEventListener("blur", () => { pointerDown = false; });
function shouldRender(el, data) {
  const key = JSON.stringify(data);
  if (el.dataset.rendered === key || pointerDown) return false;
  el.dataset.rendered = key;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Progress bars
function setBar(el, percent, active) {
  const p = Math.max(0, Math.min(100, percent || 0));
  el.firstElementChild.style.width = `${p}%`;
  el.dataset.percent = p.toFixed(1);
  el.classList.toggle("active", !!active);
  el.setAttribute("role", "progressbar");
  el.setAttribute("aria-valuenow", p.toFixed(1));
}
function jobPercent(job) {
  return job.status === "succeeded" ? 100 : job.progress.percent || 0;
}
function progressCell(job) {
  const bar = h("div", { class: "progress" }, h("div"));
  setBar(bar, jobPercent(job), job.status === "running");
  const p = job.progress;
  let text = `${jobPercent(job).toFixed(0)}%`;
  if (p.total_steps) text += ` · step ${p.step}/${p.total_steps - 1}`;
  if (job.status === "running" && p.eta_seconds != null) text += ` · ETA ${fmtDuration(p.eta_seconds)}`;
  return h("td", { class: "w-progress" }, bar, h("div", { class: "bar-caption" }, text));
}
function statusBadge(status) { return h("span", { class: `status ${status}` }, status); }

// ---------------------------------------------------------------------------------------------
// Jobs list
async function openJobs() {
  fillKnownIds();
  loadUploads();
  poll(refreshJobs, POLL_JOBS_MS);
}

// The tenant's uploads (GET /models, GET /datasets) fill the job form's id suggestions.
const uploadLabels = { models: new Map(), datasets: new Map() };
async function loadUploads() {
  try {
    const [models, datasets] = await Promise.all([api("/models?limit=100"), api("/datasets?limit=100")]);
    for (const m of models.data) {
      knownIds.models.add(m.id);
      uploadLabels.models.set(m.id, m.name || `${m.architecture}, ${m.num_params.toLocaleString()} params`);
    }
    for (const d of datasets.data) {
      knownIds.datasets.add(d.id);
      uploadLabels.datasets.set(d.id, d.name || `${d.num_images} images, ${d.num_boxes} boxes`);
    }
    fillKnownIds();
  } catch { /* suggestions only: the form still takes any id */ }
}

async function cancelJob(id) {
  try {
    const r = await api(`/jobs/${id}/cancel`, { method: "POST" });
    toast(`job ${short(id)}: ${r.status === "cancelled" ? "cancelled" : "cancel requested"}`);
  } catch (e) { toast(e.message); }
}

async function refreshJobs() {
  const tbody = $("#jobs-table tbody");
  let page;
  try {
    page = await api("/jobs?limit=100");
    showError($("#jobs-error"), "");
  } catch (e) {
    showError($("#jobs-error"), e.message);
    return POLL_JOBS_MS * 2;
  }
  $("#jobs-count").textContent = `${page.count} job${page.count === 1 ? "" : "s"}`;
  $("#jobs-empty").hidden = page.data.length > 0;
  if (!shouldRender(tbody, page.data)) return POLL_JOBS_MS;
  tbody.replaceChildren(...page.data.map((job) => {
    const model = h("td"), dataset = h("td");
    describe("models", job.model_id, model);
    describe("datasets", job.dataset_id, dataset);
    const actions = h("td");
    if (ACTIVE.has(job.status) && !job.cancel_requested) {
      actions.append(h("button", { class: "small danger", onclick: () => cancelJob(job.id) }, "Cancel"));
    }
    return h("tr", { "data-job-id": job.id, "data-status": job.status },
      h("td", {}, h("a", { href: `#/job/${job.id}`, title: job.id }, short(job.id))),
      h("td", {}, statusBadge(job.status)),
      model, dataset,
      h("td", {}, fmtTarget(job.target)),
      h("td", {}, job.method === "all_at_once" ? "all at once" : job.order.replace("_", " ")),
      progressCell(job),
      h("td", {}, fmtTime(job.started_at)),
      h("td", {}, fmtTime(job.finished_at)),
      actions);
  }));
  for (const job of page.data) {
    knownIds.models.add(job.model_id);
    knownIds.datasets.add(job.dataset_id);
  }
  fillKnownIds();
  return POLL_JOBS_MS;
}

const knownIds = { models: new Set(), datasets: new Set() };
function fillKnownIds() {
  const r = recent();
  for (const kind of ["models", "datasets"]) {
    const list = $(`#known-${kind}`);
    const labels = new Map([...uploadLabels[kind], ...r[kind].map((x) => [x.id, x.label])]);
    const ids = [...new Set([...r[kind].map((x) => x.id), ...knownIds[kind]])];
    list.replaceChildren(...ids.map((id) => h("option", { value: id }, labels.get(id) || "")));
  }
  const form = $("#job-form");
  const first = (kind) => (r[kind][0] && r[kind][0].id) || [...uploadLabels[kind].keys()][0];
  if (!form.model_id.value && first("models")) form.model_id.value = first("models");
  if (!form.dataset_id.value && first("datasets")) form.dataset_id.value = first("datasets");
}

$("#job-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const err = $(".error", f);
  showError(err, "");
  const body = {
    model_id: f.model_id.value.trim(),
    dataset_id: f.dataset_id.value.trim(),
    target: { [f.target_kind.value]: Number(f.target_value.value) },
    method: f.method.value,
    order: f.order.value,
    activation_bits: Number(f.activation_bits.value),
    bits: Number(f.bits.value),
    finetune_iters: Number(f.finetune_iters.value),
    seed: Number(f.seed.value),
    deploy_on_success: f.deploy_on_success.checked,
  };
  if (f.deploy_int8.checked) body.deploy_format = "openvino-int8";
  if (f.deploy_int8.checked && f.int8_max_drop.value) body.int8_max_drop = Number(f.int8_max_drop.value);
  const after1bit = { true: true, auto: "auto" }[f.int8_after_1bit.value];
  if (f.deploy_int8.checked && after1bit !== undefined) body.int8_after_1bit = after1bit;
  if (f.iters_per_mac_percent.value) body.iters_per_mac_percent = Number(f.iters_per_mac_percent.value);
  if (f.patience.value && f.target_kind.value === "max_miss_rate_increase") {
    body.target.patience = Number(f.patience.value);
  }
  if (f.batch_size.value) body.batch_size = Number(f.batch_size.value);
  if (f.distillation_weight.value) body.distillation_weight = Number(f.distillation_weight.value);
  if (body.activation_bits === 1) {
    body.activation_quantizer = f.activation_quantizer.value;
    body.staged_schedule = f.staged_schedule.checked;
    body.rprelu = f.rprelu.checked;
    if (f.binarizer_lr_multiplier.value) body.binarizer_lr_multiplier = Number(f.binarizer_lr_multiplier.value);
    if (f.binary_input_layers.value) body.binary_input_layers = Number(f.binary_input_layers.value);
    if (f.weights_only_iters.value) body.weights_only_iters = Number(f.weights_only_iters.value);
  }
  const button = $("button[type=submit]", f);
  button.disabled = true;
  try {
    const job = await api("/jobs", { method: "POST", json: body });
    location.hash = `#/job/${job.id}`;
  } catch (e) {
    showError(err, e.message);
  } finally {
    button.disabled = false;
  }
});

// ---------------------------------------------------------------------------------------------
// One job
let currentJob = null;
let chosenCheckpoint = null; // the checkpoint whose MR-FPPI curve is shown
let othersCache = null; // {jobId, at, jobs}
const OTHERS_REFRESH_MS = 4000;
let userChose = false; // until the user picks one, the curve follows the selected (or latest) step
const checkpointCache = new Map(); // id -> checkpoint (with fppi_curve); checkpoints never change

async function openJob(id) {
  if (!currentJob || currentJob.id !== id) {
    currentJob = null;
    chosenCheckpoint = null;
    userChose = false;
    $("#steps-table tbody").replaceChildren();
    $("#tradeoff").replaceChildren();
    $("#fppi").replaceChildren();
    $("#fppi-legend").replaceChildren();
    $("#tradeoff-legend").replaceChildren();
    $("#fppi-title").textContent = "";
  }
  $("#job-title").textContent = `Job ${short(id)}`;
  $("#job-title").title = id;
  showError($("#job-error"), "");
  poll(() => refreshJob(id), POLL_JOB_ACTIVE_MS);
}

async function refreshJob(id) {
  let job, others = [];
  try {
    job = await api(`/jobs/${id}`);
  } catch (e) {
    showError($("#job-error"), e.message);
    return e.status === 404 ? 60000 : POLL_JOB_IDLE_MS;
  }
  // other jobs on the same model, for comparison: refreshed every few seconds, not every poll
  if (!othersCache || othersCache.jobId !== id || Date.now() - othersCache.at > OTHERS_REFRESH_MS) {
    try {
      const all = await api("/jobs?limit=200");
      othersCache = { jobId: id, at: Date.now(),
        jobs: all.data.filter((j) => j.model_id === job.model_id && j.id !== job.id && j.steps.length) };
    } catch { /* comparison is optional */ }
  }
  if (othersCache && othersCache.jobId === id) others = othersCache.jobs;
  currentJob = job;
  renderJobHeader(job);
  renderSteps(job);
  renderTradeoff(job, others);
  const fallback = job.selected_checkpoint_id || (job.steps.length ? job.steps[job.steps.length - 1].checkpoint_id : null);
  if (!userChose && fallback && fallback !== chosenCheckpoint) chooseCheckpoint(fallback, false);
  return ACTIVE.has(job.status) ? POLL_JOB_ACTIVE_MS : POLL_JOB_IDLE_MS;
}

function renderJobHeader(job) {
  const st = $("#job-status");
  st.className = `status ${job.status}`;
  st.textContent = job.status;
  $("#job-cancel").hidden = !ACTIVE.has(job.status) || job.cancel_requested;
  $("#job-cancel").onclick = async () => { await cancelJob(job.id); refreshJob(job.id); };
  const method = job.method === "all_at_once" ? "all at once" : `layer priority, ${job.order.replace("_", " ")}`;
  const summary = $("#job-summary");
  const model = h("span"), dataset = h("span");
  describe("models", job.model_id, model);
  describe("datasets", job.dataset_id, dataset);
  summary.replaceChildren(
    "Model ", model, " · dataset ", dataset, ` · target ${fmtTarget(job.target)} · ${method} · ${job.bits} bit`,
    ` · ${job.finetune_iters} iterations/step · seed ${job.seed}`,
    judgesInt8(job) ? " · judged on its openvino-int8 files" : "",
    ` · started ${fmtTime(job.started_at)}`, job.finished_at ? ` · finished ${fmtTime(job.finished_at)}` : "",
  );

  const p = job.progress;
  const percent = jobPercent(job);
  setBar($("#job-bar"), percent, job.status === "running");
  let text = `${percent.toFixed(1)}%`;
  if (job.status === "running" && p.eta_seconds != null) text += ` · ETA ${fmtDuration(p.eta_seconds)}`;
  if (p.total_steps) text += ` · ${job.steps.length}/${p.total_steps} steps`;
  $("#job-bar-text").textContent = text;

  // The step in progress: the pipeline reports "fine-tuning <iteration>/<iterations>".
  const m = /(\d+)\/(\d+)/.exec(p.message || "");
  const stepRunning = job.status === "running" && !job.steps.some((x) => x.index === p.step);
  let stepPercent = 0, stepText = p.message || "";
  if (m && stepRunning) stepPercent = (100 * Number(m[1])) / Math.max(1, Number(m[2]));
  else if (stepRunning && /^evaluating/.test(p.message || "")) stepPercent = 100; // trained; being measured
  else if (!stepRunning || job.status === "succeeded") stepPercent = job.steps.length ? 100 : 0;
  $("#step-bar-title").textContent = job.status === "running" ? `Step ${p.step}` : "Last step";
  $("#step-bar-text").textContent = `${stepText}${stepText ? " · " : ""}${stepPercent.toFixed(0)}%`;
  setBar($("#step-bar"), stepPercent, stepRunning);
  showError($("#job-error"), job.error || "");
}

function renderSteps(job) {
  const tbody = $("#steps-table tbody");
  $("#steps-empty").hidden = job.steps.length > 0;
  if (!shouldRender(tbody, [job.steps, job.selected_checkpoint_id, deployment.checkpoint_id, chosenCheckpoint])) return;
  tbody.replaceChildren(...job.steps.map((st) => {
    const ck = st.checkpoint_id;
    const badges = [];
    if (ck === job.selected_checkpoint_id) badges.push(h("span", { class: "tag selected" }, "selected"));
    if (ck === deployment.checkpoint_id) badges.push(h("span", { class: "tag deployed" }, "deployed"));
    const layers = st.layers.length ? st.layers.join(", ") : "— (float model)";
    return h("tr", { "data-step": st.index, "data-checkpoint-id": ck, class: ck === chosenCheckpoint ? "chosen" : "" },
      h("td", {}, st.index),
      h("td", { class: "layers", title: `binary so far: ${st.binary_layers.join(", ") || "none"}` }, layers),
      h("td", {}, st.bits),
      h("td", {}, fmtRatio(st.compression_ratio)),
      h("td", { class: "miss-rate" }, withInt8(fmt(st.miss_rate), st.int8?.miss_rate, fmt, st.int8)),
      h("td", {}, fmt(st.ap50)),
      h("td", { class: "latency" }, withInt8(fmtMs(st.latency_ms), st.int8?.latency_ms, fmtMs, st.int8)),
      h("td", {}, fmtDuration(st.step_seconds)),
      h("td", {}, h("code", { title: `${ck}\n${fmtBytes(st.checkpoint_bytes)}` }, short(ck)), " ", badges),
      h("td", { class: "actions" },
        h("button", { class: "small ghost", onclick: () => chooseCheckpoint(ck) }, "Curve"),
        h("button", { class: "small", "data-action": "deploy", title: judgesInt8(job) && st.int8 ? "deploy its int8 file" : "",
          onclick: () => deploy(ck, judgesInt8(job) && st.int8 ? "openvino-int8" : "openvino") }, "Deploy"),
        h("button", { class: "small ghost", "data-action": "download", title: `packed checkpoint, ${fmtBytes(st.checkpoint_bytes)}`,
          onclick: () => download(ck) }, "Download"),
        h("button", { class: "small ghost", "data-action": "download-openvino", title: "OpenVINO IR zip: runs with plain OpenVINO",
          onclick: () => download(ck, "openvino") }, "OpenVINO"),
        h("button", { class: "small ghost", "data-action": "download-openvino-int8",
          title: `OpenVINO IR zip, 1-bit layers kept, ${st.int8 ? `${int8Scope(st.int8)} (NNCF); ${fmtBytes(st.int8.file_bytes)}` : "int8 on the other convs except those a 1-bit conv feeds (NNCF); made on the first request"}`,
          onclick: () => download(ck, "openvino-int8") }, "int8"),
        h("a", { class: "button small ghost", href: `#/tryit/${ck}` }, "Try it")));
  }));
}

async function deploy(checkpointId, format = "openvino") {
  try {
    await api("/deployment", { method: "PUT", json: { checkpoint_id: checkpointId, format } });
    checkpointCache.delete(checkpointId); // its int8 file may have been made just now
    await refreshDeployment();
    const msg = $("#steps-message");
    msg.hidden = false;
    msg.textContent = `Checkpoint ${short(checkpointId)} deployed${format === "openvino-int8" ? " as int8" : ""}: /detect now serves it by default.`;
    if (currentJob) renderSteps(currentJob);
  } catch (e) { toast(e.message); }
}

async function download(checkpointId, format = "safetensors") {
  try {
    const query = format === "safetensors" ? "" : `?format=${format}`;
    const res = await api(`/checkpoints/${checkpointId}/download${query}`, { raw: true });
    const blob = await res.blob();
    const cd = res.headers.get("Content-Disposition") || "";
    const name = /filename="?([^";]+)"?/.exec(cd)?.[1] || `flexbin-${checkpointId}.safetensors`;
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    if (format === "openvino-int8" || format === "openvino") { // a file may have been made just now
      checkpointCache.delete(checkpointId);
      if (chosenCheckpoint === checkpointId) renderFppi(await getCheckpoint(checkpointId));
    }
  } catch (e) { toast(e.message); }
}

async function getCheckpoint(id) {
  if (!checkpointCache.has(id)) checkpointCache.set(id, await api(`/checkpoints/${id}`));
  return checkpointCache.get(id);
}

async function chooseCheckpoint(id, byUser = true) {
  chosenCheckpoint = id;
  userChose = userChose || byUser;
  for (const tr of document.querySelectorAll("#steps-table tbody tr")) {
    tr.classList.toggle("chosen", tr.dataset.checkpointId === id);
  }
  for (const c of document.querySelectorAll("#tradeoff circle.pt")) c.classList.toggle("chosen", c.dataset.checkpointId === id);
  try {
    const ck = await getCheckpoint(id);
    if (chosenCheckpoint === id) renderFppi(ck);
  } catch (e) { toast(e.message); }
}

// ---------------------------------------------------------------------------------------------
// Plots (plain SVG)
const PLOT = { w: 560, h: 340, left: 56, right: 16, top: 16, bottom: 44 };
const PALETTE = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2", "#65a30d", "#db2777"];

function linScale(d0, d1, r0, r1) { return (v) => r0 + ((v - d0) / (d1 - d0 || 1)) * (r1 - r0); }
function logScale(d0, d1, r0, r1) {
  const l0 = Math.log10(d0), l1 = Math.log10(d1);
  return (v) => r0 + ((Math.log10(Math.max(v, d0)) - l0) / (l1 - l0 || 1)) * (r1 - r0);
}
function niceLogTicks(d0, d1, dense = false) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(d0)); e <= Math.ceil(Math.log10(d1)); e++) {
    for (const m of dense ? [1, 2, 5] : [1]) {
      const v = m * 10 ** e;
      if (v >= d0 * 0.999 && v <= d1 * 1.001) ticks.push(v);
    }
  }
  return ticks;
}
function tickLabel(v) {
  if (v >= 1) return String(+v.toFixed(2));
  return String(+v.toPrecision(2));
}

function axes(svg, x, y, xTicks, yTicks, xLabel, yLabel) {
  const { w, h: ht, left, right, top, bottom } = PLOT;
  const g = s("g", { class: "axes" });
  for (const t of xTicks) {
    const px = x(t);
    g.append(s("line", { x1: px, x2: px, y1: top, y2: ht - bottom, class: "grid" }),
      s("text", { x: px, y: ht - bottom + 16, "text-anchor": "middle" }, tickLabel(t)));
  }
  for (const t of yTicks) {
    const py = y(t);
    g.append(s("line", { x1: left, x2: w - right, y1: py, y2: py, class: "grid" }),
      s("text", { x: left - 6, y: py + 4, "text-anchor": "end" }, tickLabel(t)));
  }
  g.append(
    s("rect", { x: left, y: top, width: w - left - right, height: ht - top - bottom, class: "frame" }),
    s("text", { x: left + (w - left - right) / 2, y: ht - 8, "text-anchor": "middle", class: "label" }, xLabel),
    s("text", { x: 14, y: top + (ht - top - bottom) / 2, "text-anchor": "middle", class: "label",
      transform: `rotate(-90 14 ${top + (ht - top - bottom) / 2})` }, yLabel));
  svg.append(g);
}

function legendItem(color, text, { dashed = false, ring = false } = {}) {
  const sw = h("span", { class: `swatch${dashed ? " dashed" : ""}${ring ? " ring" : ""}` });
  sw.style.setProperty("--c", color);
  return h("span", { class: "item" }, sw, text);
}

// The trade-off plot's x axis: compression ratio (default) or the measured OpenVINO latency.
let tradeoffX = "compression_ratio";
for (const b of document.querySelectorAll("#tradeoff-x button")) {
  b.addEventListener("click", () => {
    tradeoffX = b.dataset.x;
    for (const o of document.querySelectorAll("#tradeoff-x button")) {
      const on = o === b;
      o.classList.toggle("on", on);
      o.classList.toggle("ghost", !on);
      o.setAttribute("aria-pressed", String(on));
    }
    if (currentJob) renderTradeoff(currentJob, othersCache && othersCache.jobId === currentJob.id ? othersCache.jobs : []);
  });
}

function renderTradeoff(job, others) {
  const svg = $("#tradeoff");
  svg.replaceChildren();
  const legend = $("#tradeoff-legend");
  const byLatency = tradeoffX === "latency_ms";
  $("#tradeoff-title").textContent = `Trade-off: MR⁻² vs ${byLatency ? "latency (OpenVINO, 1 thread)" : "compression ratio"}`
    + (judgesInt8(job) ? " · int8 files" : "");
  // each job's points are the files its target judged (as trained, or int8): x, y and the step
  const series = [{ job, color: PALETTE[0], mine: true },
    ...others.slice(0, PALETTE.length - 1).map((j, i) => ({ job: j, color: PALETTE[i + 1], mine: false }))]
    .map((sr) => ({ ...sr, steps: sr.job.steps.map((st) => {
      const j = judged(sr.job, st);
      return { ...st, x: byLatency ? j.latency_ms : st.compression_ratio, y: j.miss_rate, judged: j };
    }).filter((p) => p.x != null && p.x > 0 && p.y != null) }));
  const xOf = (p) => p.x;
  const pts = series.flatMap((sr) => sr.steps);
  const target = job.target || {};
  const float = job.steps.find((st) => st.index === 0);
  const mrBudget = target.max_miss_rate_increase != null && float ? float.miss_rate + target.max_miss_rate_increase : null;
  // a vertical target line where the x axis speaks the target's unit: ratio, or latency in ms
  const latencyTarget = target.max_latency_ms ?? (target.min_speedup != null && float?.latency_ms
    ? float.latency_ms / target.min_speedup : null);
  const ratioTarget = byLatency ? latencyTarget : target.min_compression_ratio;
  const xs = pts.map(xOf).concat(ratioTarget ?? [], byLatency ? [] : 1);
  const ys = pts.map((p) => p.y).concat(mrBudget ?? []);
  const xMin = byLatency ? Math.min(1, ...xs) / 1.15 : 1;
  const xMax = Math.max(byLatency ? xMin * 10 : 2, ...xs) * 1.15;
  const yMax = Math.min(1.1, Math.max(0.1, ...ys) * 1.08 + 0.03);
  const { w, h: ht, left, right, top, bottom } = PLOT;
  const x = logScale(xMin, xMax, left, w - right);
  const y = linScale(0, yMax, ht - bottom, top);
  const yStep = yMax > 0.5 ? 0.2 : yMax > 0.2 ? 0.1 : 0.05;
  const yTicks = [];
  for (let v = 0; v <= yMax + 1e-9; v += yStep) yTicks.push(+v.toFixed(2));
  axes(svg, x, y, niceLogTicks(xMin, xMax, true), yTicks,
    byLatency ? "latency, ms (log; lower is faster)" : "compression ratio (log)", "MR⁻² (lower is better)");

  const items = [];
  if (ratioTarget != null) {
    const px = x(ratioTarget);
    const label = !byLatency ? `target ×${ratioTarget}` : target.max_latency_ms != null
      ? `target ${target.max_latency_ms} ms` : `target ×${target.min_speedup} faster (${fmtMs(ratioTarget)})`;
    svg.append(s("line", { x1: px, x2: px, y1: top, y2: ht - bottom, class: "target", "data-target": ratioTarget }),
      s("text", { x: px - 4, y: ht - bottom - 6, "text-anchor": "end", class: "annot" }, label));
    items.push(legendItem("#dc2626", "target", { dashed: true }));
  }
  if (mrBudget != null) {
    const py = y(Math.min(mrBudget, yMax));
    svg.append(s("line", { x1: left, x2: w - right, y1: py, y2: py, class: "target" }),
      s("text", { x: w - right - 4, y: py - 4, "text-anchor": "end", class: "annot" },
        `target MR⁻² ≤ ${mrBudget.toFixed(3)}`));
    items.push(legendItem("#dc2626", "target", { dashed: true }));
  }
  // others first, this job on top
  for (const sr of series.slice().reverse()) {
    const steps = sr.steps.slice().sort((a, b) => a.index - b.index);
    const g = s("g", { class: sr.mine ? "series mine" : "series other", "data-job-id": sr.job.id });
    if (steps.length > 1) {
      g.append(s("polyline", {
        points: steps.map((p) => `${x(xOf(p))},${y(p.y)}`).join(" "),
        stroke: sr.color, class: "line",
      }));
    }
    for (const p of steps) {
      const c = s("circle", {
        cx: x(xOf(p)), cy: y(p.y), r: sr.mine ? 5 : 3.5, fill: sr.color,
        class: `pt ${sr.mine ? "pt-this" : "pt-other"}${p.checkpoint_id === chosenCheckpoint ? " chosen" : ""}`,
        "data-checkpoint-id": p.checkpoint_id,
      }, s("title", {}, `${sr.mine ? "this job" : `job ${short(sr.job.id)}`} · step ${p.index}\n`
        + `ratio ${fmtRatio(p.compression_ratio)} · latency ${fmtMs(p.judged.latency_ms)} · MR⁻² ${fmt(p.judged.miss_rate)}`
        + (judgesInt8(sr.job) ? " (int8 file)" : "")
        + ` · AP@0.5 ${fmt(p.ap50)}`));
      if (sr.mine) c.addEventListener("click", () => chooseCheckpoint(p.checkpoint_id));
      g.append(c);
    }
    svg.append(g);
  }
  const sel = series[0].steps.find((st) => st.checkpoint_id === job.selected_checkpoint_id);
  if (sel) {
    const sx = x(xOf(sel)), sy = y(sel.y);
    const leftSide = sx > w - right - 70;
    svg.append(s("circle", { cx: sx, cy: sy, r: 10, class: "selected-ring" }),
      s("text", { x: sx + (leftSide ? -14 : 14), y: sy + 18, "text-anchor": leftSide ? "end" : "start", class: "annot" },
        "selected"));
  }
  items.unshift(legendItem(PALETTE[0], `this job (${job.steps.length} steps)`));
  if (sel) items.push(legendItem("#111827", "selected checkpoint", { ring: true }));
  for (const sr of series.slice(1)) {
    const j = sr.job;
    const label = j.method === "all_at_once" ? "all at once" : j.order.replace("_", " ");
    items.push(h("a", { href: `#/job/${j.id}`, class: "item-link" },
      legendItem(sr.color, `job ${short(j.id)}: ${label}, ${j.bits} bit`)));
  }
  legend.replaceChildren(...items);
  if (!pts.length) {
    svg.append(s("text", { x: w / 2, y: ht / 2, "text-anchor": "middle", class: "empty" },
      byLatency && job.steps.length ? "no latency measured (no OpenVINO export)" : "waiting for the first step…"));
  }
}

function renderFppi(ck) {
  const svg = $("#fppi");
  svg.replaceChildren();
  const curve = (ck.fppi_curve || []).map(([f, m]) => [Number(f), Number(m)]);
  $("#fppi-title").textContent = `step ${ck.step} · checkpoint ${short(ck.id)}`;
  const { w, h: ht, left, right, top, bottom } = PLOT;
  const fMax = Math.max(10, ...curve.map((p) => p[0]));
  const xMin = 1e-3, xMax = 10 ** Math.ceil(Math.log10(fMax));
  const yMin = 0.05, yMax = 1;
  const x = logScale(xMin, xMax, left, w - right);
  const y = logScale(yMin, yMax, ht - bottom, top);
  // the FPPI range MR^-2 averages over
  svg.append(s("rect", { x: x(1e-2), y: top, width: x(1) - x(1e-2), height: ht - top - bottom, class: "band" }));
  axes(svg, x, y, niceLogTicks(xMin, xMax), [0.05, 0.1, 0.2, 0.3, 0.5, 0.64, 0.8, 1],
    "false positives per image (log)", "miss rate (log)");
  const clampY = (m) => Math.max(yMin, Math.min(yMax, m));
  const g = s("g", { class: "series mine", "data-checkpoint-id": ck.id, "data-points": curve.length });
  if (curve.length > 1) {
    // a step curve: miss rate holds until the next operating point
    const d = [];
    curve.forEach(([f, m], i) => {
      const px = x(Math.max(f, xMin)), py = y(clampY(m));
      if (i === 0) d.push(`M${px},${py}`);
      else d.push(`H${px}`, `V${py}`);
    });
    g.append(s("path", { d: d.join(" "), stroke: PALETTE[0], class: "line" }));
  }
  for (const [f, m] of curve) {
    g.append(s("circle", { cx: x(Math.max(f, xMin)), cy: y(clampY(m)), r: 2.2, fill: PALETTE[0], class: "fppi-pt" },
      s("title", {}, `FPPI ${f.toPrecision(3)} · miss rate ${m.toFixed(3)}`)));
  }
  svg.append(g);
  $("#fppi-legend").replaceChildren(
    legendItem(PALETTE[0], `step ${ck.step}: MR⁻² ${fmt(ck.miss_rate)} · AP@0.5 ${fmt(ck.ap50)} · ${curve.length} points`),
    legendItem("#93c5fd", "FPPI range of MR⁻² (10⁻² … 10⁰)"));
  renderFiles(ck);
}

// What each download of a checkpoint really weighs: the compression ratio describes the packed one.
function renderFiles(ck) {
  const files = ck.files || {};
  const size = (n, missing) => (n == null ? missing : fmtBytes(n));
  $("#checkpoint-files").replaceChildren(
    "Files: packed checkpoint ", h("strong", {}, size(files.safetensors, "?")),
    ` (${fmtRatio(ck.compression_ratio)} smaller than float32) · OpenVINO zip `,
    h("strong", { "data-file": "openvino" }, size(files.openvino, "not exported")),
    " · int8 zip ", h("strong", { "data-file": "openvino-int8" }, size(files.openvino_int8, "made on first download")),
    " ", h("button", { class: "small ghost", "data-action": "deploy-int8", onclick: () => deploy(ck.id, "openvino-int8") },
      "Deploy int8"));
}

// ---------------------------------------------------------------------------------------------
// Uploads
let archsLoaded = false;
async function openUpload() {
  if (archsLoaded) return;
  try {
    const archs = await api("/architectures");
    archsLoaded = true;
    $("#arch-table tbody").replaceChildren(...archs.map((a) => h("tr", {},
      h("td", {}, h("code", {}, a.name)),
      h("td", {}, a.description, a.pretrained ? ` Bundled weights: ${a.pretrained.license}, ${a.pretrained.origin}.` : ""),
      h("td", {}, h("code", { class: "kwargs" }, JSON.stringify(a.default_kwargs))))));
  } catch { /* optional */ }
}

function uploadForm(formSel, path, buildForm, describeResult) {
  const f = $(formSel);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = $(".error", f), out = $(".result", f), button = $("button[type=submit]", f);
    showError(err, "");
    out.hidden = true;
    button.disabled = true;
    button.textContent = "Uploading…";
    try {
      const row = await api(path, { method: "POST", form: await buildForm(f) });
      out.replaceChildren(...describeResult(row));
      out.hidden = false;
    } catch (e) {
      showError(err, e.message); // the server's detail, as it is
    } finally {
      button.disabled = false;
      button.textContent = formSel === "#model-form" ? "Upload model" : "Upload dataset";
    }
  });
}

uploadForm("#model-form", "/models", async (f) => {
  const fd = new FormData();
  fd.append("weights", f.weights.files[0]);
  const cardFile = f.card_file.files[0];
  fd.append("card", cardFile ? await cardFile.text() : f.card.value);
  if (f.name.value.trim()) fd.append("name", f.name.value.trim());
  return fd;
}, (row) => {
  remember("models", row.id, row.name || row.architecture);
  nameCache.delete(`models:${row.id}`);
  return [h("p", {}, "Model stored: ", h("code", { class: "model-id" }, row.id)),
    h("p", { class: "muted" }, `${row.architecture} · ${row.num_params.toLocaleString()} parameters · ${fmtBytes(row.size_bytes)}`),
    h("a", { href: "#/jobs", class: "button small" }, "Start a job with it")];
});
$("#model-form").card_file.addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (file) $("#model-form").card.value = await file.text();
});

uploadForm("#dataset-form", "/datasets", async (f) => {
  const fd = new FormData();
  fd.append("archive", f.archive.files[0]);
  if (f.name.value.trim()) fd.append("name", f.name.value.trim());
  return fd;
}, (row) => {
  remember("datasets", row.id, row.name || `${row.num_images} images`);
  return [h("p", {}, "Dataset stored: ", h("code", { class: "dataset-id" }, row.id)),
    h("p", { class: "muted" }, `${row.num_images} images · ${row.num_boxes} pedestrians · ${fmtBytes(row.size_bytes)}`),
    h("a", { href: "#/jobs", class: "button small" }, "Start a job with it")];
});

// ---------------------------------------------------------------------------------------------
// Try it
async function openTryIt(checkpointId) {
  const select = $("#detect-form").checkpoint_id;
  const keep = checkpointId || select.value;
  try {
    const [jobs] = await Promise.all([api("/jobs?limit=100"), refreshDeployment()]);
    const options = [h("option", { value: "" },
      deployment.checkpoint_id ? `the deployed checkpoint (${short(deployment.checkpoint_id)})` : "the deployed checkpoint (none yet)")];
    for (const job of jobs.data) {
      if (!job.steps.length) continue;
      const group = h("optgroup", { label: `job ${short(job.id)} · ${job.method === "all_at_once" ? "all at once" : job.order.replace("_", " ")} · ${job.status}` });
      for (const st of job.steps) {
        group.append(h("option", { value: st.checkpoint_id },
          `step ${st.index} · ${fmtRatio(st.compression_ratio)} · MR⁻² ${fmt(st.miss_rate)}`
          + `${st.checkpoint_id === job.selected_checkpoint_id ? " · selected" : ""}`));
      }
      options.push(group);
    }
    select.replaceChildren(...options);
    if (keep && [...select.options].some((o) => o.value === keep)) select.value = keep;
  } catch (e) { showError($(".error", $("#detect-form")), e.message); }
}

$("#detect-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const err = $(".error", f), button = $("button[type=submit]", f);
  showError(err, "");
  const file = f.image.files[0];
  if (!file) return;
  const fd = new FormData();
  fd.append("images", file, file.name);
  if (f.checkpoint_id.value) fd.append("checkpoint_id", f.checkpoint_id.value);
  fd.append("score_threshold", f.score_threshold.value || "0.05");
  button.disabled = true;
  button.textContent = "Detecting…";
  try {
    const t0 = performance.now();
    const [res, bitmap] = await Promise.all([api("/detect", { method: "POST", form: fd }), createImageBitmap(file)]);
    drawDetections(res, bitmap, performance.now() - t0);
  } catch (e) {
    showError(err, e.message);
  } finally {
    button.disabled = false;
    button.textContent = "Detect pedestrians";
  }
});

function drawDetections(res, bitmap, ms) {
  const result = res.results[0];
  const canvas = $("#detect-canvas");
  const maxW = Math.min(canvas.parentElement.clientWidth - 40, 900);
  const scale = Math.min(1, maxW / result.width, 560 / result.height);
  canvas.width = Math.round(result.width * scale);
  canvas.height = Math.round(result.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2.5;
  ctx.font = "600 12px system-ui, sans-serif";
  result.detections.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    const color = PALETTE[i % PALETTE.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${i + 1}: ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 8;
    ctx.fillStyle = color;
    ctx.fillRect(x1, Math.max(0, y1 - 16), tw, 16);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x1 + 4, Math.max(0, y1 - 16) + 12);
  });
  canvas.dataset.boxes = String(result.detections.length);
  canvas.dataset.checkpointId = res.checkpoint_id;
  $("#detect-summary").textContent = `${result.filename} · ${result.width}×${result.height} px · `
    + `${result.detections.length} pedestrian${result.detections.length === 1 ? "" : "s"} · checkpoint ${short(res.checkpoint_id)} · ${ms.toFixed(0)} ms`;
  $("#detect-list").replaceChildren(...result.detections.map((d) => h("li", {},
    `score ${d.score.toFixed(3)} · box [${d.box.map((v) => v.toFixed(1)).join(", ")}]`)));
}

route();
