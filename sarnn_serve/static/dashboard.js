// sarnn-serve live dashboard: plain ES module, no dependencies.
//
// Polls GET /v1/models/{name}/stats (1 s), GET /v1/sessions (2.5 s) and the chosen session's
// totals (1 s); draws the chosen session's update raster from the watch WebSocket
// /v1/sessions/{id}/watch, reconnecting when it drops.
//
// A model card shows two different savings: multiply-adds saved, counted from update counts
// (bookkeeping), and measured time saved, engine seconds against what the dense graph would
// have spent (measured on dense calls, calibrated at load for sparse calls), with the share of
// calls routed to a path that skips work (the native kernel or the sparse graph) and the routing
// mode.
//
// With API keys on, the key typed into the top bar (kept in sessionStorage) goes with every
// request as `Authorization: Bearer` and on the watch socket as `access_token`; a 401 pauses
// polling until another key is entered. When the server does not list sessions (403), a session
// is picked by pasting its id or by `?session=<id>` in the URL.

const WINDOW = 300; // steps shown in the raster
const STATS_MS = 1000;
const SESSIONS_MS = 2500;
const SESSION_MS = 1000;
const SPARK_POINTS = 60;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;
const IDLE_SWITCH_MS = 5000; // when following, move on from a session quiet for this long
const KEY_STORAGE = "sarnn-serve.api-key";
const LISTING_OFF_NOTE =
  "listing is off on this server: paste a session id, or use an admin API key";
const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1",
  "#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac",
];
const INK = [27, 36, 51]; // updated neuron
const PAPER = [255, 255, 255]; // neuron kept its state
const NO_DATA = [243, 245, 248]; // no step received for this column (yet)

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- formatting

const intFmt = new Intl.NumberFormat("en-US");

function fmtInt(n) {
  return intFmt.format(Math.round(n));
}

function fmtSI(n) {
  const sign = n < 0 ? "\u2212" : "";
  const a = Math.abs(n);
  if (a < 1000) return sign + fmtInt(a);
  const units = ["k", "M", "G", "T", "P", "E"];
  let v = a;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${sign}${v.toFixed(digits)} ${units[i]}`;
}

function fmtPct(x) {
  const v = x * 100;
  return `${v < 0 ? "\u2212" : ""}${Math.abs(v).toFixed(1)}%`;
}

function fmtSeconds(s) {
  const sign = s < 0 ? "\u2212" : "";
  const a = Math.abs(s);
  if (a === 0) return "0 s";
  if (a < 1e-3) return `${sign}${(a * 1e6).toFixed(a < 1e-5 ? 1 : 0)} \u00b5s`;
  if (a < 1) return `${sign}${(a * 1e3).toFixed(a < 1e-2 ? 2 : 1)} ms`;
  return `${sign}${a.toFixed(a < 10 ? 2 : 1)} s`;
}

function fmtRate(x) {
  return x < 10 ? x.toFixed(1) : fmtInt(x);
}

function setValue(el, value, text, signed = false) {
  if (!el) return;
  el.dataset.value = String(value);
  el.textContent = text;
  if (signed) {
    el.classList.toggle("neg", value < 0);
  }
}

// A model that updates (nearly) every neuron spends its coordinator on top of the dense cell's
// work: its multiply-adds "saved" fall below zero. Shown as "none", the overhead in the tooltip.
const NO_SAVING = "none";

function noSavingNote(overhead) {
  return (
    "No saving: (nearly) every neuron updated, and the coordinator that decides which update " +
    `costs ${overhead} on top of the dense cell's multiply-adds.`
  );
}

function setSaving(el, value, text, overhead) {
  if (!el) return;
  if (value < 0) {
    setValue(el, value, NO_SAVING);
    el.title = noSavingNote(overhead);
  } else {
    setValue(el, value, text);
    el.removeAttribute("title");
  }
}

function clearValue(el) {
  if (!el) return;
  delete el.dataset.value;
  el.textContent = "\u2014";
  el.classList.remove("neg");
}

function classColour(labels, label) {
  let i = labels.indexOf(label);
  if (i < 0) {
    i = 0;
    for (const ch of String(label)) i = (i * 31 + ch.charCodeAt(0)) >>> 0;
  }
  if (i < PALETTE.length && labels.length <= PALETTE.length) return PALETTE[i];
  return `hsl(${(i * 137.508) % 360}, 55%, 52%)`;
}

