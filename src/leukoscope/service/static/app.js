// The review page: upload cells into a sample, review them class by class, sign off, export.
// Plain JavaScript served by the app itself; every request goes through api() so the token,
// errors and the 401 prompt are handled in one place.

const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem("leukoscope-token") || "",
  model: null,
  samples: [],
  sample: null,
  selected: null,
  showHeatmap: true,
};

const blobUrls = new Map();

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

class ApiError extends Error {}

async function api(path, { method = "GET", json } = {}) {
  const headers = authHeaders();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    throw await apiError(response.status, () => response.json());
  }
  return response;
}

async function apiError(status, readJson) {
  if (status === 401) {
    $("#token-form").hidden = false;
    $("#token-input").focus();
  }
  let error = `HTTP ${status}`;
  try {
    error = (await readJson()).error || error;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(error);
}

const apiJson = async (path, options) => (await api(path, options)).json();

function showMessage(text) {
  const box = $("#message");
  box.textContent = text;
  box.hidden = !text;
}

async function guarded(action) {
  try {
    showMessage("");
    await action();
  } catch (error) {
    showMessage(error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`);
  }
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// Images: plain URLs without a token (the browser caches them); with one, fetched with the
// header and shown from blob: URLs, since <img> cannot send headers.
function setImage(img, path) {
  if (!state.token) {
    img.src = path;
    return;
  }
  const cached = blobUrls.get(path);
  if (cached) {
    img.src = cached;
    return;
  }
  api(path)
    .then((response) => response.blob())
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      blobUrls.set(path, url);
      img.src = url;
    })
    .catch(() => img.classList.add("broken"));
}

async function download(path, filename) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = element("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const cellImage = (cell) => `/api/cells/${cell.id}/image`;
const reviewer = () => $("#reviewer").value.trim();

// ---- model and samples -------------------------------------------------------------------

async function loadModel() {
  state.model = await apiJson("/api/model");
  const { arch, classes, limits, metrics } = state.model;
  const accuracy = metrics && typeof metrics.accuracy === "number" ? ` · test accuracy ${percent(metrics.accuracy)}` : "";
  $("#model-info").textContent = `Model ${arch} · ${classes.join(", ")}${accuracy}`;
  $("#limits").textContent =
    `JPEG, PNG, TIFF or BMP · up to ${(limits.max_file_bytes / 2 ** 20).toFixed(0)} MB per image · ` +
    `sent in batches of at most ${limits.max_files}`;
  const keys = classes.map((name, i) => `${i + 1} ${name}`).join(" · ");
  $("#shortcuts").innerHTML = "";
  $("#shortcuts").append(
    element("strong", { text: "Keys: " }),
    `← → select a cell · ${keys} · Enter accept the suggestion · H heatmap`,
  );
}

async function loadSamples() {
  state.samples = await apiJson("/api/samples");
  const list = $("#sample-list");
  list.innerHTML = "";
  for (const sample of state.samples) {
    const current = state.sample && state.sample.id === sample.id;
    const status = sample.signoff ? "signed off" : `${sample.unidentified_count} unidentified`;
    list.append(
      element(
        "li",
        {},
        element(
          "button",
          {
            type: "button",
            class: "sample-link",
            "aria-current": current ? "true" : false,
            onclick: () => guarded(() => openSample(sample.id)),
          },
          element("span", { class: "name", text: sample.name }),
          element("span", { class: "muted", text: `${sample.cell_count} cells · ${status}` }),
        ),
      ),
    );
  }
}

async function openSample(id) {
  state.sample = await apiJson(`/api/samples/${id}`);
  if (!state.sample.cells.some((cell) => cell.id === state.selected)) state.selected = null;
  renderSample();
  await loadSamples();
}

async function createSample(event) {
  event.preventDefault();
  const input = $("#sample-name");
  const sample = await apiJson("/api/samples", { method: "POST", json: { name: input.value } });
  input.value = "";
  state.selected = null;
  await openSample(sample.id);
  $("#file-input").focus();
}

// ---- upload --------------------------------------------------------------------------------

function batches(files) {
  const { max_files: maxFiles, max_request_bytes: maxBytes } = state.model.limits;
  const result = [];
  let current = [];
  let size = 0;
  for (const file of files) {
    const over = current.length >= maxFiles || size + file.size > maxBytes * 0.95;
    if (current.length && over) {
      result.push(current);
      current = [];
      size = 0;
    }
    current.push(file);
    size += file.size;
  }
  if (current.length) result.push(current);
  return result;
}

// XMLHttpRequest rather than fetch: only XHR reports upload progress.
function sendBatch(sampleId, files, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/samples/${sampleId}/cells`);
    for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => onProgress(event.loaded));
    xhr.addEventListener("load", async () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else if (xhr.response && xhr.response.detail && Array.isArray(xhr.response.detail)) {
        resolve({ added: [], rejected: xhr.response.detail });
      } else reject(await apiError(xhr.status, () => xhr.response));
    });
    xhr.addEventListener("error", () => reject(new ApiError("upload failed: network error")));
    xhr.send(form);
  });
}

