// artshield serve: the page. Plain JavaScript, no libraries, no requests to anything but this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
};

const state = { config: null, uploads: [], mask: null, jobs: JSON.parse(localStorage.getItem("artshield.jobs") || "[]") };
const views = new Map(); // job id -> {node, lastState, rendered}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `the server answered ${response.status}`);
  return body;
}

function showError(message) {
  const box = $("#page-error");
  box.textContent = message || "";
  box.hidden = !message;
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }
function bytes(n) { return n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1e3))} kB`; }
function duration(s) {
  if (s === undefined || s === null) return "";
  if (s < 60) return `${Math.ceil(s)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

// ------------------------------------------------------------------ settings
async function loadConfig() {
  const config = await api("/api/config");
  state.config = config;
  const box = $("#strengths");
  for (const s of config.strengths) {
    box.append(el("label", { class: "strength" },
      el("input", { type: "radio", name: "strength", value: s.name, checked: s.default }),
      el("span", {}, el("b", { class: "cap", text: s.name }), el("span", { class: "meta", text: ` · budget ${s.eps_255}/255, ${s.steps} steps` })),
      el("span", { class: "hint", text: s.note })));
  }
  const methods = $("#method");
  for (const m of config.methods) methods.append(el("option", { value: m.name, text: m.default ? `${m.name} (default)` : m.name }));
  const models = $("#model");
  for (const m of config.models) models.append(el("option", { value: m.id, text: m.label }));
  methods.addEventListener("change", updateSettings);
  models.addEventListener("change", updateSettings);
  updateSettings();
}

function selectedModel() { return state.config.models.find((m) => m.id === $("#model").value) || state.config.models[0]; }

function updateSettings() {
  const method = state.config.methods.find((m) => m.name === $("#method").value);
  $("#method-summary").textContent = method ? method.summary + (method.needs_mask ? " Uses the mask (a default centre region when none is given)." : "") : "";
  const model = selectedModel();
  $("#demo-notice").hidden = !model.is_demo;
  if (model.is_demo) $("#demo-notice-text").textContent = model.notice.charAt(0).toUpperCase() + model.notice.slice(1);
  updateButton();
}

function updateButton() {
  const ready = state.uploads.filter((u) => u.id);
  const button = $("#protect");
  button.disabled = ready.length === 0 || state.uploads.some((u) => u.pending);
  button.textContent = ready.length ? `Protect ${plural(ready.length, "image")}` : "Protect";
}

// ------------------------------------------------------------------ uploads
async function addFiles(files) {
  showError("");
  for (const file of files) {
    const item = { name: file.name, size: file.size, pending: true };
    state.uploads.push(item);
    renderUploads();
    if (state.config && file.size > state.config.max_upload_bytes) {
      item.pending = false;
      item.error = `${file.name} is ${bytes(file.size)}, larger than this server's limit of ${bytes(state.config.max_upload_bytes)}.`;
      renderUploads();
      continue;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      Object.assign(item, await api("/api/uploads", { method: "POST", body: form }));
    } catch (err) {
      item.error = err.message;
    }
    item.pending = false;
    renderUploads();
  }
}

function renderUploads() {
  const list = $("#uploads");
  list.replaceChildren();
  for (const item of state.uploads) {
    const remove = el("button", { class: "small secondary", type: "button", "aria-label": `Remove ${item.name}`, text: "Remove",
      onclick: () => { state.uploads.splice(state.uploads.indexOf(item), 1); renderUploads(); } });
    if (item.error) {
      list.append(el("li", { class: "bad upload-error", role: "alert" }, el("span", { text: item.error }), remove));
      continue;
    }
    const thumb = item.thumb ? el("img", { src: item.thumb, alt: "", class: "checker" }) : el("span", { class: "hint", text: "…" });
    const meta = item.pending ? "checking…" : `${item.width} × ${item.height}${item.has_alpha ? " · transparency kept" : ""} · ${bytes(item.size)}`;
    list.append(el("li", { class: "upload" }, thumb, el("div", {}, el("div", { class: "name", text: item.name }), el("div", { class: "meta", text: meta })), remove));
  }
  updateButton();
}

function setupDrop() {
  const drop = $("#drop");
  const input = $("#file-input");
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => addFiles([...e.dataTransfer.files]));
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// ------------------------------------------------------------------ mask
function setupMask() {
  const canvas = $("#mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  let background = null;
  const strokes = document.createElement("canvas");
  const sctx = strokes.getContext("2d");

  function redraw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (background) ctx.drawImage(background, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 0.6;
    ctx.drawImage(strokes, 0, 0);
    ctx.globalAlpha = 1;
  }
  function paint(e) {
    const rect = canvas.getBoundingClientRect();
    const x = (e.clientX - rect.left) * canvas.width / rect.width;
    const y = (e.clientY - rect.top) * canvas.height / rect.height;
    sctx.fillStyle = "#ffffff";
    sctx.beginPath();
    sctx.arc(x, y, Math.max(6, canvas.width / 20), 0, Math.PI * 2);
    sctx.fill();
    redraw();
    state.mask = { kind: "drawn", canvas: strokes };
    $("#mask-status").textContent = "Drawn mask: white strokes may be repainted by an editor; the rest is protected.";
    $("#mask-clear").hidden = false;
  }
  canvas.addEventListener("pointerdown", (e) => { drawing = true; canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) paint(e); });
  canvas.addEventListener("pointerup", () => { drawing = false; });
  $("#mask-draw").addEventListener("click", () => {
    const first = state.uploads.find((u) => u.id);
    if (!first) { showError("Add an image first, then draw its mask."); return; }
    const img = new Image();
    img.onload = () => {
      background = img;
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      strokes.width = img.naturalWidth; strokes.height = img.naturalHeight;
      redraw();
      $("#mask-editor").hidden = false;
    };
    img.src = first.thumb;
  });
  $("#mask-reset").addEventListener("click", () => { sctx.clearRect(0, 0, strokes.width, strokes.height); redraw(); clearMask(); });
  $("#mask-clear").addEventListener("click", () => { sctx.clearRect(0, 0, strokes.width, strokes.height); redraw(); clearMask(); $("#mask-editor").hidden = true; });
  $("#mask-input").addEventListener("change", () => {
    const file = $("#mask-input").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      state.mask = { kind: "file", data: reader.result };
      $("#mask-status").textContent = `Mask: ${file.name} (white = may be repainted, black = protected).`;
      $("#mask-clear").hidden = false;
    };
    reader.readAsDataURL(file);
  });
  function clearMask() { state.mask = null; $("#mask-status").textContent = ""; $("#mask-clear").hidden = true; $("#mask-input").value = ""; }
}

