// The review page: upload cells into a sample, review them class by class, sign off, export.
// Plain JavaScript served by the app itself; every request goes through api() so the token,
// errors and the 401 prompt are handled in one place.

const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem("leukoscope-token") || "",
  model: null,
  identity: { reviewer: null, named_reviewers: false },
  samples: [],
  sample: null,
  selected: null,
  showHeatmap: true,
  showField: false,
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
const reviewer = () => state.identity.reviewer || $("#reviewer").value.trim();
const EXCLUDED = "excluded:";
const exclusionName = (category) => state.model.exclusions[category] || category;
const callText = (call) =>
  call === null || call === undefined ? "unidentified" : call.startsWith(EXCLUDED) ? `excluded (${call.slice(EXCLUDED.length).replaceAll("_", " ")})` : call;

// A file name from a sample's name: what a file system accepts, never a path.
const fileName = (name, extension) => `${name.replace(/[\x00-\x1f\x7f\\/:*?"<>|]+/g, "_").replace(/^[ .]+|[ .]+$/g, "") || "sample"}.${extension}`;

function requireReviewer() {
  if (reviewer()) return true;
  showMessage("Enter your name as reviewer first.");
  $("#reviewer").focus();
  return false;
}

// ---- model and samples -------------------------------------------------------------------

async function loadModel() {
  state.model = await apiJson("/api/model");
  state.identity = await apiJson("/api/me");
  const { name, arch, sha256, classes, limits, metrics, fallback } = state.model;
  // The card's test scores are the model's own, recorded at release: a fallback's calls come on top.
  const alone = fallback ? " on its own" : "";
  const accuracy = metrics && typeof metrics.accuracy === "number" ? ` · test accuracy ${percent(metrics.accuracy)}${alone}` : "";
  const info = $("#model-info");
  info.innerHTML = "";
  info.append(
    `Model ${name}${name === arch ? "" : ` (${arch})`} · sha256 `,
    element("code", { title: sha256, text: sha256.slice(0, 12) }),
    ` · ${classes.join(", ")}${accuracy}`,
    fallback ? ` · the cells it is unsure of are called by ${fallback}` : "",
  );
  if (state.identity.reviewer) {
    $("#reviewer").value = state.identity.reviewer;
    $("#reviewer").readOnly = true;
    $("#reviewer-note").textContent = "Named by your token; recorded on every change.";
    $("#reviewer-note").hidden = false;
  }
  $("#limits").textContent =
    `JPEG, PNG, TIFF, BMP, WebP or GIF · up to ${(limits.max_file_bytes / 2 ** 20).toFixed(0)} MB per image · ` +
    `sent in batches of at most ${limits.max_files}`;
  const keys = classes.map((name, i) => `${i + 1} ${name}`).join(" · ");
  $("#shortcuts").innerHTML = "";
  $("#shortcuts").append(
    element("strong", { text: "Keys: " }),
    `← → select a cell · ${keys} · Enter accept the model's call · X artefact · H heatmap · F field (for cells of field images)`,
  );
}

async function loadSamples() {
  state.samples = await apiJson("/api/samples");
  renderSampleList();
}

function sampleStatus(sample) {
  if (sample.signoff) return sample.amendment_count ? "signed off, amended" : "signed off";
  const excluded = sample.excluded_count ? ` · ${sample.excluded_count} excluded` : "";
  return `${sample.unidentified_count} unidentified${excluded}`;
}

function renderSampleList() {
  const list = $("#sample-list");
  list.innerHTML = "";
  for (const sample of state.samples) {
    const current = state.sample && state.sample.id === sample.id;
    list.append(
      element(
        "li",
        {},
        element(
          "a",
          {
            href: `#sample=${sample.id}`,
            class: "sample-link",
            "data-sample": sample.id,
            "aria-current": current ? "true" : false,
          },
          element("span", { class: "name", text: sample.name }),
          element("span", { class: "muted", text: `${sample.cell_count} cells · ${sampleStatus(sample)}` }),
        ),
      ),
    );
  }
}