async function uploadFiles(fileList) {
  const sample = state.sample;
  if (!sample || sample.signoff) return;
  const files = [...fileList];
  if (!files.length) return;
  const tooBig = files.filter((file) => file.size > state.model.limits.max_file_bytes);
  const usable = files.filter((file) => !tooBig.includes(file));
  const errors = $("#upload-errors");
  errors.innerHTML = "";
  for (const file of tooBig) errors.append(element("li", { text: `${file.name}: file too large` }));
  const total = usable.reduce((sum, file) => sum + file.size, 0) || 1;
  const progress = $("#upload-progress");
  const status = $("#upload-status");
  progress.hidden = false;
  progress.value = 0;
  let done = 0;
  let added = 0;
  try {
    for (const batch of batches(usable)) {
      const batchBytes = batch.reduce((sum, file) => sum + file.size, 0);
      status.textContent = `Uploading ${usable.length} image(s)…`;
      const result = await sendBatch(sample.id, batch, (loaded) => {
        progress.value = (100 * (done + Math.min(loaded, batchBytes))) / total;
      });
      done += batchBytes;
      added += result.added.length;
      for (const item of result.rejected) {
        errors.append(element("li", { text: `${item.name}: ${item.error}` }));
      }
    }
    progress.value = 100;
    const rejected = errors.children.length;
    status.textContent = `${added} image(s) classified${rejected ? `, ${rejected} rejected` : ""}.`;
  } finally {
    progress.hidden = true;
    $("#file-input").value = "";
    await openSample(sample.id);
  }
}

// ---- review --------------------------------------------------------------------------------

const labelOf = (cell) => cell.label ?? "unidentified";

function groups(sample) {
  const order = ["unidentified", ...sample.classes];
  return order
    .map((name) => ({ name, cells: sample.cells.filter((cell) => labelOf(cell) === name) }))
    .filter((group) => group.name === "unidentified" || group.cells.length);
}

const galleryOrder = (sample) => groups(sample).flatMap((group) => group.cells);

function renderGallery() {
  const gallery = $("#gallery");
  gallery.innerHTML = "";
  const readOnly = Boolean(state.sample.signoff);
  for (const group of groups(state.sample)) {
    const heading = group.name === "unidentified" ? "Unidentified — classify before sign-off" : group.name;
    const list = element("ul", { class: "cells" });
    for (const cell of group.cells) {
      const img = element("img", { alt: "", loading: "lazy", width: 72, height: 72 });
      setImage(img, cellImage(cell));
      const guess = cell.label ? "" : ` (model: ${cell.prediction.label} ${percent(cell.prediction.confidence)})`;
      list.append(
        element(
          "li",
          {},
          element(
            "button",
            {
              type: "button",
              class: `cell${cell.corrections.length ? " corrected" : ""}`,
              "data-cell": cell.id,
              "aria-pressed": String(cell.id === state.selected),
              "aria-label": `${cell.original_name}: ${labelOf(cell)}${guess}`,
              title: `${cell.original_name} · ${labelOf(cell)}${guess}`,
              onclick: () => select(cell.id),
            },
            img,
          ),
        ),
      );
    }
    if (!group.cells.length) list.append(element("li", { class: "muted", text: readOnly ? "None." : "None left." }));
    gallery.append(
      element(
        "section",
        { class: `group group-${group.name}`, "data-group": group.name },
        element("h4", { text: `${heading} (${group.cells.length})` }),
        list,
      ),
    );
  }
}