function maskData() {
  if (!state.mask) return null;
  return state.mask.kind === "drawn" ? state.mask.canvas.toDataURL("image/png") : state.mask.data;
}

// ------------------------------------------------------------------ jobs
async function submit() {
  showError("");
  const uploads = state.uploads.filter((u) => u.id).map((u) => u.id);
  const steps = $("#steps").value.trim();
  const body = {
    uploads,
    strength: document.querySelector("input[name=strength]:checked").value,
    method: $("#method").value,
    model: $("#model").value,
    steps: steps === "" ? null : Number(steps),
    mask: maskData(),
  };
  const button = $("#protect");
  button.disabled = true;
  try {
    const job = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    state.jobs.unshift(job.id);
    localStorage.setItem("artshield.jobs", JSON.stringify(state.jobs.slice(0, 50)));
    state.uploads = [];
    renderUploads();
    renderJob(job);
    poll();
  } catch (err) {
    showError(err.message);
  }
  updateButton();
}

function progressText(job) {
  const p = job.progress || {};
  if (job.state === "queued") {
    const ahead = job.queue_position - 1 + (job.running_ahead ? 1 : 0);
    return ahead > 0 ? `Waiting: ${plural(ahead, "job")} ahead of this one (place ${job.queue_position} in the queue).` : "Starting…";
  }
  if (job.state === "running") {
    if (p.phase === "loading the model") return "Loading the model…";
    const step = p.steps ? ` · step ${p.step} of ${p.steps}` : "";
    const left = p.eta_seconds ? ` · about ${duration(p.eta_seconds)} left` : "";
    return `Image ${p.image} of ${p.images}${p.name ? ` (${p.name})` : ""}${step}${left}${p.phase && p.phase !== "protecting" ? ` · ${p.phase}` : ""}`;
  }
  if (job.state === "done") return `Finished: ${plural(job.results.length, "image")} protected.`;
  if (job.state === "failed") return `Failed: ${job.error}`;
  return `Cancelled${job.notice ? `: ${job.notice.replace(/^cancelled;?\s*/, "")}` : "."}`;
}

function fileUrl(job, name, download) { return `/api/jobs/${job.id}/files/${encodeURIComponent(name)}${download ? "?download" : ""}`; }

function renderJob(job) {
  let view = views.get(job.id);
  if (!view) {
    view = { node: el("article", { class: "job", "data-job": job.id }), results: 0, finished: false };
    views.set(job.id, view);
    const list = $("#jobs");
    list.insertBefore(view.node, list.firstChild);
    view.head = el("div", { class: "job-head" });
    view.bar = el("progress", { max: "1", value: "0" });
    view.text = el("div", { class: "job-progress meta" });
    view.downloads = el("div", { class: "downloads" });
    view.body = el("div", {});
    view.node.append(view.head, view.bar, view.text, view.downloads, view.body);
  }
  $("#no-jobs").hidden = true;
  const s = job.settings;
  const label = `${plural(job.names.length, "image")} · ${s.strength} · ${s.method}${s.steps ? ` · ${s.steps} steps` : ""}${job.masked ? " · mask" : ""}`;
  const cancel = ["queued", "running"].includes(job.state)
    ? el("button", { class: "small danger cancel", type: "button", text: job.progress && job.state === "running" && job.cancelling ? "Cancelling…" : "Cancel",
      onclick: async (e) => { e.target.disabled = true; e.target.textContent = "Cancelling…"; try { renderJob(await api(`/api/jobs/${job.id}/cancel`, { method: "POST" })); } catch (err) { showError(err.message); } } })
    : null;
  view.head.replaceChildren(el("span", {}, el("span", { class: `state ${job.state}`, text: job.state }), el("span", { class: "meta", text: ` · ${label}` })), ...(cancel ? [cancel] : []));
  const fraction = job.state === "done" ? 1 : (job.progress && job.progress.fraction) || 0;
  view.bar.value = fraction;
  view.bar.hidden = ["failed", "cancelled"].includes(job.state) && fraction === 0;
  view.text.textContent = progressText(job);
  view.node.dataset.state = job.state;
  const links = [];
  if (job.zip) links.push(el("a", { class: "button small download-zip", href: fileUrl(job, job.zip, true), text: "Download all (zip)" }));
  if (job.report) links.push(el("a", { class: "button small secondary", href: fileUrl(job, job.report, true), text: "Report (JSON)" }));
  view.downloads.replaceChildren(...links);
  for (const result of job.results.slice(view.results)) view.body.append(renderResult(job, result));
  view.results = job.results.length;
}

