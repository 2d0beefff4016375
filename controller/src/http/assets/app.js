"use strict";
// The dashboard: reads /api/v1, refreshes the visible view whenever the server-sent event
// stream says the cluster state moved. Every value goes through textContent, never HTML.
let session = null;
let view = "cluster";
// The process table pages with the server's keyset cursor: `after` starts the page shown,
// `back` holds the cursors of the pages before it, `index` counts them.
const page = {limit: 50, after: "", back: [], index: 0, next: null};

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
  if (r.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}

async function act(path, what) {
  if (!confirm(what + "?")) return;
  try {
    await api(path, {method: "POST", headers: {"x-rebeam-csrf": session.csrf || ""}});
    refresh();
  } catch (e) { showError(e); }
}

function showError(e) { document.getElementById("error").textContent = e ? String(e.message || e) : ""; }

function table(id, headers, rows) {
  const t = document.getElementById(id);
  t.replaceChildren(el("tr", {}, ...headers.map(h => el("th", {}, h))),
    ...rows.map(r => el("tr", {}, ...r.map(c => c instanceof Node ? el("td", {}, c) : el("td", {class: typeof c === "number" ? "num" : ""}, c)))));
}

function ago(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }

async function cluster() {
  const [c, n, s] = await Promise.all([api("/api/v1/cluster"), api("/api/v1/nodes"), api("/api/v1/series")]);
  table("controllers", ["id", "role", "term", "api", "voter", "matched", "lag"], c.controllers.map(x => [
    x.id, el("span", {class: x.leader ? "leader" : ""}, x.leader ? "leader" : (x.id === c.this.id ? c.this.role : "member")),
    x.id === c.this.id ? c.this.term : "", x.api_address, x.voter ? "yes" : "no", x.matched_index ?? "?", x.lag ?? "?"]));
  const fixed = v => v == null ? "" : Number(v.toFixed(1));
  table("nodes", ["node", "status", "incarnation", "address", "labels", "top-level children", "lease left (ms)", "memory (MiB)", "CPU %", "msgs/s", "mailbox", "peer B/s", "reason"], n.nodes.map(x => [
    x.id, el("span", {class: x.status}, x.status), x.incarnation, x.address, Object.entries(x.labels).map(([k, v]) => k + "=" + v).join(" "),
    x.top_level_children, x.lease_remaining_ms ?? "", x.load ? fixed(x.load.memory_bytes / 1048576) : "", fixed(x.load?.cpu_percent),
    fixed(x.load?.delivered_per_s), x.load?.mailbox_depth ?? "", x.load ? fixed((x.load.peer_bytes_in_per_s ?? 0) + (x.load.peer_bytes_out_per_s ?? 0)) : "", x.death_reason]));
  chart(s.samples);
  loadChart(s.samples);
}

// Message rate, mailbox depth and peer traffic differ by orders of magnitude: each line is
// scaled to its own maximum, which the legend gives.
function loadChart(samples) {
  const cv = document.getElementById("load-chart"), g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const series = [["messages_per_s", "#175cd3", "messages/s"], ["mailbox_depth", "#b54708", "mailbox depth"], ["peer_bytes_per_s", "#067647", "peer bytes/s"]];
  const legend = [];
  for (const [k, color, label] of series) {
    const max = Math.max(1, ...samples.map(s => s[k] ?? 0));
    g.strokeStyle = color; g.beginPath();
    samples.forEach((s, i) => { const x = i * cv.width / 600, y = cv.height - (s[k] ?? 0) / max * (cv.height - 4); i ? g.lineTo(x, y) : g.moveTo(x, y); });
    g.stroke();
    legend.push(label + " (max " + max.toFixed(1) + ")");
  }
  document.getElementById("load-chart-legend").textContent = "blue: " + legend[0] + ", orange: " + legend[1] + ", green: " + legend[2];
}

