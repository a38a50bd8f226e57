// The reviewer's page: worklist and study view over the app's MONAI Label style API.
// Data only ever reaches the DOM as text (textContent), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, me: null, studies: [], study: null, image: 0 };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: the CSP allows no style attribute
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

// Requests that change something carry the session's CSRF token (the server refuses them without).
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.method && options.method !== "GET" && state.me && state.me.csrf_token) headers["X-CSRF-Token"] = state.me.csrf_token;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response.json();
}

const pct = (p) => (p == null ? "–" : (100 * p).toFixed(1) + " %");
const partName = (part) => (part || "UNKNOWN").replace(/^XR_/, "").toLowerCase().replace(/^./, (c) => c.toUpperCase());
const opposite = (finding) => (finding === "abnormal" ? "normal" : "abnormal");
const OPERATING_POINTS = { youden: "Youden index", pr_equal: "precision = recall", high_sensitivity: "high sensitivity",
                           high_specificity: "high specificity", fixed: "fixed threshold" };

function findingBadge(finding, uncertain) {
  const badge = el("span", { class: "badge " + (finding || "pending") }, finding ? finding.toUpperCase() : "PENDING");
  if (!uncertain) return badge;
  return el("span", {}, badge, " ", el("span", { class: "badge uncertain", title: "the ensemble is unsure" }, "UNCERTAIN"));
}

function stateBadge(review) {
  return el("span", { class: "state " + review }, review);
}

function probabilityBar(p, threshold) {
  if (p == null) return el("span", { class: "muted" }, "–");
  const bar = el("span", { class: "bar" },
    el("span", { class: "bar-fill " + (threshold != null && p > threshold ? "abnormal" : "normal"),
                 style: { width: `${(100 * p).toFixed(1)}%` } }));
  if (threshold != null) bar.append(el("span", { class: "bar-threshold", style: { left: `${(100 * threshold).toFixed(1)}%` } }));
  return el("span", { class: "probability" }, bar, el("span", { class: "number" }, pct(p)));
}

// -- worklist ----------------------------------------------------------------------------
async function loadWorklist() {
  const params = new URLSearchParams();
  if ($("filter-part").value) params.set("body_part", $("filter-part").value);
  if ($("filter-state").value) params.set("state", $("filter-state").value);
  const [filtered, all] = await Promise.all([api("/datastore/studies?" + params), api("/datastore/studies")]);
  state.studies = filtered.studies;
  const open = all.studies.filter((s) => s.analysed && s.review === "unreviewed").length;
  $("counts").textContent = `${open} to review · ${all.studies.length} studies`;
  renderWorklist();
}

function renderWorklist() {
  const rows = $("worklist-rows");
  rows.replaceChildren();
  for (const s of state.studies) {
    const flag = s.finding === "abnormal" ? el("span", { class: "dot abnormal", title: "abnormal" })
      : s.uncertain ? el("span", { class: "dot uncertain", title: "uncertain" }) : el("span", { class: "dot" });
    const row = el("tr", { class: "study-row " + s.review, dataset: { id: s.id }, tabindex: "0",
                           onclick: () => openStudy(s.id), onkeydown: (e) => { if (e.key === "Enter") openStudy(s.id); } },
      el("td", { class: "flag" }, flag),
      el("td", { class: "accession" }, s.accession_number || "—"),
      el("td", { class: "name-col" }, s.patient_name || ""),
      el("td", {}, partName(s.body_part)),
      el("td", {}, s.study_date || "—"),
      el("td", {}, s.analysed ? findingBadge(s.finding, s.uncertain) : el("span", { class: "muted" }, s.state)),
      el("td", {}, probabilityBar(s.probability, s.threshold)),
      el("td", { class: "num" }, s.images),
      el("td", {}, stateBadge(s.review)));
    rows.append(row);
  }
  $("worklist-empty").hidden = state.studies.length > 0;
}

function nextUnreviewed(afterId) {
  const list = state.studies.filter((s) => s.analysed);
  const start = afterId ? list.findIndex((s) => s.id === afterId) + 1 : 0;
  return [...list.slice(start), ...list.slice(0, start)].find((s) => s.review === "unreviewed" && s.id !== afterId);
}

function openStudy(id) { location.hash = "#/study/" + id; }