function pct(before, after) {
  if (typeof before !== "number" || typeof after !== "number" || before === 0) return "n/a";
  const change = (after - before) / Math.abs(before) * 100;
  return `${change >= 0 ? "+" : ""}${change.toFixed(0)}%`;
}

function renderResult(job, r) {
  const crops = el("div", { class: "crops", hidden: true });
  const zoom = (event) => {
    const rect = event.target.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    const y = Math.min(1, Math.max(0, (event.clientY - rect.top) / rect.height));
    const q = (kind) => `/api/jobs/${job.id}/crop/${r.index}?kind=${kind}&x=${x.toFixed(4)}&y=${y.toFixed(4)}&size=192`;
    crops.replaceChildren(
      el("figure", {}, el("img", { src: q("before"), alt: "original, 1:1 crop", class: "checker" }), el("figcaption", { text: "before, 1:1 pixels" })),
      el("figure", {}, el("img", { src: q("after"), alt: "protected, 1:1 crop", class: "checker" }), el("figcaption", { text: "after, 1:1 pixels" })),
      el("figure", {}, el("img", { src: q("diff"), alt: "difference ×10, 1:1 crop" }), el("figcaption", { text: "difference ×10" })));
    crops.hidden = false;
  };
  const fig = (name, caption, cls) => el("figure", { class: cls },
    el("img", { src: fileUrl(job, name), alt: caption, class: "checker", loading: "lazy", onclick: zoom, title: "Click to see this spot at full size" }),
    el("figcaption", { text: caption }));
  const psnr = r.psnr_db === null || r.psnr_db === undefined ? "∞" : r.psnr_db.toFixed(1);
  return el("div", { class: "result", "data-index": r.index },
    el("div", { class: "job-head" },
      el("span", { class: "name", text: `${r.name} → ${r.output}` }),
      el("a", { class: "button small primary-link download", href: fileUrl(job, r.output, true), download: r.output, text: "Download PNG" })),
    el("div", { class: "metrics" },
      el("span", {}, "Size ", el("b", { text: `${r.width} × ${r.height}` })),
      el("span", {}, "Largest change ", el("b", { text: `${Math.round(r.linf_255)}/255` })),
      el("span", {}, "PSNR ", el("b", { text: `${psnr} dB` })),
      el("span", {}, "SSIM ", el("b", { text: typeof r.ssim === "number" ? r.ssim.toFixed(3) : "n/a" })),
      el("span", {}, "Objective ", el("b", { text: pct(r.objective_before, r.objective_after) }))),
    el("div", { class: "compare" },
      fig(r.before, "before", "before"), fig(r.after, "after (protected)", "after"), fig(r.diff, "difference ×10 (how visible it is)", "diff")),
    el("p", { class: "hint", text: "Click any of the three pictures to compare that spot at full size." }),
    crops);
}

let polling = null;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    while (true) {
      let active = false;
      for (const id of [...state.jobs]) {
        const view = views.get(id);
        if (view && view.finished) continue;
        try {
          const job = await api(`/api/jobs/${id}`);
          renderJob(job);
          if (["done", "failed", "cancelled"].includes(job.state)) views.get(id).finished = true;
          else active = true;
        } catch (err) {
          state.jobs = state.jobs.filter((j) => j !== id); // gone (the server was restarted without --workdir)
          localStorage.setItem("artshield.jobs", JSON.stringify(state.jobs));
        }
      }
      if (!active) break;
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
  } finally {
    polling = false;
  }
}

async function main() {
  setupDrop();
  setupMask();
  $("#protect").addEventListener("click", submit);
  try {
    await loadConfig();
  } catch (err) {
    showError(`Could not reach the artshield server: ${err.message}`);
    return;
  }
  for (const id of [...state.jobs].reverse()) {
    try { renderJob(await api(`/api/jobs/${id}`)); } catch (err) { state.jobs = state.jobs.filter((j) => j !== id); }
  }
  localStorage.setItem("artshield.jobs", JSON.stringify(state.jobs));
  poll();
}

main();