// Keep the sidebar's entry of the open sample in step with it, without a reload.
function syncSummary() {
  const sample = state.sample;
  const entry = state.samples.find((s) => s.id === sample.id);
  if (!entry) return;
  Object.assign(entry, {
    cell_count: sample.cells.length,
    unidentified_count: sample.unidentified_count,
    excluded_count: sample.excluded_count,
    signoff: sample.signoff,
    amendment_count: sample.amendment_count,
  });
  renderSampleList();
}

async function openSample(id) {
  state.sample = await apiJson(`/api/samples/${id}`);
  if (!state.sample.cells.some((cell) => cell.id === state.selected)) state.selected = null;
  if (location.hash !== `#sample=${id}`) history.pushState(null, "", `#sample=${id}`);
  document.title = `${state.sample.name} · leukoscope`;
  renderSample();
  await loadSamples();
}

// The URL names the open sample, so a reload or a shared link opens it again.
function sampleFromUrl() {
  const match = /^#sample=([0-9a-f]{32})$/.exec(location.hash);
  return match ? match[1] : null;
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
    const kind = $("#fields-mode").checked ? "fields" : "cells";
    xhr.open("POST", `/api/samples/${sampleId}/${kind}`);
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
  let fields = 0;
  try {
    for (const batch of batches(usable)) {
      const batchBytes = batch.reduce((sum, file) => sum + file.size, 0);
      status.textContent = `Uploading ${usable.length} image(s)…`;
      const result = await sendBatch(sample.id, batch, (loaded) => {
        progress.value = (100 * (done + Math.min(loaded, batchBytes))) / total;
      });
      done += batchBytes;
      added += result.added.length;
      fields += result.fields ? result.fields.length : 0;
      for (const item of result.rejected) {
        errors.append(element("li", { text: `${item.name}: ${item.error}` }));
      }
    }
    progress.value = 100;
    const rejected = errors.children.length;
    const what = $("#fields-mode").checked ? `${added} white cell(s) found in ${fields} field(s) and classified` : `${added} image(s) classified`;
    status.textContent = `${what}${rejected ? `, ${rejected} rejected` : ""}.`;
  } finally {
    progress.hidden = true;
    $("#file-input").value = "";
    await openSample(sample.id);
  }
}

// ---- review --------------------------------------------------------------------------------

const labelOf = (cell) => cell.label ?? (cell.exclusion ? "excluded" : "unidentified");
const callOf = (cell) => (cell.exclusion ? EXCLUDED + cell.exclusion : cell.label);
// A classified cell of a shifted sample that has only the model's call: a person must confirm
// or correct it before sign-off (the server's differential counts them as to_confirm).
const toConfirm = (cell) =>
  Boolean(state.sample.differential.to_confirm && !state.sample.signoff && cell.label && !cell.corrections.length);
// A cell waiting for a person's call: unidentified, or one to confirm. Enter gives it the
// model's call (its guess, or its confident class).
const waitsForCall = (cell) => labelOf(cell) === "unidentified" || toConfirm(cell);
const toConfirmText = (sample) => (sample.differential.to_confirm ? ` · ${sample.differential.to_confirm} to confirm` : "");

