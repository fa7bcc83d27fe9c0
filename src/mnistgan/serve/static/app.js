// The demo page: controls -> query string -> the API; an API error is shown as it is sent.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SEED = 2 ** 31;
let gridUrl = null;
let walkUrl = null;
let walkSeed = 1;
// Each change of the controls starts a request; only the latest one's answer is shown, so a
// slow earlier answer can never overwrite a newer one.
const latest = { grid: 0, walk: 0 };

let classes = [];

// The grid's query: "one row per digit" asks for count / digits of each (at least one).
function params() {
  const p = new URLSearchParams({ n: $("count").value, seed: $("seed").value.trim(), noise: $("noise").value });
  const digit = $("digit").value;
  if (digit === "rows") {
    p.set("by_class", "true");
    p.set("n", Math.max(1, Math.floor(Number($("count").value) / classes.length)) || $("count").value);
  } else if (digit !== "") {
    p.set("digit", digit);
  }
  return p;
}

// The page's state lives in its address (?n=&seed=&noise=&digit=&walk=), so a grid can be
// bookmarked or shared as a link. Values the model doesn't offer are ignored; the rest go to
// the server as typed, which answers bad ones with its own message.
function restoreFromAddress() {
  const q = new URLSearchParams(location.search);
  if (q.has("n")) $("count").value = q.get("n");
  if (q.has("seed")) $("seed").value = q.get("seed");
  for (const id of ["noise", "digit"]) {
    if (q.has(id) && [...$(id).options].some((o) => o.value === q.get(id))) $(id).value = q.get(id);
  }
  if (/^\d+$/.test(q.get("walk") || "")) walkSeed = Number(q.get("walk"));
}

function rememberInAddress() {
  const q = new URLSearchParams({ n: $("count").value, seed: $("seed").value.trim(), noise: $("noise").value });
  if ($("digit").value) q.set("digit", $("digit").value);
  q.set("walk", walkSeed);
  history.replaceState(null, "", `?${q}`);
}

// Per slot, so that a walk arriving after a failed grid does not hide the grid's error.
const errors = { grid: "", walk: "" };

function showError(slot, message) {
  errors[slot] = message;
  const shown = errors.grid || errors.walk;
  $("error").textContent = shown;
  $("error").hidden = !shown;
}

// Fetch an image for the `latest` slot `slot` ("grid" or "walk"): its object URL, or null
// once the error is shown, or undefined if a newer request has superseded this one.
async function load(url, slot) {
  const ticket = ++latest[slot];
  let response, body;
  try {
    response = await fetch(url);
    body = response.ok ? await response.blob() : await response.text();
  } catch (e) {
    body = null;
  }
  if (ticket !== latest[slot]) return undefined;
  if (body === null) {
    showError(slot, "the server did not answer: is `mnistgan serve` still running?");
    return null;
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = JSON.parse(body).error || message; } catch (e) { /* not JSON */ }
    showError(slot, message);
    return null;
  }
  showError(slot, "");
  return URL.createObjectURL(body);
}

function swap(img, url, previous) {
  img.src = url;
  if (previous) URL.revokeObjectURL(previous);
  return url;
}

async function update() {
  rememberInAddress();
  const p = params();
  const url = await load(`/api/grid.png?${p}`, "grid");
  if (!url) return;
  gridUrl = swap($("grid"), url, gridUrl);
  // So that "ready" means the first grid is on screen; a newer swap interrupting it is no error.
  await $("grid").decode().catch(() => {});
  $("download").href = url;
  $("download").download = `mnistgan-seed${p.get("seed")}.png`;
  $("download").setAttribute("aria-disabled", "false");
  await updateWalk();
}

async function updateWalk() {
  const p = params();
  const q = new URLSearchParams({ seed_a: p.get("seed"), seed_b: walkSeed, noise: p.get("noise"), scale: 1 });
  if (p.has("digit")) q.set("digit", p.get("digit"));  // one row each: the walk keeps the first digit
  const url = await load(`/api/interpolation.gif?${q}`, "walk");
  if (url) walkUrl = swap($("walk"), url, walkUrl);
}

const randomSeed = () => Math.floor(Math.random() * MAX_SEED);

async function start() {
  const info = await (await fetch("/api/info")).json();
  $("model").textContent = `${info.name}: preset ${info.preset}` +
    (info.conditional ? `, class-conditional (digits ${info.classes.join(", ")})` : "") +
    ` · trained on ${info.noise} noise`;
  $("count").max = info.max_count;
  for (const name of info.noises) $("noise").add(new Option(name + (name === info.noise ? " (trained)" : ""), name));
  $("noise").value = info.noise;
  if (info.conditional) {
    classes = info.classes;
    $("digit").add(new Option("one row each", "rows"));
    for (const d of info.classes) $("digit").add(new Option(String(d), String(d)));
    $("digit-label").hidden = false;
  }
  restoreFromAddress();
  for (const id of ["count", "seed", "noise", "digit"]) $(id).addEventListener("change", update);
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); update(); });
  $("reroll").addEventListener("click", () => { $("seed").value = randomSeed(); update(); });
  $("new-walk").addEventListener("click", () => { walkSeed = randomSeed(); rememberInAddress(); updateWalk(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "r" && !(e.target instanceof HTMLInputElement)) $("reroll").click();
  });
  await update();
  document.body.dataset.ready = "true";
}

start();