function renderResults() {
  const body = $("#results-body");
  body.innerHTML = "";
  for (const cell of state.sample.cells) {
    const img = element("img", { alt: "", loading: "lazy", width: 40, height: 40 });
    setImage(img, cellImage(cell));
    const row = element(
      "tr",
      { "data-cell": cell.id, class: cell.id === state.selected ? "selected" : "" },
      element("td", {}, img),
      element(
        "td",
        {},
        element("button", { type: "button", class: "link", text: cell.original_name, onclick: () => select(cell.id) }),
      ),
      element("td", { text: cell.prediction.label }),
      element("td", { class: "number", text: percent(cell.prediction.confidence) }),
      element("td", { text: cell.prediction.uncertain ? "uncertain" : "" }),
      element("td", { text: labelOf(cell) }),
      element("td", { text: cell.corrections.length ? cell.corrections.at(-1).reviewer : "" }),
    );
    body.append(row);
  }
}

function renderDetail() {
  const body = $("#detail-body");
  body.innerHTML = "";
  const cell = state.sample.cells.find((c) => c.id === state.selected);
  if (!cell) {
    body.append(element("p", { class: "muted", text: "Click a cell or a row to see it here." }));
    return;
  }
  const image = element("img", { class: "large", alt: `Cell ${cell.original_name}` });
  const heatmap = element("img", {
    class: "large",
    alt: `Grad-CAM heatmap of ${cell.original_name} for ${cell.prediction.label}`,
  });
  setImage(image, cellImage(cell));
  const pictures = element("div", { class: "pictures" }, element("figure", {}, image, element("figcaption", { text: "Cell" })));
  if (state.showHeatmap) {
    setImage(heatmap, `/api/cells/${cell.id}/heatmap`);
    pictures.append(element("figure", {}, heatmap, element("figcaption", { text: `Grad-CAM: ${cell.prediction.label}` })));
  }
  const probabilities = Object.entries(cell.prediction.probabilities)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([name, p]) => `${name} ${percent(p)}`)
    .join(" · ");
  const readOnly = Boolean(state.sample.signoff);
  const buttons = element("div", { class: "class-buttons", role: "group", "aria-label": "Classify as" });
  state.sample.classes.forEach((name, i) => {
    buttons.append(
      element("button", {
        type: "button",
        disabled: readOnly ? "" : false,
        "aria-pressed": String(cell.label === name),
        "aria-keyshortcuts": String(i + 1),
        text: `${i + 1} ${name}`,
        onclick: () => guarded(() => relabel(cell.id, name)),
      }),
    );
  });
  const history = element("ul", { class: "history" });
  for (const c of cell.corrections) {
    const when = new Date(c.created_at).toLocaleString();
    history.append(element("li", { text: `${c.from_label ?? "unidentified"} → ${c.to_label} by ${c.reviewer}, ${when}` }));
  }
  body.append(
    element("p", { class: "cell-name", text: cell.original_name }),
    pictures,
    element("p", {}, element("strong", { text: labelOf(cell) }), ` · model: ${probabilities}`),
    element(
      "button",
      { type: "button", class: "secondary", "aria-keyshortcuts": "H", onclick: toggleHeatmap },
      state.showHeatmap ? "Hide heatmap (H)" : "Show heatmap (H)",
    ),
    buttons,
    history,
  );
}

function toggleHeatmap() {
  state.showHeatmap = !state.showHeatmap;
  renderDetail();
}

function select(cellId) {
  state.selected = cellId;
  for (const node of document.querySelectorAll("[data-cell]")) {
    const on = node.dataset.cell === cellId;
    if (node.tagName === "TR") node.classList.toggle("selected", on);
    else node.setAttribute("aria-pressed", String(on));
  }
  const button = $(`#gallery [data-cell="${cellId}"]`);
  if (button && document.activeElement !== button) button.focus({ preventScroll: false });
  renderDetail();
}