function hexToRgb(colour) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = colour;
  const hex = probe.fillStyle; // normalised to #rrggbb
  return [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16));
}

// ---------------------------------------------------------------- http

async function getJSON(path) {
  const key = auth.key;
  const headers = { accept: "application/json" };
  if (key) headers.authorization = `Bearer ${key}`;
  const res = await fetch(path, { headers, cache: "no-store" });
  if (res.status === 401) rejectKey(key);
  if (!res.ok) {
    const err = new Error(`${path}: HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return res.json();
}

function report(err) {
  // A 401 is shown in the page instead (top bar, session note).
  if (err.status !== 401) console.warn(err);
}

function every(ms, fn) {
  // Run fn now and then ms after each run ends (never overlapping); paused while the server
  // rejects the API key.
  const loop = async () => {
    try {
      if (!auth.rejected) await fn();
    } catch (err) {
      report(err);
    }
    setTimeout(loop, ms);
  };
  loop();
}

// ---------------------------------------------------------------- state

const models = new Map(); // name -> {card, el, spark: number[]}
let serverOk = null;

const auth = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  rejected: false, // the server answered 401 to this key: wait for another one
};

const params = new URLSearchParams(location.search);
const session = {
  id: params.get("session") || null,
  pinned: Boolean(params.get("session")), // chosen by the user or the URL; else follow newest
  model: null,
  threshold: null,
  ended: false,
  known: [], // [{id, model}] from GET /v1/sessions, newest first
  listingOff: false, // GET /v1/sessions answered 403: pick sessions by id
  chosenAt: 0, // performance.now() when chosen
  lastStepAt: 0, // performance.now() of the last watch event
};

const watch = { ws: null, timer: null, attempt: 0, forId: null };

const raster = {
  hidden: 0,
  latest: -1,
  index: new Float64Array(WINDOW).fill(-1), // step index stored in each ring slot
  labels: new Array(WINDOW).fill(null),
  counts: new Uint16Array(WINDOW),
  masks: new Uint8Array(0), // WINDOW x hidden
  segments: [], // run-length predictions: {label, first, last}
  dirty: true,
};

function setServer(ok, text) {
  if (serverOk === ok && ok) {
    $("server-text").textContent = text;
    return;
  }
  serverOk = ok;
  $("server-dot").className = `dot ${ok ? "ok" : "bad"}`;
  $("server-text").textContent = text;
}

function setWatch(kind, text) {
  $("watch-dot").className = `dot ${kind}`;
  $("watch-text").textContent = text;
}

// ---------------------------------------------------------------- API key

function authMessage() {
  return auth.key ? "API key unknown" : "API key required";
}

function rejectKey(key) {
  // Only a 401 for the key in use counts: an answer to a key since replaced is stale.
  if (key !== auth.key || auth.rejected) return;
  auth.rejected = true;
  closeWatch();
  renderAuth();
}

function renderAuth() {
  const message = auth.rejected ? authMessage() : "";
  $("api-key").classList.toggle("bad", auth.rejected);
  if (auth.rejected) {
    setServer(false, message);
    setWatch("bad", message);
  }
  if (!models.size) $("models-empty").textContent = message ? `${message}.` : "Loading models\u2026";
  renderPicker();
}

function setKey(value) {
  const key = value.trim();
  if (key === auth.key && !auth.rejected) return;
  auth.key = key;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  auth.rejected = false;
  session.listingOff = false;
  session.known = [];
  session.ended = false;
  renderAuth();
  // Poll now rather than at the next tick, and reopen the watch socket with the new key.
  pollStats().catch(report);
  pollSessions().catch(report);
  connectWatch();
  pollSession().catch(report);
}

// ---------------------------------------------------------------- models

async function loadModels() {
  const list = await getJSON("/v1/models");
  const root = $("models");
  const tpl = $("model-card");
  $("models-empty").hidden = list.length > 0;
  if (!list.length) $("models-empty").textContent = "No models loaded.";
  for (const card of list) {
    if (models.has(card.name)) continue;
    const el = tpl.content.firstElementChild.cloneNode(true);
    el.dataset.model = card.name;
    el.querySelector(".model-name").textContent = card.name;
    const acc = card.evaluation?.streaming_accuracy;
    const bits = [
      `${String(card.cell).toUpperCase()} \u00b7 H ${card.hidden} \u00b7 ${card.n_features} features`,
      `${card.n_classes} classes`,
      `\u03c4 ${card.threshold}`,
      `v${card.version}`,
    ];
    if (typeof acc === "number") bits.push(`test accuracy ${fmtPct(acc)}`);
    el.querySelector(".model-meta").textContent = bits.join("  \u00b7  ");
    root.appendChild(el);
    models.set(card.name, { card, el, spark: [] });
  }
}

function q(el, testid) {
  return el.querySelector(`[data-testid="${testid}"]`);
}

function showStats(m, s) {
  const el = m.el;
  const lm = s.last_minute;
  setValue(q(el, "steps-per-s"), lm.steps_per_s, fmtRate(lm.steps_per_s));
  setValue(q(el, "update-rate"), s.update_rate, s.steps ? fmtPct(s.update_rate) : "\u2014");
  setValue(q(el, "update-rate-minute"), lm.update_rate, lm.steps ? fmtPct(lm.update_rate) : "\u2014");
  const overhead = `${fmtSI(-s.macs_saved)} (${fmtPct(-s.saving)})`;
  setSaving(q(el, "macs-saved"), s.macs_saved, fmtSI(s.macs_saved), overhead);
  setSaving(q(el, "macs-saved-pct"), s.saving, s.steps ? fmtPct(s.saving) : "\u2014", overhead);
  const minute = lm.steps ? fmtPct(lm.saving) : "\u2014";
  setSaving(q(el, "saving-minute"), lm.saving, minute, fmtPct(-lm.saving));
  setValue(q(el, "active-sessions"), s.active_sessions, fmtInt(s.active_sessions));
  setValue(q(el, "steps-total"), s.steps, fmtInt(s.steps));
  setValue(q(el, "updates-total"), s.updates, fmtSI(s.updates));
  showEngine(el, s.engine);
  showDegradation(el, s.degradation);
  m.spark.push(lm.steps_per_s);
  if (m.spark.length > SPARK_POINTS) m.spark.shift();
  drawSpark(q(el, "steps-spark"), m.spark);
}

function showEngine(el, e) {
  // The stats' `engine` object: measured engine seconds and which path ran the calls.
  const calls = Object.values(e.calls).reduce((a, b) => a + b, 0);
  const sparse = calls - (e.calls.dense || 0);
  const share = calls ? sparse / calls : 0;
  const shown = (fmt, x) => (calls ? fmt(x) : "\u2014");
  const saved = e.measured_time_saved;
  const savedS = e.measured_time_saved_s;
  const denseS = e.dense_equivalent_seconds;
  setValue(q(el, "time-saved"), saved, shown(fmtPct, saved), true);
  setValue(q(el, "time-saved-s"), savedS, shown(fmtSeconds, savedS), true);
  setValue(q(el, "dense-equivalent-s"), denseS, shown(fmtSeconds, denseS));
  setValue(q(el, "sparse-share"), share, shown(fmtPct, share));
  setValue(q(el, "sparse-calls"), sparse, fmtInt(sparse));
  setValue(q(el, "engine-calls"), calls, fmtInt(calls));
  const routing = q(el, "routing");
  routing.dataset.value = e.routing;
  const skipping = e.graphs.some((g) => g !== "dense");
  routing.textContent = skipping ? e.routing : `${e.routing} (dense only)`;
}

function showDegradation(el, d) {
  // The stats' `degradation` object: off, or the level and the sessions it holds now.
  const level = q(el, "degrade-level");
  if (!d || !d.enabled) {
    level.dataset.value = "off";
    level.textContent = "off";
    for (const id of ["degrade-added", "degraded-sessions"]) q(el, id).textContent = "\u2014";
    return;
  }
  setValue(level, d.level, `level ${fmtInt(d.level)}`);
  setValue(q(el, "degrade-added"), d.threshold_added, d.threshold_added.toFixed(2));
  setValue(q(el, "degraded-sessions"), d.degraded_sessions, fmtInt(d.degraded_sessions));
}

async function pollStats() {
  if (!models.size) {
    try {
      await loadModels();
    } catch (err) {
      if (err.status !== 401) setServer(false, "server unreachable");
      throw err;
    }
  }
  try {
    const results = await Promise.all(
      [...models.keys()].map((name) => getJSON(`/v1/models/${encodeURIComponent(name)}/stats`)),
    );
    results.forEach((s) => models.get(s.model) && showStats(models.get(s.model), s));
    setServer(true, `live \u00b7 ${new Date().toLocaleTimeString("en-GB")}`);
  } catch (err) {
    if (err.status !== 401) setServer(false, "server unreachable");
    throw err;
  }
}

function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  return [w, h, dpr];
}

function drawSpark(canvas, values) {
  const [w, h, dpr] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  const max = Math.max(...values, 1e-9);
  const pad = 2 * dpr;
  const x = (i) => (i / (SPARK_POINTS - 1)) * w;
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  const off = SPARK_POINTS - values.length;
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i + off), y(v)) : ctx.moveTo(x(i + off), y(v))));
  ctx.strokeStyle = "#2f6fde";
  ctx.lineWidth = 1.5 * dpr;
  ctx.stroke();
  ctx.lineTo(x(values.length - 1 + off), h);
  ctx.lineTo(x(off), h);
  ctx.closePath();
  ctx.fillStyle = "rgba(47, 111, 222, 0.10)";
  ctx.fill();
}

// ---------------------------------------------------------------- sessions

function sessionLabel(s) {
  return `${s.id} \u00b7 ${s.model}`;
}

function autoLabel() {
  if (auth.rejected || session.listingOff) return "Session list unavailable";
  return session.known.length ? "\u21bb Follow most recent" : "No active sessions yet";
}

function noteText() {
  if (auth.rejected) return `${authMessage()}: enter a key in the API key field at the top`;
  return session.listingOff ? LISTING_OFF_NOTE : "";
}

function renderNote() {
  const note = $("session-note");
  note.textContent = noteText();
  note.hidden = !note.textContent;
}

function renderPicker() {
  const select = $("session-select");
  const ids = session.known.map((s) => s.id);
  if (session.id && !ids.includes(session.id)) ids.push(session.id);
  const want = [autoLabel(), ...ids].join("|");
  if (select.dataset.ids !== want) {
    select.dataset.ids = want;
    select.replaceChildren();
    select.add(new Option(autoLabel(), "auto"));
    for (const s of session.known) select.add(new Option(sessionLabel(s), s.id));
    if (session.id && !session.known.some((s) => s.id === session.id)) {
      select.add(new Option(`${session.id} (not recently active)`, session.id));
    }
  }
  select.value = session.id || "auto";
  renderChip();
  renderNote();
}

function renderChip() {
  const bits = [];
  if (session.model) bits.push(session.model);
  if (session.threshold !== null) bits.push(`\u03c4 ${session.threshold}`);
  if (session.id && !session.pinned) bits.push("following newest");
  $("session-model").textContent = bits.join(" \u00b7 ");
}

async function pollSessions() {
  if (session.listingOff) return;
  try {
    session.known = await getJSON("/v1/sessions");
  } catch (err) {
    if (err.status !== 403) throw err;
    session.listingOff = true; // a server setting: ask again only when the key changes
    session.known = [];
    renderPicker();
    return;
  }
  const newest = session.known[0];
  if (!session.pinned && newest && newest.id !== session.id) {
    // Following: take the most recently active session when there is none, when ours is gone,
    // or when ours has been quiet for a while (so several live sessions do not make it flap).
    const stillThere = session.known.some((s) => s.id === session.id);
    const quietFor = performance.now() - Math.max(session.lastStepAt, session.chosenAt);
    if (!session.id || !stillThere || session.ended || quietFor > IDLE_SWITCH_MS) {
      choose(newest.id, false);
    }
  }
  const entry = session.known.find((s) => s.id === session.id);
  if (entry && !session.model) session.model = entry.model;
  renderPicker();
}

function choose(id, pinned) {
  session.pinned = pinned;
  const url = new URL(location.href);
  if (pinned && id) url.searchParams.set("session", id);
  else url.searchParams.delete("session");
  history.replaceState(null, "", url);
  if (id === session.id && !session.ended) {
    renderPicker();
    return;
  }
  session.id = id;
  session.model = session.known.find((s) => s.id === id)?.model || null;
  session.threshold = null;
  session.ended = false;
  session.chosenAt = performance.now();
  session.lastStepAt = 0;
  watch.attempt = 0;
  resetSessionView();
  renderPicker();
  connectWatch();
  pollSession().catch(() => {});
}

function resetSessionView() {
  for (const id of ["session-steps", "session-update-rate", "session-macs-saved"]) clearValue($(id));
  $("session-macs-saved-pct").textContent = "";
  $("latest-label").textContent = "\u2014";
  $("latest-step").textContent = "\u2014";
  $("latest-updates").textContent = "\u2014";
  $("latest-swatch").style.background = "transparent";
  raster.latest = -1;
  raster.index.fill(-1);
  raster.labels.fill(null);
  raster.counts.fill(0);
  raster.segments = [];
  raster.dirty = true;
  const overlay = $("raster-overlay");
  overlay.hidden = false;
  overlay.textContent = session.id ? "Waiting for steps\u2026" : "No session selected";
  renderPredictions();
  renderLegend();
}

const totals = { inFlight: false, last: 0 };

function refreshTotalsSoon() {
  // New steps arrived: refresh the totals now rather than at the next 1 s poll (at most 4/s).
  if (!totals.inFlight && performance.now() - totals.last > 250) pollSession().catch(() => {});
}

async function pollSession() {
  if (!session.id || session.ended || totals.inFlight) return;
  const id = session.id;
  let s;
  totals.inFlight = true;
  try {
    s = await getJSON(`/v1/sessions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404 && id === session.id) endSession("session ended");
    throw err;
  } finally {
    totals.inFlight = false;
    totals.last = performance.now();
  }
  if (id !== session.id) return;
  if (session.model !== s.model) {
    session.model = s.model;
    renderPicker();
    renderLegend();
  }
  session.threshold = s.threshold;
  renderChip();
  setValue($("session-steps"), s.steps, fmtInt(s.steps));
  setValue($("session-update-rate"), s.update_rate, s.steps ? fmtPct(s.update_rate) : "\u2014");
  const pct = s.macs_dense ? s.macs_saved / s.macs_dense : 0;
  const overhead = `${fmtSI(-s.macs_saved)} (${fmtPct(-pct)})`;
  setSaving($("session-macs-saved"), s.macs_saved, fmtSI(s.macs_saved), overhead);
  const pctText = s.macs_dense && pct >= 0 ? `${fmtPct(pct)} of dense` : "";
  setValue($("session-macs-saved-pct"), pct, pctText);
}

