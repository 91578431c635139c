// caddy-vastai dashboard. Plain JS, no dependencies: the page is served from
// the admin endpoint and talks only to it (same origin, so Caddy's origin
// checks pass). Every value from the API is put in the page as text, never
// as HTML: instance labels come from vast.ai.
"use strict";

// ---- formatting: mirrors internal/display (Go) -------------------------

function dollars(v) {
  if (typeof v !== "number" || !isFinite(v)) return "-";
  let sign = "";
  if (v < 0) { sign = "-"; v = -v; }
  if (v !== 0 && v < 0.01) return sign + "$" + v.toFixed(3);
  return sign + "$" + v.toFixed(2);
}
function rate(perHour) { return dollars(perHour) + "/h"; }
function pad2(n) { return String(n).padStart(2, "0"); }
function duration(ms) {
  let s = Math.floor(Math.abs(ms) / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + pad2(s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + pad2(Math.floor((s % 3600) / 60)) + "m";
  return Math.floor(s / 86400) + "d" + pad2(Math.floor((s % 86400) / 3600)) + "h";
}
function since(iso, now) { return iso ? duration(now - Date.parse(iso)) : "-"; }
function percent(p) { return (typeof p !== "number" || !isFinite(p) || p < 0) ? "-" : p.toFixed(0) + "%"; }
function gib(mib) { return (mib / 1024).toFixed(1) + " GiB"; }
function count(n) { return typeof n === "number" && isFinite(n) ? n.toLocaleString("en-US") : "-"; }
function limit(n) { return n ? count(n) : "-"; }
// budget reads "$10.00/day"; a budget over the key's whole life "$10.00 total".
function budget(v, period) {
  if (!v) return "-";
  return period === "total" ? dollars(v) + " total" : dollars(v) + "/" + period;
}
// expiry shows a date, with the time only when it is not midnight UTC.
function expiry(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  const day = d.toISOString().slice(0, 10);
  return d.getUTCHours() || d.getUTCMinutes() ? day + " " + d.toISOString().slice(11, 16) + " UTC" : day;
}

// ---- DOM helpers -------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (sel) => document.querySelector(sel);

const stateClass = {
  ready: "ok", provisioning: "info", loading: "info", starting: "info",
  unhealthy: "bad", failed: "bad", stopped: "warn", gone: "warn",
  active: "ok", revoked: "bad", expired: "warn",
  succeeded: "ok", running: "info", pending: "info", destroying: "warn", destroy_failed: "bad",
};
function badge(text) { return el("span", { class: "badge " + (stateClass[text] || "") }, text || "-"); }

// ---- charts ------------------------------------------------------------

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

// spark draws a series (nulls are gaps) as a small line chart with its
// latest value; max fixes the scale (100 for percentages).
function spark(values, opts) {
  const w = opts.width || 120, h = opts.height || 26, label = opts.format || String;
  const s = svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  const known = (values || []).filter((v) => v !== null && isFinite(v));
  s.append(svg("line", { x1: 0, y1: h - 1, x2: w, y2: h - 1 }));
  if (!known.length) {
    const t = svg("text", { x: 2, y: h - 5 }); t.textContent = "no data"; s.append(t);
    return s;
  }
  const max = opts.max || Math.max(...known) || 1;
  const step = values.length > 1 ? w / (values.length - 1) : w;
  let d = "", area = "", open = false, firstX = 0, lastX = 0;
  values.forEach((v, i) => {
    const x = i * step;
    if (v === null || !isFinite(v)) {
      if (open) area += `L${lastX.toFixed(1)},${h}L${firstX.toFixed(1)},${h}Z`;
      open = false; return;
    }
    const y = h - 2 - (Math.min(v, max) / max) * (h - 4);
    if (!open) { d += `M${x.toFixed(1)},${y.toFixed(1)}`; area += `M${x.toFixed(1)},${h}L${x.toFixed(1)},${y.toFixed(1)}`; firstX = x; open = true; }
    else { d += `L${x.toFixed(1)},${y.toFixed(1)}`; area += `L${x.toFixed(1)},${y.toFixed(1)}`; }
    lastX = x;
  });
  if (open) area += `L${lastX.toFixed(1)},${h}L${firstX.toFixed(1)},${h}Z`;
  s.append(svg("path", { class: "area", d: area }), svg("path", { d }));
  const last = known[known.length - 1];
  const t = svg("text", { x: w - 2, y: 9, "text-anchor": "end" }); t.textContent = label(last); s.append(t);
  const title = svg("title", {}); title.textContent = `${opts.title}: now ${label(last)}, peak ${label(Math.max(...known))}`; s.append(title);
  return s;
}

// ---- API ---------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (_) { /* empty body */ }
  if (!resp.ok) {
    const err = new Error((data && data.error) || `${method} ${path}: HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

let toastTimer = 0;
function toast(msg, bad) {
  const t = $("#toast");
  t.textContent = msg; t.className = bad ? "bad" : ""; t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 9000 : 5000);
}

async function act(question, method, path, body, done) {
  if (!window.confirm(question)) return;
  try {
    const out = await api(method, path, body);
    toast(done(out));
  } catch (e) {
    toast(e.message, true);
  }
}

function provision(pool) {
  act(`Provision one new instance into pool "${pool}"? It starts billing once created.`,
    "POST", `/vastai/pools/${encodeURIComponent(pool)}/instances`, { count: 1 },
    (out) => `Provisioning started: operation ${(out.operations || []).map((o) => o.id).join(", ")}`);
}
function drain(id) {
  act(`Drain instance ${id}? It stops receiving traffic, then is destroyed once its requests finish.`,
    "POST", `/vastai/instances/${id}/drain`, undefined, (op) => `Draining ${id}: operation ${op.id}`);
}
function destroy(id) {
  act(`Destroy instance ${id} now? Requests in flight are cut and this cannot be undone.`,
    "DELETE", `/vastai/instances/${id}`, undefined, (op) => `Destroying ${id}: operation ${op.id}`);
}

// ---- state and rendering ----------------------------------------------

let fleet = null;     // the last snapshot event
let hist = null;      // the last /vastai/history answer

function render() {
  if (!fleet) return;
  const now = Date.now();
  renderSummary(now);
  renderPools();
  renderInstances(now);
  renderOperations(now);
  renderKeys();
}

function fig(value, label, cls) {
  return el("div", { class: "fig" }, el("b", { class: cls }, value), el("span", {}, label));
}

function renderSummary(now) {
  const st = fleet.status || {}, instances = fleet.instances || [], pools = fleet.pools || [];
  const byState = {};
  for (const i of instances) byState[i.state] = (byState[i.state] || 0) + 1;
  const spend = typeof st.spend_per_hour === "number" ? st.spend_per_hour
    : pools.reduce((a, p) => a + (p.spend_rate_dollars_per_hour || 0), 0);
  const accrued = instances.reduce((a, i) => a + (i.accrued_dollars || 0), 0);
  let watcher, wcls = "";
  if (st.stale_seconds > 0) { watcher = `stale ${duration(st.stale_seconds * 1000)}`; wcls = "err"; }
  else if (st.last_success) watcher = `polled ${since(st.last_success, now)} ago`;
  else watcher = "no listing yet";
  const states = Object.keys(byState).sort().map((s) => el("span", {}, badge(s), " ", byState[s], " "));
  const parts = [
    fig(String(instances.length), "instances"),
    el("div", { class: "fig" }, el("b", {}, ...(states.length ? states : ["-"])), el("span", {}, "by state")),
    fig(String(instances.filter((i) => i.routable).length), "routable"),
    fig(rate(spend), "spend"),
    fig(dollars(accrued), "accrued"),
    fig(watcher, st.last_error ? "watcher: " + st.last_error : "watcher", wcls),
  ];
  // The keys panel says its own trouble; a gateway without keys has none.
  const errs = Object.entries(fleet.errors || {}).filter(([part]) => part !== "keys").map(([, e]) => e);
  if (errs.length) parts.push(fig(errs.join("; "), "errors", "err"));
  $("#summary").replaceChildren(...parts);
}

function renderPools() {
  const cards = (fleet.pools || []).map((p) => {
    const states = Object.entries(p.states || {}).map(([s, n]) => el("span", {}, badge(s), " ", n, " "));
    const series = hist && hist.pools && hist.pools[p.name];
    const canProvision = !!p.provisioning;
    return el("div", { class: "card", "data-pool": p.name },
      el("h3", {}, p.name,
        canProvision ? el("button", { class: "primary", "data-provision": p.name, onclick: () => provision(p.name) }, "Provision") : null),
      el("div", { class: "line" }, `${(p.members || []).length} instances, ${(p.routable || []).length} routable · `,
        rate(p.spend_rate_dollars_per_hour), " · ", dollars(p.accrued_dollars), " accrued"),
      el("div", { class: "line" }, ...(states.length ? states : ["no instances"])),
      p.provisioning ? el("div", { class: "line" },
        `min ${p.provisioning.min_instances}`, p.provisioning.max_instances ? ` · max ${p.provisioning.max_instances}` : "",
        ` · ${p.provisioning.in_progress} in progress · ${p.provisioning.destroying} destroying`) : null,
      p.autoscale ? autoscaleLine(p.autoscale) : null,
      el("div", { class: "line" }, "spend rate, last hour"),
      spark(series ? series.spend_per_hour : [], { width: 240, height: 36, format: rate, title: "spend rate" }));
  });
  $("#pools").replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "No pools configured.")]));
}

// autoscaleLine shows an autoscaled pool's latest decision: desired and
// ready counts, the load, held and refused requests, the warm pool, and
// why (the explanation is the tooltip; a refused scale-up is an error).
function autoscaleLine(a) {
  const parts = [`autoscale: desired ${a.desired} · ready ${a.current} · min ${a.min} max ${a.max}`,
    ` · load ${(a.stable_load || 0).toFixed(1)} stable / ${(a.panic_load || 0).toFixed(1)} panic`];
  if (a.held) parts.push(` · ${a.held} held`);
  const refused = Object.values(a.rejected || {}).reduce((x, y) => x + y, 0);
  if (refused) parts.push(` · ${refused} refused`);
  const sc = a.scale || {};
  if (sc.stopped) parts.push(` · ${sc.stopped} stopped (`, rate(sc.stopped_rate), ")");
  return el("div", { class: "line", "data-autoscale": "" },
    ...parts, " ", el("span", { title: a.waiting || a.explanation || "" }, badge(a.panicking ? "panic" : (a.reason || "waiting"))),
    sc.last_refusal ? el("div", { class: "err" }, "scale-up refused: " + sc.last_refusal) : null);
}

function gpuCells(i) {
  const gpus = i.gpus || [];
  if (!gpus.length) return [el("td", { class: i.gpu_error ? "err" : "muted", title: i.gpu_error || "" }, i.gpu_error ? "error" : "-"), el("td", {}, "-"), el("td", {}, "-")];
  const util = gpus.map((g) => percent(g.utilization_gpu)).join(" ");
  const mem = gpus.map((g) => (g.memory_used_mib != null && g.memory_total_mib != null)
    ? `${(g.memory_used_mib / 1024).toFixed(1)}/${gib(g.memory_total_mib)}` : "-").join(" ");
  const temps = gpus.map((g) => g.temperature_c).filter((t) => t != null);
  return [el("td", { class: "num" }, util), el("td", { class: "num" }, mem),
    el("td", { class: "num" }, temps.length ? Math.max(...temps).toFixed(0) + "°C" : "-")];
}

// engineCell shows the engine's queue, batch and KV-cache use as scraped
// from its /metrics; stale figures are greyed, a failing scrape says why.
function engineCell(i) {
  const e = i.engine;
  if (!e) return el("td", { class: "muted" }, "-");
  if (!e.at) return el("td", { class: "muted", title: e.error || "" }, e.error ? "no metrics" : "-");
  const kv = e.kv_cache_use == null ? "" : ` · kv ${(e.kv_cache_use * 100).toFixed(0)}%`;
  const text = `q ${e.waiting} · run ${e.running}${kv}`;
  return el("td", { class: e.fresh ? "num" : "num muted", "data-engine": e.kind || "", title: (e.kind || "engine") + (e.fresh ? "" : " (stale: " + (e.error || "not recent") + ")") }, text);
}

function renderInstances(now) {
  const list = fleet.instances || [];
  const rows = list.map((i) => {
    const h = hist && hist.instances && hist.instances[String(i.id)];
    const inflight = fleet.in_flight ? fleet.in_flight[String(i.id)] : undefined;
    return el("tr", { "data-id": i.id, "data-state": i.state },
      el("td", { title: i.label }, String(i.id)),
      el("td", {}, i.pool || "-"),
      el("td", { title: i.reason || "" }, badge(i.state), " ", el("span", { class: "muted" }, since(i.state_since, now))),
      el("td", {}, i.upstream || "-"),
      el("td", { title: (i.ssh && i.ssh.last_error) || "" }, (i.ssh && i.ssh.path) || "-"),
      ...gpuCells(i),
      el("td", { class: "num" }, inflight === undefined ? "-" : String(inflight)),
      engineCell(i),
      el("td", { class: "num" }, rate(i.dph_total)),
      el("td", {}, spark(h && h.gpu_utilization, { max: 100, format: percent, title: "GPU utilisation" })),
      el("td", {}, spark(h && h.requests_per_second, { format: (v) => v.toFixed(1), title: "requests/s" })),
      el("td", {}, spark(h && h.latency_ms, { format: (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "ms", title: "probe latency" })),
      el("td", {},
        el("button", { "data-drain": i.id, onclick: () => drain(i.id) }, "Drain"), " ",
        el("button", { class: "danger", "data-destroy": i.id, onclick: () => destroy(i.id) }, "Destroy")));
  });
  $("#instances tbody").replaceChildren(...rows);
  $("#no-instances").hidden = rows.length > 0;
  $("#instance-count").textContent = `(${rows.length})`;
}

function renderOperations(now) {
  const ops = fleet.operations || [];
  const rows = [];
  for (const op of ops) {
    rows.push(el("tr", { "data-op": op.id },
      el("td", { title: op.reason || "" }, op.id),
      el("td", {}, op.kind),
      el("td", {}, op.pool || "-"),
      el("td", {}, badge(op.state)),
      el("td", {}, op.instance_id ? String(op.instance_id) : "-"),
      el("td", {}, since(op.created, now)),
      el("td", { class: "num" }, String((op.attempts || []).length)),
      el("td", { class: "err" }, op.error || "")));
    (op.attempts || []).forEach((a, n) => rows.push(el("tr", { class: "attempt" },
      el("td", {}, `  attempt ${n + 1}`),
      el("td", {}, `offer ${a.offer_id}`),
      el("td", {}, `machine ${a.machine_id}`),
      el("td", {}, badge(a.state)),
      el("td", {}, a.instance_id ? String(a.instance_id) : "-"),
      el("td", {}, a.ended ? duration(Date.parse(a.ended) - Date.parse(a.started)) : since(a.started, now)),
      el("td", { class: "num" }, rate(a.price)),
      el("td", { class: "err" }, a.error || ""))));
  }
  $("#operations tbody").replaceChildren(...rows);
  $("#no-operations").hidden = ops.length > 0;
}

// meter draws used/total as a small bar (SVG: the page's CSP forbids
// inline styles).
function meter(used, total) {
  if (!total) return el("span", { class: "muted" }, "");
  const w = 64, h = 8, f = Math.max(0, Math.min(1, used / total));
  const s = svg("svg", { class: "meter" + (f >= 1 ? " full" : f >= 0.8 ? " high" : ""), width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  s.append(svg("rect", { class: "track", x: 0, y: 0, width: w, height: h, rx: 2 }),
    svg("rect", { class: "used", x: 0, y: 0, width: (f * w).toFixed(1), height: h, rx: 2 }));
  const title = svg("title", {}); title.textContent = percent(100 * used / total) + " of the budget spent"; s.append(title);
  return s;
}

let lastKeys = [];    // the keys of the last snapshot that had them

// renderKeys lists the client keys; the panel is hidden while there are
// none (no keys block, nothing created through the API).
function renderKeys() {
  if (Array.isArray(fleet.keys)) lastKeys = fleet.keys;
  const err = fleet.errors && fleet.errors.keys;
  $("#keys").hidden = lastKeys.length === 0;
  const rows = lastKeys.map((k) => {
    const t = (k.period && k[k.period]) || {};
    return el("tr", { "data-key": k.name, "data-status": k.status },
      el("td", { title: keyScope(k) }, k.name, k.source === "api" ? el("span", { class: "muted" }, " (api)") : null),
      el("td", {}, badge(k.status)),
      el("td", { class: "num" }, limit(k.rpm)),
      el("td", { class: "num" }, limit(k.tpm)),
      el("td", { class: "num" }, limit(k.max_parallel)),
      el("td", { class: "num", "data-budget": "" }, budget(k.budget, k.period)),
      el("td", { class: "num", "data-spent": "" }, dollars(k.spent)),
      el("td", {}, meter(k.spent, k.budget)),
      el("td", { class: "num" }, dollars(k.reserved)),
      el("td", { class: "num" }, count(k.in_flight)),
      el("td", { class: "num", "data-requests": "" }, count(t.requests)),
      el("td", { class: "num" }, count(t.tokens_in)),
      el("td", { class: "num" }, count(t.tokens_out)),
      el("td", {}, expiry(k.expires)));
  });
  $("#keys-table tbody").replaceChildren(...rows);
  const byStatus = {};
  for (const k of lastKeys) byStatus[k.status] = (byStatus[k.status] || 0) + 1;
  const text = Object.keys(byStatus).sort().map((s) => `${byStatus[s]} ${s}`).join(", ");
  const sum = $("#keys-summary");
  sum.textContent = err ? `(${text}; not current: ${err})` : `(${text}; figures for each key's budget period)`;
  sum.className = err ? "err" : "muted";
}

function keyScope(k) {
  const parts = [];
  if (k.pools && k.pools.length) parts.push("pools " + k.pools.join(", "));
  if (k.models && k.models.length) parts.push("models " + k.models.join(", "));
  return parts.length ? parts.join("; ") : "every pool and model";
}

// ---- feeds -------------------------------------------------------------

function connect() {
  const es = new EventSource("/vastai/events");
  es.addEventListener("snapshot", (e) => {
    fleet = JSON.parse(e.data);
    const live = $("#live"); live.textContent = "live"; live.className = "badge ok";
    render();
  });
  es.onerror = () => {
    const live = $("#live"); live.textContent = "reconnecting…"; live.className = "badge warn";
    // EventSource retries by itself unless the server refused the stream
    // (an HTTP error closes it for good): then start a new one.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
}

async function loadHistory() {
  try {
    hist = await api("GET", "/vastai/history");
    render();
  } catch (_) { /* charts keep their last data; the header shows feed trouble */ }
}

let costsMissingSince = 0;
async function loadCosts() {
  // The ledger may not be part of this build: a 404 hides the panel, and
  // it is asked again only every few minutes.
  if (costsMissingSince && Date.now() - costsMissingSince < 300000) return;
  try {
    const c = await api("GET", "/vastai/costs?by=instance&period=day");
    costsMissingSince = 0;
    renderCosts(c);
  } catch (e) {
    if (e.status === 404) costsMissingSince = Date.now();
    $("#costs").hidden = true;
  }
}

function renderCosts(c) {
  const rows = (c.rows || []).map((r) => el("tr", {},
    el("td", {}, r.period), el("td", {}, r.pool || "-"), el("td", {}, r.instance_id ? String(r.instance_id) : "-"),
    el("td", { class: "num" }, typeof r.hours === "number" ? r.hours.toFixed(2) : "-"),
    el("td", { class: "num" }, dollars(r.dollars))));
  $("#costs-table tbody").replaceChildren(...rows);
  const since = c.since ? `since ${c.since}` : "since the ledger started";
  $("#costs-summary").textContent = `${since}: ${dollars(c.total_dollars)} total, spending ${rate(c.spend_per_hour)} now`;
  $("#costs").hidden = false;
}

connect();
loadHistory();
loadCosts();
setInterval(loadHistory, 10000);
setInterval(loadCosts, 30000);
setInterval(render, 1000); // ages and staleness advance between events