function moveSelection(step) {
  const cells = galleryOrder(state.sample);
  if (!cells.length) return;
  const index = cells.findIndex((cell) => cell.id === state.selected);
  const next = index < 0 ? 0 : Math.min(cells.length - 1, Math.max(0, index + step));
  select(cells[next].id);
}

async function relabel(cellId, label) {
  if (!reviewer()) {
    showMessage("Enter your name as reviewer first.");
    $("#reviewer").focus();
    return;
  }
  const before = galleryOrder(state.sample);
  const index = before.findIndex((cell) => cell.id === cellId);
  const result = await apiJson(`/api/cells/${cellId}/label`, {
    method: "POST",
    json: { label, reviewer: reviewer() },
  });
  const sample = state.sample;
  sample.cells = sample.cells.map((cell) => (cell.id === cellId ? result.cell : cell));
  sample.unidentified_count = result.unidentified_count;
  sample.differential = result.differential;
  // Stay in the reviewer's flow: move on to the cell that followed this one.
  const following = before.slice(index + 1).find((cell) => cell.id !== cellId);
  state.selected = following ? following.id : cellId;
  renderSample();
  select(state.selected);
  $("#upload-status").textContent = `Cell reclassified as ${label}.`;
}

function onKey(event) {
  if (!state.sample || event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.target.closest("input, textarea, select")) return;
  const digit = Number.parseInt(event.key, 10);
  const cell = state.sample.cells.find((c) => c.id === state.selected);
  const editable = cell && !state.sample.signoff;
  // Enter on another button (a class, sign-off) must keep activating that button.
  const onCell = event.target === document.body || event.target.closest("#gallery");
  if (event.key === "ArrowRight" || event.key === "ArrowDown") moveSelection(1);
  else if (event.key === "ArrowLeft" || event.key === "ArrowUp") moveSelection(-1);
  else if ((event.key === "h" || event.key === "H") && cell) toggleHeatmap();
  else if (editable && digit >= 1 && digit <= state.sample.classes.length) {
    guarded(() => relabel(cell.id, state.sample.classes[digit - 1]));
  } else if (editable && event.key === "Enter" && !cell.label && onCell) {
    guarded(() => relabel(cell.id, cell.prediction.label));
  } else return;
  event.preventDefault();
}

// ---- differential and sign-off ---------------------------------------------------------------

const pct = (value) => (value === null || value === undefined ? "–" : `${value.toFixed(1)}%`);
const range = (low, high) => (low === null || low === undefined ? "–" : `${low}–${high}%`);

function renderDifferential(differential) {
  const body = $("#differential-body");
  body.innerHTML = "";
  const head = ["Class", "Count", "%", "95% CI", "Reference", "Status"].map((text, i) =>
    element("th", { scope: "col", class: i && i < 5 ? "number" : "", text }),
  );
  const rows = differential.rows.map((row) =>
    element(
      "tr",
      { "data-class": row.class, class: row.status === "low" || row.status === "high" ? "flagged" : "" },
      element("th", { scope: "row", text: row.class }),
      element("td", { class: "number", "data-count": "", text: String(row.count) }),
      element("td", { class: "number", text: pct(row.percent) }),
      element("td", { class: "number", text: row.ci_low === null ? "–" : `${row.ci_low.toFixed(1)}–${row.ci_high.toFixed(1)}` }),
      element("td", { class: "number", text: range(row.reference_low, row.reference_high) }),
      element("td", { text: row.status ?? "–" }),
    ),
  );
  const total = element(
    "tr",
    {},
    element("th", { scope: "row", text: "White cells" }),
    element("td", { class: "number", "data-total": "", text: String(differential.white_cells_counted) }),
    element("td", { colspan: 4 }),
  );
  body.append(
    element(
      "table",
      { class: "differential" },
      element("caption", { class: "visually-hidden", text: `Differential, ${differential.interval}` }),
      element("thead", {}, element("tr", {}, ...head)),
      element("tbody", {}, ...rows),
      element("tfoot", {}, total),
    ),
  );
  const lines = [`Unidentified, not counted until classified: ${differential.for_review.total}.`];
  if (differential.erythroblasts) {
    const per100 = differential.erythroblasts.per_100_white_cells;
    lines.push(`Erythroblasts: ${differential.erythroblasts.count} (${per100 === null ? "–" : per100.toFixed(1)} per 100 white cells).`);
  }
  if (differential.platelets) lines.push(`Platelets (not in the differential): ${differential.platelets.count}.`);
  for (const line of lines) body.append(element("p", { class: "muted", text: line }));
  const flags = element("ul", { class: "flags", "aria-label": "Flags" });
  for (const flag of differential.flags) {
    flags.append(element("li", { text: flag.definite ? flag.text : `${flag.text} (interval overlaps the reference)` }));
  }
  if (!differential.flags.length) flags.append(element("li", { class: "muted", text: "No flags." }));
  body.append(element("h4", { text: "Flags" }), flags, element("p", { class: "disclaimer", text: differential.disclaimer }));
}