function endSession(text) {
  session.ended = true;
  closeWatch();
  setWatch("bad", text);
}

// ---------------------------------------------------------------- watch socket

function closeWatch() {
  clearTimeout(watch.timer);
  watch.timer = null;
  if (watch.ws) {
    const ws = watch.ws;
    watch.ws = null;
    ws.onclose = ws.onmessage = ws.onerror = null;
    ws.close();
  }
}

function watchUrl(id) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const url = new URL(`${proto}://${location.host}/v1/sessions/${encodeURIComponent(id)}/watch`);
  if (auth.key) url.searchParams.set("access_token", auth.key); // browsers cannot set headers
  return url.href;
}

function connectWatch() {
  closeWatch();
  const id = session.id;
  if (!id) {
    setWatch("", "no session");
    return;
  }
  if (auth.rejected) return;
  const key = auth.key;
  const ws = new WebSocket(watchUrl(id));
  watch.ws = ws;
  watch.forId = id;
  setWatch("wait", watch.attempt ? "reconnecting\u2026" : "connecting\u2026");
  ws.onopen = () => {
    watch.attempt = 0;
    setWatch("ok", "watching live");
  };
  ws.onmessage = (msg) => {
    let event;
    try {
      event = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (event.type === "error") {
      if (event.error?.code === "unauthorized") rejectKey(key);
      else endSession(event.error?.message || "session ended");
      return;
    }
    ingest(event);
  };
  ws.onclose = (ev) => {
    if (watch.ws !== ws) return;
    watch.ws = null;
    if (ev.code === 4401) {
      rejectKey(key);
      return;
    }
    if (ev.code === 4404) {
      endSession("session ended");
      return;
    }
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** watch.attempt);
    watch.attempt += 1;
    setWatch("wait", `disconnected \u00b7 retrying in ${(delay / 1000).toFixed(1)} s`);
    watch.timer = setTimeout(() => {
      if (session.id === id && !session.ended) connectWatch();
    }, delay);
  };
}