function groups(sample) {
  const order = ["unidentified", ...sample.classes, "excluded"];
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
    const heading =
      group.name === "unidentified"
        ? "Unidentified — classify or exclude before sign-off"
        : group.name === "excluded"
          ? "Excluded — not counted"
          : group.name;
    const confirm = group.cells.filter(toConfirm).length;
    const list = element("ul", { class: "cells" });
    for (const cell of group.cells) {
      const img = element("img", { alt: "", loading: "lazy", width: 72, height: 72 });
      setImage(img, cellImage(cell));
      const guess = cell.label || cell.exclusion ? "" : ` (${caller(cell)}: ${cell.prediction.label} ${percent(cell.prediction.confidence)})`;
      const why = cell.exclusion ? ` (${exclusionName(cell.exclusion)})` : toConfirm(cell) ? " (the model's call, to confirm)" : "";
      list.append(
        element(
          "li",
          {},
          element(
            "button",
            {
              type: "button",
              class: `cell${cell.corrections.length ? " corrected" : ""}${toConfirm(cell) ? " to-confirm" : ""}`,
              "data-cell": cell.id,
              "aria-pressed": String(cell.id === state.selected),
              "aria-label": `${cell.original_name}: ${labelOf(cell)}${why}${guess}`,
              title: `${cell.original_name} · ${labelOf(cell)}${why}${guess}`,
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
        element("h4", { text: `${heading} (${group.cells.length}${confirm ? `, ${confirm} to confirm` : ""})` }),
        list,
        ...(confirm
          ? [
              element("button", {
                type: "button",
                class: "secondary confirm-group",
                text: `Confirm the ${confirm} shown as ${group.name}`,
                onclick: () => guarded(() => confirmCells(group.cells.filter(toConfirm))),
              }),
            ]
          : []),
      ),
    );
  }
}

// Who made a cell's call: the model, or its fallback model on a cell the model was unsure of.
const caller = (cell) => (cell.prediction.fallback ? "fallback model" : "model");

// The model's flag, saying so when its card's fallback model made the call on a cell it was unsure of.
function flagText(prediction) {
  if (!prediction.uncertain) return "";
  return prediction.fallback ? "uncertain (fallback's call)" : "uncertain";
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
      element("td", { text: flagText(cell.prediction) }),
      element("td", { text: cell.exclusion ? `excluded: ${cell.exclusion.replaceAll("_", " ")}` : labelOf(cell) }),
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
    // The class the caption names (after a renormalisation, not necessarily the loaded model's call).
    const target = cell.prediction.label ? `?target=${encodeURIComponent(cell.prediction.label)}` : "";
    setImage(heatmap, `/api/cells/${cell.id}/heatmap${target}`);
    pictures.append(element("figure", {}, heatmap, element("figcaption", { text: `Grad-CAM: ${cell.prediction.label}` })));
  }
  const field = cell.field_id && state.sample.fields.find((f) => f.id === cell.field_id);
  if (field && state.showField) pictures.append(fieldFigure(cell, field));
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
        onclick: () => guarded(() => relabel(cell.id, { label: name })),
      }),
    );
  });
  const excludes = element("div", { class: "class-buttons exclude-buttons", role: "group", "aria-label": "Exclude as" });
  for (const category of Object.keys(state.model.exclusions)) {
    excludes.append(
      element("button", {
        type: "button",
        disabled: readOnly ? "" : false,
        "aria-pressed": String(cell.exclusion === category),
        "aria-keyshortcuts": category === "artefact" ? "X" : false,
        title: exclusionName(category),
        text: `Exclude: ${category.replaceAll("_", " ")}`,
        onclick: () => guarded(() => relabel(cell.id, { exclude: category })),
      }),
    );
  }
  const confirm = toConfirm(cell) && !readOnly
    ? [element("button", { type: "button", "aria-keyshortcuts": "Enter", text: `Confirm ${cell.label} (Enter)`, onclick: () => guarded(() => relabel(cell.id, { label: cell.label })) })]
    : [];
  const history = element("ul", { class: "history" });
  for (const c of cell.corrections) {
    const when = new Date(c.created_at).toLocaleString();
    const amended = c.amendment_id ? " (amendment)" : "";
    const change = c.from_label === c.to_label ? `Confirmed ${callText(c.to_label)}` : `${callText(c.from_label)} → ${callText(c.to_label)}`;
    history.append(element("li", { text: `${change} by ${c.reviewer}, ${when}${amended}` }));
  }
  for (const c of state.sample.comments.filter((comment) => comment.cell_id === cell.id)) {
    history.append(element("li", { text: `“${c.text}” — ${c.reviewer}, ${new Date(c.created_at).toLocaleString()}` }));
  }
  const original = cell.duplicate_of && state.sample.cells.find((c) => c.id === cell.duplicate_of);
  const lookalike = cell.possible_duplicate_of && state.sample.cells.find((c) => c.id === cell.possible_duplicate_of);
  const notes = [];
  if (original) {
    const same = cell.field_id ? `The same cell as ${original.original_name}, in an overlapping field` : `Same bytes as ${original.original_name}`;
    notes.push(element("p", { class: "duplicate", text: `${same}: excluded as a duplicate.` }));
  }
  if (lookalike) {
    notes.push(element("p", { class: "duplicate", text: `Looks like ${lookalike.original_name}, in a field whose overlap with this one is unknown: a possible duplicate (exclude it as a duplicate, or classify it).` }));
  }
  if (cell.prediction.fallback) {
    notes.push(element("p", { class: "duplicate", text: "The model was unsure of this cell: the call is its fallback model's." }));
  }
  if (cell.edge) notes.push(element("p", { class: "duplicate", text: "Cut by the field's edge: part of the cell may be missing." }));
  const commentForm = element(
    "form",
    {
      class: "row",
      onsubmit: (event) => {
        event.preventDefault();
        guarded(() => addComment(event.target.elements.text.value, cell.id));
      },
    },
    element("input", { name: "text", maxlength: 2000, required: "", placeholder: "Comment on this cell", "aria-label": "Comment on this cell" }),
    element("button", { type: "submit", class: "secondary", text: "Add" }),
  );
  body.append(
    element("p", { class: "cell-name", text: cell.original_name }),
    ...notes,
    pictures,
    element("p", {}, element("strong", { text: cell.exclusion ? `excluded: ${exclusionName(cell.exclusion)}` : labelOf(cell) }), ` · ${caller(cell)}: ${probabilities}`),
    ...confirm,
    element(
      "button",
      { type: "button", class: "secondary", "aria-keyshortcuts": "H", onclick: toggleHeatmap },
      state.showHeatmap ? "Hide heatmap (H)" : "Show heatmap (H)",
    ),
    ...(field
      ? [
          element(
            "button",
            { type: "button", class: "secondary", "aria-keyshortcuts": "F", onclick: toggleField },
            state.showField ? "Hide field (F)" : "Show in its field (F)",
          ),
        ]
      : []),
    buttons,
    excludes,
    history,
    commentForm,
  );
}