// -- study view --------------------------------------------------------------------------
async function showStudy(id) {
  const study = await api("/datastore/study?study=" + encodeURIComponent(id));
  state.study = study;
  $("comment").value = "";
  $("message").textContent = "";
  $("study-accession").textContent = "Accession " + (study.accession_number || "—");
  $("study-meta").textContent = [partName(study.body_part), study.study_date, study.description,
    `${study.images.length} image${study.images.length === 1 ? "" : "s"}`].filter(Boolean).join(" · ");
  $("study-patient").textContent = study.patient_name || "";
  $("study-finding").replaceChildren(findingBadge(study.finding, study.uncertain));
  $("finding-card").className = "finding-card " + (study.finding || "pending");
  $("study-probability").textContent = pct(study.probability);
  const threshold = study.threshold;
  $("study-operating-point").textContent = threshold == null ? "–"
    : `${OPERATING_POINTS[study.operating_point] || study.operating_point} · threshold ${pct(threshold)}` +
      (study.threshold_fitted_on ? ` (fitted on ${study.threshold_fitted_on === "ALL" ? "all parts" : partName(study.threshold_fitted_on)})` : "");
  $("study-uncertainty").textContent = study.uncertainty == null ? "–"
    : pct(study.uncertainty) + (study.uncertain ? " · uncertain" : "");
  $("gauge-fill").style.width = study.probability == null ? "0" : `${(100 * study.probability).toFixed(1)}%`;
  $("gauge-fill").className = "gauge-fill " + (study.finding || "");
  $("gauge-threshold").style.left = threshold == null ? "-10%" : `${(100 * threshold).toFixed(1)}%`;
  $("votes").replaceChildren(...study.members.map((m) => el("tr", {},
    el("td", {}, m.name), el("td", {}, probabilityBar(m.probability, threshold)),
    el("td", {}, findingBadge(m.vote, false)))));
  renderReview();
  renderThumbs();
  selectImage(0);
}

function renderReview() {
  const study = state.study;
  $("review-state").replaceChildren(stateBadge(study.review));
  $("review-state").className = "";
  const final = study.final;
  const model = study.finding;
  $("btn-accept").disabled = $("btn-override").disabled = !study.analysed || !canLabel();
  for (const id of ["btn-accept", "btn-override"]) $(id).title = canLabel() ? "" : "a viewer cannot label: a reviewer account is needed";
  $("btn-override").firstChild.textContent = model ? `Override to ${opposite(model)} ` : "Override ";
  $("btn-accept").firstChild.textContent = model ? `Accept ${model} ` : "Accept ";
  $("history").replaceChildren(...study.labels.slice().reverse().map((l) => el("li", {},
    el("span", { class: "when" }, new Date(l.time * 1000).toLocaleString()), " ",
    l.tag === "original" ? "model: " : `${who(l)}: `, findingBadge(l.finding, false),
    l.image ? el("span", { class: "muted" }, " (one image)") : "",
    l.comment ? el("div", { class: "comment" }, l.comment) : "")));
  if (final) $("message").textContent = `Final: ${final.finding} by ${who(final)}`;
}

// A DICOM person name ("Doe^Jane") as people write it ("Jane Doe"); other names as they are.
function personName(name) {
  if (!name || !name.includes("^")) return name || "";
  const [family, given, middle, prefix, suffix] = name.split("^");
  return [prefix, given, middle, family, suffix].filter(Boolean).join(" ");
}

// A label an API client saved without naming anyone says so instead of showing a blank name.
function who(label) {
  if (label.reviewer) return label.reviewer_name && label.reviewer_name !== label.reviewer
    ? `${personName(label.reviewer_name)} (${label.reviewer})` : label.reviewer;
  return label.client_id ? `unattributed API client (${label.client_id})` : "unattributed API client";
}

function renderThumbs() {
  $("thumbs").replaceChildren(...state.study.images.map((image, n) => el("button", {
    class: "thumb", dataset: { n }, title: `image ${n + 1}`, onclick: () => selectImage(n) },
    el("img", { src: "/datastore/image?image=" + image.id, alt: `image ${n + 1}`, loading: "lazy" }),
    el("span", {}, `${n + 1} · ${pct(image.probability)}`))));
}