function ensureHidden(h) {
  if (raster.hidden === h) return;
  raster.hidden = h;
  raster.masks = new Uint8Array(WINDOW * h);
  raster.index.fill(-1);
  raster.latest = -1;
  const rowPx = Math.max(1, Math.round(240 / h));
  const cssHeight = Math.min(320, Math.max(160, h * rowPx));
  $("raster").style.height = `${cssHeight}px`;
  $("y-top").textContent = "0";
  $("y-bottom").textContent = String(h - 1);
}

function ingest(event) {
  const steps = event.steps || [];
  const masks = event.masks || [];
  if (!steps.length) return;
  session.lastStepAt = performance.now();
  const h = masks.length ? masks[0].length : models.get(session.model)?.card.hidden || 0;
  if (h) ensureHidden(h);
  steps.forEach((step, t) => {
    const slot = step.index % WINDOW;
    raster.index[slot] = step.index;
    raster.labels[slot] = step.label;
    raster.counts[slot] = step.updates;
    const row = masks[t];
    if (row) {
      const base = slot * raster.hidden;
      for (let n = 0; n < raster.hidden; n++) raster.masks[base + n] = row[n] ? 1 : 0;
    }
    raster.latest = Math.max(raster.latest, step.index);
    const seg = raster.segments[raster.segments.length - 1];
    if (seg && seg.label === step.label && step.index === seg.last + 1) seg.last = step.index;
    else raster.segments.push({ label: step.label, first: step.index, last: step.index });
  });
  if (raster.segments.length > 60) raster.segments.splice(0, raster.segments.length - 60);
  const last = steps[steps.length - 1];
  const labels = classLabels();
  $("latest-label").textContent = last.label;
  $("latest-swatch").style.background = classColour(labels, last.label);
  $("latest-step").textContent = fmtInt(last.index);
  const updates = $("latest-updates");
  updates.dataset.value = String(last.updates);
  updates.textContent = raster.hidden ? `${last.updates} / ${raster.hidden}` : String(last.updates);
  $("raster-overlay").hidden = true;
  raster.dirty = true;
  refreshTotalsSoon();
  renderPredictions();
  if (!$("legend").childElementCount) renderLegend();
}