function toggleHeatmap() {
  state.showHeatmap = !state.showHeatmap;
  renderDetail();
}

function toggleField() {
  state.showField = !state.showField;
  renderDetail();
}

// The field image with the cell's box drawn on it (percentages, so it follows the image's size).
function fieldFigure(cell, field) {
  const image = element("img", { class: "field-image", alt: `Field ${field.original_name}` });
  setImage(image, `/api/fields/${field.id}/image`);
  const box = element("div", { class: "field-box" });
  box.style.left = `${(100 * cell.x_min) / field.width}%`;
  box.style.top = `${(100 * cell.y_min) / field.height}%`;
  box.style.width = `${(100 * (cell.x_max - cell.x_min)) / field.width}%`;
  box.style.height = `${(100 * (cell.y_max - cell.y_min)) / field.height}%`;
  return element(
    "figure",
    { class: "field-figure" },
    element("div", { class: "field-view" }, image, box),
    element("figcaption", { text: `In ${field.original_name}` }),
  );
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
  // The panel is sticky; bring it back if it was scrolled away (a click must show a change):
  // the panel's own scroll back to the cell (a comment typed below moved it), then the page.
  $(".side").scrollTop = 0;
  const detail = $("#detail");
  const box = detail.getBoundingClientRect();
  if (box.top < 0 || box.top > window.innerHeight - 80) detail.scrollIntoView({ block: "nearest" });
}

function moveSelection(step) {
  const cells = galleryOrder(state.sample);
  if (!cells.length) return;
  const index = cells.findIndex((cell) => cell.id === state.selected);
  const next = index < 0 ? 0 : Math.min(cells.length - 1, Math.max(0, index + step));
  select(cells[next].id);
}