function selectImage(n) {
  const images = state.study.images;
  if (!images.length) return;
  state.image = (n + images.length) % images.length;
  const image = images[state.image];
  $("radiograph").src = "/datastore/image?image=" + image.id;
  $("heatmap").hidden = !image.heatmap;
  $("no-heatmap").hidden = image.heatmap;
  if (image.heatmap) $("heatmap").src = "/datastore/heatmap?image=" + image.id;
  else $("heatmap").removeAttribute("src");
  $("image-probability").textContent = `Image ${state.image + 1}/${images.length} · ${pct(image.probability)}`;
  for (const thumb of $("thumbs").children) thumb.classList.toggle("active", Number(thumb.dataset.n) === state.image);
  applyHeatmapControls();
}

function applyHeatmapControls() {
  $("heatmap").style.opacity = $("heatmap-toggle").checked ? $("heatmap-opacity").value / 100 : 0;
}

const canLabel = () => Boolean(state.me) && ["reviewer", "admin"].includes(state.me.role);

// The signed-in person is the reviewer: the label carries no name of the page's choosing.
async function review(finding) {
  const study = state.study;
  if (!canLabel()) {
    $("message").textContent = "A viewer cannot label: a reviewer account is needed.";
    return;
  }
  let answer;
  try {
    answer = await api(`/datastore/label?image=${encodeURIComponent(study.id)}&tag=final`, {
      method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ finding, comment: $("comment").value }),
    });
  } catch (error) {
    $("message").textContent = error.message;
    return;
  }
  await showStudy(study.id);
  $("message").textContent = `Saved: ${finding} (${answer.review})` +
    (answer.sr_revised ? " · corrected SR queued for the PACS" : "");
  loadWorklist();
}

async function next() {
  await loadWorklist();
  const upcoming = nextUnreviewed(state.study && location.hash.startsWith("#/study/") ? state.study.id : null);
  if (upcoming) openStudy(upcoming.id);
  else { location.hash = "#/"; }
}

// -- routing and keys --------------------------------------------------------------------
async function route() {
  const match = location.hash.match(/^#\/study\/(\w+)/);
  $("worklist-view").hidden = Boolean(match);
  $("study-view").hidden = !match;
  try {
    if (match) await showStudy(match[1]);
    else await loadWorklist();
  } catch (error) {
    $("message").textContent = error.message;
  }
}

document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = ["TEXTAREA", "SELECT"].includes(target.tagName) ||
    (target.tagName === "INPUT" && !["range", "checkbox"].includes(target.type));
  if (target.type === "range" && event.key.startsWith("Arrow")) return;  // the slider's own keys
  if (event.key === "Escape") { if (typing) target.blur(); else location.hash = "#/"; return; }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const inStudy = !$("study-view").hidden && state.study;
  if (event.key === "n") next();
  else if (inStudy && event.key === "a" && state.study.finding) review(state.study.finding);
  else if (inStudy && event.key === "o" && state.study.finding) review(opposite(state.study.finding));
  else if (inStudy && event.key === "h") { $("heatmap-toggle").checked = !$("heatmap-toggle").checked; applyHeatmapControls(); }
  else if (inStudy && event.key === "ArrowRight") selectImage(state.image + 1);
  else if (inStudy && event.key === "ArrowLeft") selectImage(state.image - 1);
  else return;
  event.preventDefault();
});

async function signOut() {
  await api("/logout", { method: "POST" });
  location.assign("/");
}

async function start() {
  state.me = await api("/auth/me");
  $("user-name").textContent = state.me.open ? "not signed in (this machine only)" : personName(state.me.display_name);
  $("user-role").textContent = state.me.role;
  $("btn-signout").hidden = !state.me.csrf_token;  // a browser session (not the unconfigured local mode)
  $("btn-signout").addEventListener("click", signOut);
  $("filter-part").addEventListener("change", loadWorklist);
  $("filter-state").addEventListener("change", loadWorklist);
  $("heatmap-toggle").addEventListener("change", applyHeatmapControls);
  $("heatmap-opacity").addEventListener("input", applyHeatmapControls);
  $("btn-accept").addEventListener("click", () => review(state.study.finding));
  $("btn-override").addEventListener("click", () => review(opposite(state.study.finding)));
  $("btn-next").addEventListener("click", next);
  state.info = await api("/info/");
  document.body.classList.toggle("show-names", Boolean(state.info.show_patient_name));
  for (const part of state.info.body_parts) $("filter-part").append(el("option", { value: part }, partName(part)));
  window.addEventListener("hashchange", route);
  await route();
}

start();