// ---------------------------------------------------------------- drawing

function classLabels() {
  return models.get(session.model)?.card.class_labels || [];
}

function renderLegend() {
  const root = $("legend");
  root.replaceChildren();
  const labels = classLabels();
  for (const label of labels) {
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = classColour(labels, label);
    item.append(sw, document.createTextNode(label));
    root.appendChild(item);
  }
}

function renderPredictions() {
  const root = $("predictions");
  const labels = classLabels();
  const items = raster.segments.slice(-9).reverse();
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = session.id ? "No steps received yet." : "Pick a session to see its predictions.";
    root.replaceChildren(li);
    return;
  }
  root.replaceChildren(
    ...items.map((seg) => {
      const li = document.createElement("li");
      li.dataset.label = seg.label;
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = classColour(labels, seg.label);
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = seg.label;
      const span = document.createElement("span");
      span.className = "span";
      const n = seg.last - seg.first + 1;
      span.textContent =
        n === 1
          ? `step ${fmtInt(seg.first)}`
          : `steps ${fmtInt(seg.first)}\u2013${fmtInt(seg.last)} \u00b7 ${n}`;
      li.append(sw, what, span);
      return li;
    }),
  );
}

const offscreen = document.createElement("canvas");

function drawRaster() {
  const canvas = $("raster");
  const [w, h] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  const H = raster.hidden;
  const first = raster.latest - (WINDOW - 1);
  if (!H || raster.latest < 0) {
    ctx.fillStyle = `rgb(${NO_DATA})`;
    ctx.fillRect(0, 0, w, h);
    return;
  }
  if (offscreen.width !== WINDOW || offscreen.height !== H) {
    offscreen.width = WINDOW;
    offscreen.height = H;
  }
  const octx = offscreen.getContext("2d");
  const img = octx.createImageData(WINDOW, H);
  const px = img.data;
  for (let c = 0; c < WINDOW; c++) {
    const idx = first + c;
    const slot = ((idx % WINDOW) + WINDOW) % WINDOW;
    const have = idx >= 0 && raster.index[slot] === idx;
    const base = slot * H;
    for (let n = 0; n < H; n++) {
      const colour = !have ? NO_DATA : raster.masks[base + n] ? INK : PAPER;
      const o = (n * WINDOW + c) * 4;
      px[o] = colour[0];
      px[o + 1] = colour[1];
      px[o + 2] = colour[2];
      px[o + 3] = 255;
    }
  }
  octx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(offscreen, 0, 0, w, h);
  // faint row separators when rows are tall enough to read individually
  const rowH = h / H;
  if (rowH >= 6) {
    ctx.fillStyle = "rgba(120, 135, 155, 0.16)";
    for (let n = 1; n < H; n++) ctx.fillRect(0, Math.round(n * rowH), w, 1);
  }
}