async function relabel(cellId, call) {
  if (!requireReviewer()) return;
  const before = galleryOrder(state.sample);
  const index = before.findIndex((cell) => cell.id === cellId);
  const confirming = Boolean(call.label) && before[index]?.label === call.label;
  const result = await apiJson(`/api/cells/${cellId}/label`, {
    method: "POST",
    json: { ...call, reviewer: reviewer() },
  });
  const sample = state.sample;
  sample.cells = sample.cells.map((cell) => (cell.id === cellId ? result.cell : cell));
  sample.unidentified_count = result.unidentified_count;
  sample.excluded_count = result.excluded_count;
  sample.differential = result.differential;
  // Stay in the reviewer's flow: move on to the cell that followed this one or, while cells
  // of a shifted sample wait to be confirmed, to the next one waiting for a person's call
  // (from the top again after the last).
  const rest = before.slice(index + 1).filter((cell) => cell.id !== cellId);
  const waiting = sample.differential.to_confirm
    ? [...rest, ...before.slice(0, index)].find(waitsForCall)
    : undefined;
  const following = waiting ?? rest[0];
  state.selected = following ? following.id : cellId;
  renderSample();
  select(state.selected);
  syncSummary();
  $("#upload-status").textContent = confirming
    ? `Cell confirmed as ${call.label}.`
    : call.label
      ? `Cell reclassified as ${call.label}.`
      : `Cell excluded (${exclusionName(call.exclude)}).`;
}

// A class group looked over and confirmed at once (correct the odd ones out first): only the
// cells shown are sent, never any added meanwhile.
async function confirmCells(cells) {
  if (!requireReviewer()) return;
  state.sample = await apiJson(`/api/samples/${state.sample.id}/confirmations`, {
    method: "POST",
    json: { cell_ids: cells.map((cell) => cell.id), reviewer: reviewer() },
  });
  renderSample();
  syncSummary();
  $("#upload-status").textContent = `${cells.length} cell(s) confirmed.`;
}

async function addComment(text, cellId = null) {
  if (!requireReviewer()) return;
  const comment = await apiJson(`/api/samples/${state.sample.id}/comments`, {
    method: "POST",
    json: { text, cell_id: cellId, reviewer: reviewer() },
  });
  state.sample.comments.push(comment);
  renderComments();
  renderDetail();
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
  else if ((event.key === "f" || event.key === "F") && cell && cell.field_id) toggleField();
  else if (editable && digit >= 1 && digit <= state.sample.classes.length) {
    guarded(() => relabel(cell.id, { label: state.sample.classes[digit - 1] }));
  } else if (editable && (event.key === "x" || event.key === "X")) {
    guarded(() => relabel(cell.id, { exclude: "artefact" }));
  } else if (editable && event.key === "Enter" && waitsForCall(cell) && onCell) {
    guarded(() => relabel(cell.id, { label: cell.label ?? cell.prediction.label }));
  } else return;
  event.preventDefault();
}

// ---- differential and sign-off ---------------------------------------------------------------

const pct = (value) => (value === null || value === undefined ? "–" : `${value.toFixed(1)}%`);
const range = (low, high) => (low === null || low === undefined ? "–" : `${low}–${high}%`);

function renderDifferential(differential) {
  const body = $("#differential-body");
  body.innerHTML = "";
  if (differential.shift && differential.shift.shifted) {
    body.append(element("p", { class: "shift-warning", role: "alert", text: `Warning: ${differential.shift.message}` }));
  }
  body.append(...renormalisation(differential));
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
      "div",
      { class: "table-scroll" },
      element(
      "table",
      { class: "differential" },
      element("caption", { class: "visually-hidden", text: `Differential, ${differential.interval}` }),
      element("thead", {}, element("tr", {}, ...head)),
      element("tbody", {}, ...rows),
      element("tfoot", {}, total),
      ),
    ),
  );
  const lines = [`Unidentified, not counted until classified: ${differential.for_review.total}.`];
  const excluded = Object.entries(differential.excluded || {}).filter(([, n]) => n);
  if (excluded.length) {
    lines.push(`Excluded, not counted: ${excluded.map(([name, n]) => `${name.replaceAll("_", " ")} ${n}`).join(", ")}.`);
  }
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
  const withheld = (differential.withheld_flags || []).length;
  if (withheld) {
    flags.append(element("li", { class: "withheld", text: `${withheld} flag(s) withheld until a person has confirmed or corrected every cell.` }));
  }
  if (!differential.flags.length && !withheld) flags.append(element("li", { class: "muted", text: "No flags." }));
  body.append(element("h4", { text: "Flags" }), flags, element("p", { class: "disclaimer", text: differential.disclaimer }));
}