function chart(samples) {
  const cv = document.getElementById("chart"), g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const series = [["commits_per_s", "#175cd3"], ["events_per_s", "#b54708"], ["restarts", "#b42318"], ["http_per_s", "#067647"]];
  const max = Math.max(1, ...samples.flatMap(s => series.map(([k]) => s[k])));
  for (const [k, color] of series) {
    g.strokeStyle = color; g.beginPath();
    samples.forEach((s, i) => { const x = i * cv.width / 600, y = cv.height - s[k] / max * (cv.height - 4); i ? g.lineTo(x, y) : g.moveTo(x, y); });
    g.stroke();
  }
  document.getElementById("chart-legend").textContent = "max " + max.toFixed(1) + "/s — blue: Raft commits, orange: events, red: restarts, green: HTTP requests";
}

function procLine(p, supervised) {
  const kill = session.can_kill ? el("button", {class: "danger", onclick: () => act("/api/v1/processes/" + encodeURIComponent(p.id) + "/kill", "Kill " + p.id)}, "kill") : "";
  const restart = session.can_act && supervised ? el("button", {class: "restart-child", onclick: () => act("/api/v1/processes/" + encodeURIComponent(p.id) + "/restart", "Restart " + (p.name || p.initial) + " (" + p.id + ")")}, "restart") : "";
  // A nested supervisor's own report: strategy and intensity used; its children's restarts
  // show on their lines, and children it holds that are not running are listed here.
  const sup = p.supervisor;
  const supInfo = sup ? el("span", {class: "supervisor", "data-strategy": sup.strategy, "data-restarts-used": sup.restarts_in_window},
    " — " + sup.strategy + " — intensity " + sup.restarts_in_window + "/" + sup.max_restarts + " in " + sup.max_seconds + " s") : "";
  const childInfo = p.child_id !== undefined ? el("span", {class: "child-restarts", "data-restarts": p.restarts}, " [" + p.child_id + ", restarts " + p.restarts + "]") : "";
  const stopped = sup ? sup.children.filter(c => c.state !== "running").map(c =>
    el("div", {class: "proc stopped"}, c.id + " " + c.kind + " — " + c.state + " — restarts " + c.restarts)) : [];
  return el("div", {class: "proc", "data-pid": p.id}, el("a", {href: "#process:" + p.id}, p.id), " ", p.kind, " ", p.name || p.initial, childInfo, supInfo, " mailbox ", p.mailbox, " ",
    p.stuck ? el("span", {class: "stuck"}, "stuck: " + p.stuck_reason + " " + (p.stuck_for_ms / 1000).toFixed(0) + " s") : "", " ", restart, " ", kill,
    ...(p.children || []).map(c => procLine(c, p.kind === "supervisor")), ...stopped);
}

async function tree() {
  const t = await api("/api/v1/tree");
  const box = document.getElementById("tree");
  box.replaceChildren(...t.apps.map(a => el("div", {class: "app", "data-app": a.name},
    el("h3", {}, a.name + " " + a.version + " — ", el("span", {class: a.status}, a.status),
      " — intensity " + a.restarts_in_window + "/" + a.max_restarts + " in " + a.max_seconds + " s"),
    a.intensity_exceeded ? el("p", {class: "exceeded"}, "intensity exceeded: " + a.failure_reason) : "",
    ...a.children.map(c => el("div", {class: "child", "data-child": c.child},
      el("strong", {}, c.child), " on " + (c.node || "(waiting)") + " — pid " + (c.pid || "-") + " — generation " + c.generation + " — restarts " + c.restarts,
      ...c.history.slice(-3).map(h => el("div", {class: "restart"}, "restarted " + ago(h.at_ms) + " (was on " + h.from_node + "): " + h.reason)),
      c.process ? procLine(Object.assign({}, c.process, {children: c.children}), true) : "")),
    a.crashes.length ? el("h4", {}, "Crashes and the restarts they caused") : "",
    ...a.crashes.slice().reverse().map(cr => el("div", {class: "crash"},
      el("div", {}, ago(cr.time_ms) + " " + cr.pid + " on " + cr.node, el("div", {class: "restart"}, "→ restarted by its supervisor (see the tree above)")),
      el("pre", {class: "traceback"}, cr.text))))));
}