function drawBand() {
  const canvas = $("band");
  const [w, h] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  if (raster.latest < 0) return;
  const labels = classLabels();
  const first = raster.latest - (WINDOW - 1);
  const colW = w / WINDOW;
  let c = 0;
  while (c < WINDOW) {
    const idx = first + c;
    const slot = ((idx % WINDOW) + WINDOW) % WINDOW;
    const label = idx >= 0 && raster.index[slot] === idx ? raster.labels[slot] : null;
    let end = c + 1;
    while (end < WINDOW) {
      const j = first + end;
      const s = ((j % WINDOW) + WINDOW) % WINDOW;
      const l = j >= 0 && raster.index[s] === j ? raster.labels[s] : null;
      if (l !== label) break;
      end += 1;
    }
    if (label !== null) {
      ctx.fillStyle = classColour(labels, label);
      ctx.fillRect(Math.floor(c * colW), 0, Math.ceil((end - c) * colW), h);
    }
    c = end;
  }
}

function drawCounts() {
  const canvas = $("counts");
  const [w, h, dpr] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const H = raster.hidden;
  if (!H || raster.latest < 0) return;
  const first = raster.latest - (WINDOW - 1);
  const colW = w / WINDOW;
  ctx.fillStyle = "rgba(47, 111, 222, 0.55)";
  for (let c = 0; c < WINDOW; c++) {
    const idx = first + c;
    const slot = ((idx % WINDOW) + WINDOW) % WINDOW;
    if (idx < 0 || raster.index[slot] !== idx) continue;
    const bar = (raster.counts[slot] / H) * (h - dpr);
    ctx.fillRect(Math.floor(c * colW), h - bar, Math.max(1, Math.ceil(colW)), bar);
  }
  ctx.fillStyle = "rgba(103, 116, 137, 0.35)";
  ctx.fillRect(0, 0, w, Math.max(1, Math.round(dpr / 2))); // the H line (every neuron updated)
}