// What renormalising did to the sample, and the button that does it (for a shifted sample, or
// again for one renormalised before that has cells added since).
function renormalisation(differential) {
  const sample = state.sample;
  const lines = sample.renormalisations.map((r) =>
    element("p", {
      class: "muted renormalised",
      text: `Renormalised by ${r.reviewer}, ${new Date(r.created_at).toLocaleString()}: the model's normalisation statistics were re-estimated on ${r.cells} of this sample's cells, and every cell was classified again.`,
    }),
  );
  const since = sample.classified_since_renormalised;
  if (since) lines.push(element("p", { class: "muted", text: `${since} cell(s) added since were classified by the model as loaded.` }));
  const shifted = Boolean(differential.shift && differential.shift.shifted);
  const again = sample.renormalisations.length > 0;
  if (state.model.renormalisable && !sample.signoff && (again ? since > 0 : shifted)) {
    lines.push(
      element("button", {
        type: "button",
        id: "renormalise-button",
        text: again ? "Renormalise again" : "Renormalise on this sample's cells",
        onclick: () => guarded(renormalise),
      }),
    );
  }
  return lines;
}

async function renormalise() {
  if (!requireReviewer()) return;
  const button = $("#renormalise-button");
  button.disabled = true;
  button.textContent = "Renormalising… (up to half a minute)";
  try {
    state.sample = await apiJson(`/api/samples/${state.sample.id}/renormalise`, {
      method: "POST",
      json: { reviewer: reviewer() },
    });
  } finally {
    renderSample(); // the new calls, or (refused) the button as it was
  }
  syncSummary();
}

function renderSignoff() {
  const sample = state.sample;
  const stateText = $("#signoff-state");
  const button = $("#signoff-button");
  const amendForm = $("#amend-form");
  const amendments = $("#amendments");
  amendments.innerHTML = "";
  for (const amendment of sample.amendments) {
    const changes = amendment.corrections
      .map((c) => `${sample.cells.find((cell) => cell.id === c.cell_id)?.original_name}: ${callText(c.from_label)} → ${callText(c.to_label)}`)
      .join("; ");
    amendments.append(
      element("li", { text: `Amended by ${amendment.reviewer}, ${new Date(amendment.created_at).toLocaleString()}: ${amendment.reason} (${changes})` }),
    );
  }
  if (sample.signoff) {
    const when = new Date(sample.signoff.signed_at).toLocaleString();
    stateText.textContent = `Signed off by ${sample.signoff.reviewer} on ${when}. The sample is read-only.`;
    button.hidden = true;
    amendForm.hidden = false;
    const select = $("#amend-call");
    const current = select.value;
    select.innerHTML = "";
    for (const name of sample.classes) select.append(element("option", { value: name, text: name }));
    for (const category of Object.keys(state.model.exclusions)) {
      select.append(element("option", { value: EXCLUDED + category, text: `excluded: ${exclusionName(category)}` }));
    }
    if (current) select.value = current;
    return;
  }
  amendForm.hidden = true;
  button.hidden = false;
  const left = sample.unidentified_count;
  const confirm = sample.differential.to_confirm;
  button.disabled = left > 0 || confirm > 0 || sample.cells.length === 0;
  stateText.textContent = left
    ? `${left} unidentified cell(s) must be classified or excluded first.`
    : confirm
      ? `${confirm} cell(s) have only the model's call: on a sample unlike the training data, confirm (Enter) or correct each first.`
      : sample.cells.length
        ? "All cells are classified or excluded."
        : "Add images first.";
}