async function processes() {
  const q = new URLSearchParams({limit: page.limit, sort: document.getElementById("psort").value,
    order: document.getElementById("porder").value, q: document.getElementById("pq").value});
  if (document.getElementById("pstuck").checked) q.set("stuck", "true");
  if (page.after) q.set("after", page.after);
  const r = await api("/api/v1/processes?" + q);
  page.next = r.next_cursor;
  const first = page.index * page.limit;
  document.getElementById("pinfo").textContent = (r.items.length ? first + 1 : 0) + "–" + (first + r.items.length) + " of " + r.total +
    " (" + r.took_ms.toFixed(0) + " ms)" + (r.missing_nodes.length ? " — no answer from " + r.missing_nodes.map(m => m.node).join(", ") : "");
  table("processes", ["pid", "name", "app", "kind", "function", "mailbox", "handled", "memory", "stuck", ""], r.items.map(p => [
    el("a", {href: "#process:" + p.id}, p.id), p.name, p.app, p.kind, p.current_function, p.mailbox, p.handled, p.memory,
    p.stuck ? el("span", {class: "stuck"}, p.stuck_reason + " " + (p.stuck_for_ms / 1000).toFixed(0) + " s") : "",
    session.can_kill ? el("button", {class: "danger", onclick: () => act("/api/v1/processes/" + encodeURIComponent(p.id) + "/kill", "Kill " + p.id)}, "kill") : ""]));
}

async function processPage(id) {
  const p = await api("/api/v1/processes/" + encodeURIComponent(id));
  // Monitors, stack and state get their own sections; text goes in as text nodes (el).
  const {monitors, monitored_by, stack, state, ...facts} = p;
  const mons = ms => ms == null ? "(not reported by this node)" : ms.length ? ms.map(m => "#Ref<" + m.ref + "> " + (m.pid || "?")).join("\n") : "(none)";
  document.getElementById("process").replaceChildren(el("h3", {}, "Process " + p.id),
    el("pre", {}, JSON.stringify(facts, null, 2)),
    el("h4", {}, "Monitors it holds"), el("pre", {class: "monitors"}, mons(monitors)),
    el("h4", {}, "Monitored by"), el("pre", {class: "monitored-by"}, mons(monitored_by)),
    el("h4", {}, "Stack (innermost last)"), el("pre", {class: "stack"}, stack == null ? "(not reported by this node)" : stack.length ? stack.join("\n") : "(no Python code running)"),
    el("h4", {}, "State"), el("pre", {class: "state"}, state == null ? "(not reported by this node)" : state || "(none)"));
}

async function names() {
  const [n, g] = await Promise.all([api("/api/v1/names"), api("/api/v1/groups")]);
  table("names", ["name", "pid", "node"], n.names.map(x => [x.name, x.pid.id, x.node]));
  table("local-names", ["name", "pid", "node", "app"], n.local_names.map(x => [x.name, x.pid, x.node, x.app]));
  table("groups", ["group", "members"], g.groups.map(x => [x.group, x.members.map(m => m.id).join(" ")]));
}

async function apps() {
  const a = await api("/api/v1/apps");
  table("apps", ["app", "version", "status", "restarts in window", "previous", "problem", ""], a.apps.map(x => [
    x.name, x.version, el("span", {class: x.status}, x.status), x.restarts_in_window + "/" + x.max_restarts, x.previous_version || "",
    x.failure_reason || x.upgrade_error || x.last_error,
    session.can_act && x.status === "running" ? el("button", {class: "danger", onclick: () => act("/api/v1/apps/" + encodeURIComponent(x.name) + "/stop", "Stop " + x.name)}, "stop") : ""]));
}