function render() {
  if (raster.dirty) {
    raster.dirty = false;
    drawRaster();
    drawBand();
    drawCounts();
    const first = Math.max(0, raster.latest - (WINDOW - 1));
    $("x-left").textContent = raster.latest >= 0 ? `#${fmtInt(first)}` : "";
    $("x-right").textContent = raster.latest >= 0 ? `#${fmtInt(raster.latest)}` : "";
  }
  requestAnimationFrame(render);
}

// ---------------------------------------------------------------- start

function watchById(ev) {
  ev.preventDefault();
  const input = $("session-id");
  const id = input.value.trim();
  if (!id) return;
  input.value = "";
  choose(id, true);
}

function submitKey(ev) {
  ev.preventDefault();
  setKey($("api-key").value);
}

function start() {
  $("api-key").value = auth.key;
  $("key-form").addEventListener("submit", submitKey);
  $("api-key").addEventListener("change", (ev) => setKey(ev.target.value));
  $("session-form").addEventListener("submit", watchById);
  $("session-select").addEventListener("change", (ev) => {
    const value = ev.target.value;
    if (value === "auto") {
      session.pinned = false;
      const newest = session.known[0];
      choose(newest ? newest.id : null, false);
    } else {
      choose(value, true);
    }
  });
  window.addEventListener("resize", () => {
    raster.dirty = true;
    for (const m of models.values()) drawSpark(q(m.el, "steps-spark"), m.spark);
  });
  resetSessionView();
  renderAuth();
  if (session.id) connectWatch();
  every(STATS_MS, pollStats);
  every(SESSIONS_MS, pollSessions);
  every(SESSION_MS, pollSession);
  requestAnimationFrame(render);
}

start();