function renderComments() {
  const list = $("#comment-list");
  list.innerHTML = "";
  const names = new Map(state.sample.cells.map((cell) => [cell.id, cell.original_name]));
  for (const c of state.sample.comments) {
    const about = c.cell_id ? ` (on ${names.get(c.cell_id)})` : "";
    list.append(element("li", { text: `“${c.text}”${about} — ${c.reviewer}, ${new Date(c.created_at).toLocaleString()}` }));
  }
  if (!state.sample.comments.length) list.append(element("li", { class: "muted", text: "No comments." }));
}

// A confirmation that shows what will be signed: counts, exclusions, who signs.
function confirmSignOff() {
  if (!requireReviewer()) return;
  const sample = state.sample;
  const differential = sample.differential;
  const excluded = Object.entries(differential.excluded || {}).filter(([, n]) => n);
  $("#signoff-summary").textContent =
    `${sample.name}: ${differential.white_cells_counted} white cells counted` +
    (excluded.length ? `, ${excluded.map(([name, n]) => `${n} ${name.replaceAll("_", " ")}`).join(", ")} excluded` : "") +
    `. Signed by ${reviewer()}.`;
  $("#signoff-dialog").showModal();
}

async function signOff() {
  state.sample = await apiJson(`/api/samples/${state.sample.id}/signoff`, {
    method: "POST",
    json: { reviewer: reviewer() },
  });
  renderSample();
  syncSummary();
}

async function amend(event) {
  event.preventDefault();
  if (!requireReviewer()) return;
  if (!state.selected) {
    showMessage("Select the cell to amend first.");
    return;
  }
  const value = $("#amend-call").value;
  const change = value.startsWith(EXCLUDED) ? { exclude: value.slice(EXCLUDED.length) } : { label: value };
  state.sample = await apiJson(`/api/samples/${state.sample.id}/amendments`, {
    method: "POST",
    json: { reason: $("#amend-reason").value, reviewer: reviewer(), changes: [{ cell_id: state.selected, ...change }] },
  });
  $("#amend-reason").value = "";
  renderSample();
  syncSummary();
}

function renderSample() {
  const sample = state.sample;
  $("#empty-hint").hidden = true;
  $("#sample-body").hidden = false;
  $("#sample-title").textContent = sample.name;
  const excluded = sample.excluded_count ? ` · ${sample.excluded_count} excluded` : "";
  const amended = sample.amendment_count ? ` · amended ${sample.amendment_count}×` : "";
  const status = sample.signoff
    ? `Signed off by ${sample.signoff.reviewer} — read-only${amended}`
    : `${sample.cells.length} cells · ${sample.unidentified_count} unidentified${excluded}${toConfirmText(sample)}`;
  $("#sample-status").textContent = status;
  $("#upload").hidden = Boolean(sample.signoff);
  renderGallery();
  renderResults();
  renderDetail();
  renderDifferential(sample.differential);
  renderSignoff();
  renderComments();
}

// ---- wiring ------------------------------------------------------------------------------

function wire() {
  $("#reviewer").value = localStorage.getItem("leukoscope-reviewer") || "";
  $("#reviewer").addEventListener("change", () => localStorage.setItem("leukoscope-reviewer", $("#reviewer").value.trim()));
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
  $("#signoff-button").addEventListener("click", confirmSignOff);
  $("#signoff-dialog").addEventListener("close", () => {
    if ($("#signoff-dialog").returnValue === "confirm") guarded(signOff);
  });
  $("#amend-form").addEventListener("submit", (event) => guarded(() => amend(event)));
  $("#comment-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      await addComment($("#comment-text").value);
      $("#comment-text").value = "";
    });
  });
  $("#sample-list").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-sample]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    guarded(() => openSample(link.dataset.sample));
  });
  window.addEventListener("popstate", () => {
    const id = sampleFromUrl();
    if (id && (!state.sample || state.sample.id !== id)) guarded(() => openSample(id));
  });
  $("#download-csv").addEventListener("click", () =>
    guarded(() => download(`/api/samples/${state.sample.id}/cells.csv`, fileName(state.sample.name, "csv"))),
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
  const id = sampleFromUrl();
  if (id) await openSample(id);
}

wire();
guarded(start);