// Logs: one live stream (server-sent events) of the chosen app's output and crash reports
// from every node. The server neutralises control characters; lines go in via textContent
// and the page keeps the newest MAX_LOG_LINES.
const MAX_LOG_LINES = 2000;
let logSource = null, logApp = null;
function logLine(e) {
  const box = document.getElementById("logs");
  const d = JSON.parse(e.data);
  const head = new Date(d.time_ms).toLocaleTimeString() + " " + d.node + " " + d.pid + " " + d.stream + (d.stream === "crash" ? ":\n" : " ");
  box.append(el("div", {class: "logline " + d.stream}, head + d.text));
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  box.scrollTop = box.scrollHeight;
}
function follow(app) {
  if (logSource && logApp === app) return;
  if (logSource) logSource.close();
  logApp = app;
  const box = document.getElementById("logs");
  box.replaceChildren();
  document.getElementById("logstate").textContent = "";
  if (!app) { logSource = null; return; }
  logSource = new EventSource("/api/v1/apps/" + encodeURIComponent(app) + "/logs");
  logSource.addEventListener("log", logLine);
  logSource.addEventListener("missing", e => { const d = JSON.parse(e.data); document.getElementById("logstate").textContent = "no logs from node " + d.node + ": " + d.error; });
  logSource.addEventListener("open", () => { document.getElementById("logstate").textContent = "following " + app; });
}
async function logs() {
  const a = await api("/api/v1/apps");
  const sel = document.getElementById("logapp"), keep = sel.value;
  sel.replaceChildren(...a.apps.map(x => el("option", {}, x.name)));
  if (keep) sel.value = keep;
  follow(sel.value);
}

// Tables: every node's shared tables with a bounded preview of their rows.
async function tables() {
  const t = await api("/api/v1/tables");
  table("tables", ["node", "table", "kind", "access", "size", "owner", "preview"], t.tables.map(x => [
    x.node, x.name, x.kind, x.access, x.size, x.owner,
    el("pre", {class: "preview"}, x.preview.map(r => r.key + " → " + r.value).join("\n") + (x.size > x.preview.length ? "\n… " + (x.size - x.preview.length) + " more" : ""))]));
  document.getElementById("tables-missing").textContent = t.missing_nodes.length ? "no answer from " + t.missing_nodes.map(m => m.node).join(", ") : "";
}

async function events() {
  const e = await api("/api/v1/events?limit=2000");
  table("events", ["seq", "time", "kind", "app", "node", "who", "what"], e.events.slice().reverse().map(x => [
    x.seq, ago(x.at_ms), x.kind, x.app, x.node, x.who, el("pre", {}, x.text)]));
}

const views = {cluster, tree, processes, names, apps, logs, tables, events};
let busy = false, again = false;
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try { await views[view](); showError(null); } catch (e) { showError(e); }
  busy = false;
  if (again) { again = false; refresh(); }
}

function route() {
  const h = location.hash.slice(1) || "cluster";
  if (h.startsWith("process:")) { view = "processes"; processPage(h.slice(8)).catch(showError); } else view = h in views ? h : "cluster";
  if (view !== "logs") follow(null);
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("active", s.id === "view-" + view);
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.view === view);
  refresh();
}

async function main() {
  session = await api("/api/v1/session");
  document.getElementById("who").textContent = session.who + " (" + session.role + ")";
  document.getElementById("pfilter").addEventListener("submit", e => { e.preventDefault(); Object.assign(page, {after: "", back: [], index: 0}); refresh(); });
  document.getElementById("prev").addEventListener("click", () => { if (page.index > 0) { page.after = page.back.pop(); page.index -= 1; refresh(); } });
  document.getElementById("next").addEventListener("click", () => { if (page.next) { page.back.push(page.after); page.after = page.next; page.index += 1; refresh(); } });
  document.getElementById("logapp").addEventListener("change", e => follow(e.target.value));
  window.addEventListener("hashchange", route);
  const es = new EventSource("/api/v1/stream");
  es.addEventListener("tick", () => { if (view !== "processes" && view !== "logs") refresh(); });
  setInterval(() => { if (view === "tree" || view === "processes" || view === "cluster") refresh(); }, 1000);
  route();
}
main().catch(showError);