function renderSignoff() {
  const sample = state.sample;
  const stateText = $("#signoff-state");
  const button = $("#signoff-button");
  if (sample.signoff) {
    const when = new Date(sample.signoff.signed_at).toLocaleString();
    stateText.textContent = `Signed off by ${sample.signoff.reviewer} on ${when}. The sample is read-only.`;
    button.hidden = true;
    return;
  }
  button.hidden = false;
  const left = sample.unidentified_count;
  button.disabled = left > 0 || sample.cells.length === 0;
  stateText.textContent = left
    ? `${left} unidentified cell(s) must be classified first.`
    : sample.cells.length
      ? "All cells are classified."
      : "Add images first.";
}

async function signOff() {
  if (!reviewer()) {
    showMessage("Enter your name as reviewer first.");
    $("#reviewer").focus();
    return;
  }
  state.sample = await apiJson(`/api/samples/${state.sample.id}/signoff`, {
    method: "POST",
    json: { reviewer: reviewer() },
  });
  renderSample();
  await loadSamples();
}

function renderSample() {
  const sample = state.sample;
  $("#empty-hint").hidden = true;
  $("#sample-body").hidden = false;
  $("#sample-title").textContent = sample.name;
  const status = sample.signoff
    ? `Signed off by ${sample.signoff.reviewer} — read-only`
    : `${sample.cells.length} cells · ${sample.unidentified_count} unidentified`;
  $("#sample-status").textContent = status;
  $("#upload").hidden = Boolean(sample.signoff);
  renderGallery();
  renderResults();
  renderDetail();
  renderDifferential(sample.differential);
  renderSignoff();
}

// ---- wiring ------------------------------------------------------------------------------

function wire() {
  $("#reviewer").value = localStorage.getItem("leukoscope-reviewer") || "";
  $("#reviewer").addEventListener("change", () => localStorage.setItem("leukoscope-reviewer", reviewer()));
  $("#new-sample").addEventListener("submit", (event) => guarded(() => createSample(event)));
  $("#file-input").addEventListener("change", (event) => guarded(() => uploadFiles(event.target.files)));
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    guarded(() => uploadFiles(event.dataTransfer.files));
  });
  $("#signoff-button").addEventListener("click", () => guarded(signOff));
  $("#download-csv").addEventListener("click", () =>
    guarded(() => download(`/api/samples/${state.sample.id}/cells.csv`, `sample-${state.sample.id}.csv`)),
  );
  $("#open-report").addEventListener("click", () =>
    guarded(async () => {
      const blob = await (await api(`/api/samples/${state.sample.id}/report.html`)).blob();
      window.open(URL.createObjectURL(blob), "_blank", "noopener");
    }),
  );
  $("#download-reviewed").addEventListener("click", () =>
    guarded(() => download("/api/reviewed.zip", "leukoscope-reviewed.zip")),
  );
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token-input").value.trim();
    sessionStorage.setItem("leukoscope-token", state.token);
    $("#token-form").hidden = true;
    guarded(start);
  });
  document.addEventListener("keydown", onKey);
}

async function start() {
  await loadModel();
  await loadSamples();
}

wire();
guarded(start);
