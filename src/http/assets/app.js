// The baton dashboard. Plain JavaScript, no dependencies, no build step.
// Everything a workflow printed is untrusted: it is written with textContent only, never as
// markup. Updates arrive by server-sent events; the page never polls.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function notice(msg) {
  const n = $("notice");
  n.textContent = msg || "";
  n.hidden = !msg;
}

async function api(path, opts) {
  const o = Object.assign({ headers: {} }, opts || {});
  if (o.body !== undefined) {
    o.headers["content-type"] = "application/json";
    o.body = JSON.stringify(o.body);
  }
  const r = await fetch("/api" + path, o);
  if (r.status === 401) {
    notice("Not authorised: open the dashboard with the link baton printed (it carries ?token=).");
    throw new Error("unauthorised");
  }
  const text = await r.text();
  const body = text && (r.headers.get("content-type") || "").includes("json") ? JSON.parse(text) : text;
  if (!r.ok) {
    const msg = (body && body.error) || r.statusText;
    notice(msg);
    throw new Error(msg);
  }
  return body;
}

function fmtDuration(ms) {
  if (ms == null) return "";
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  return Math.floor(s / 60) + " m " + Math.round(s % 60) + " s";
}

function badge(status) {
  return el("span", { class: "badge s-" + status }, status);
}

// ---------------------------------------------------------------- event streams

let stream = null;
function openStream(url, onEvent) {
  if (stream) stream.close();
  const es = new EventSource(url);
  stream = es;
  es.onopen = () => { $("live").textContent = "live"; };
  es.onerror = () => { $("live").textContent = "reconnecting…"; };
  es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
  es.addEventListener("gone", () => { es.close(); notice("This workflow was deleted."); });
}

// Several events in a burst cause one refresh.
function coalesce(fn, ms) {
  let t = null;
  return () => { if (t === null) t = setTimeout(() => { t = null; fn(); }, ms); };
}

// ---------------------------------------------------------------- list

let listCursor = null;
function filters() {
  return { status: $("f-status").value, name: $("f-name").value.trim(), q: $("f-q").value.trim() };
}
function query(f, extra) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(Object.assign({}, f, extra || {}))) if (v !== "" && v != null) p.set(k, v);
  return p.toString();
}

async function loadList(append) {
  const f = filters();
  const res = await api("/workflows?" + query(f, { limit: 50, cursor: append ? listCursor : null }));
  listCursor = res.next_cursor ?? null;
  $("more").hidden = listCursor === null;
  const counts = $("counts");
  counts.replaceChildren(...Object.entries(res.counts).map(([s, n]) => el("span", { class: "count s-" + s, "data-status": s }, s + " " + n)));
  const rows = $("rows");
  if (!append) rows.replaceChildren();
  for (const w of res.workflows) {
    rows.append(el("tr", { "data-thread": w.thread_id, "data-status": w.status },
      el("td", {}, el("a", { href: "#/workflows/" + encodeURIComponent(w.thread_id) }, w.name || w.thread_id),
        el("div", { class: "mono meta" }, w.thread_id)),
      el("td", {}, badge(w.status)),
      el("td", {}, w.progress.done + "/" + w.progress.total),
      el("td", {}, w.current_steps.join(", ")),
      el("td", {}, new Date(w.started_at).toLocaleString()),
      el("td", {}, w.flags.join(", "))));
  }
}

function showList() {
  $("wf-view").hidden = true;
  $("list-view").hidden = false;
  document.title = "baton";
  loadList(false).catch(() => {});
  const refresh = coalesce(() => loadList(false).catch(() => {}), 300);
  openStream("/api/events", refresh);
}

async function bulk(action) {
  const f = filters();
  const what = [f.status && "status " + f.status, f.name && "name " + f.name, f.q && "matching " + f.q].filter(Boolean).join(", ") || "every workflow";
  if (!confirm(action + " " + what + "?")) return;
  const r = await api("/workflows/bulk", { method: "POST", body: Object.assign({ action }, f) });
  notice(action + ": " + r.done.length + " done" + (r.refused.length ? ", " + r.refused.length + " refused" : ""));
  loadList(false).catch(() => {});
}

// ---------------------------------------------------------------- one workflow

const wf = { id: null, view: null, selected: null, progress: {} };

async function loadWorkflow() {
  const v = await api("/workflows/" + encodeURIComponent(wf.id) + "?output_chars=0");
  wf.view = v;
  renderWorkflow();
  if (wf.selected) loadStep();
}

function renderWorkflow() {
  const v = wf.view;
  document.title = (v.name || v.thread_id) + " · baton";
  $("wf-name").textContent = v.name || "workflow";
  const st = $("wf-status");
  st.textContent = v.status;
  st.className = "badge s-" + v.status;
  st.dataset.status = v.status;
  $("wf-id").textContent = v.thread_id;
  $("wf-progress").textContent = v.progress.done + "/" + v.progress.total + " steps done";
  $("wf-cost").textContent = "$" + (v.total_cost_usd || 0).toFixed(4);
  $("wf-owner").textContent = v.owner ? "owner " + v.owner.slice(0, 8) : "not running";
  $("wf-error").textContent = v.error || "";
  $("wf-error").hidden = !v.error;
  const active = v.status === "running" || v.status === "queued";
  $("btn-resume").disabled = active || v.status === "completed";
  $("btn-cancel").disabled = !active && v.status !== "blocked" && v.status !== "interrupted";
  $("btn-delete").disabled = active;
  renderSteps();
  renderDag();
  renderGantt();
}

function stepButton(label, id, handler) {
  return el("button", { type: "button", "data-action": id, onclick: handler }, label);
}

function renderSteps() {
  const body = $("steps");
  body.replaceChildren();
  for (const s of wf.view.steps) {
    const actions = el("td", {});
    const finished = s.status !== "running" && s.status !== "retrying" && s.status !== "pending";
    const busy = wf.view.status === "running" || wf.view.status === "queued";
    if (!busy && finished) actions.append(stepButton("Retry from this step", "retry", () => control("resume", { from_step: s.id, mode: "retry" })));
    if (!busy && (s.status === "failed" || s.status === "blocked" || s.status === "cancelled")) actions.append(" ", stepButton("Skip this step", "skip", () => control("resume", { mode: "skip" })));
    const w = s.waiting_for;
    if (w && !w.answered) {
      // A human step's question: its answer is the step's output.
      const q = el("p", { class: "question", "data-question": s.id }, w.prompt);
      if (w.deadline) q.append(el("small", {}, " (until " + new Date(w.deadline).toLocaleString() + ", then " + w.on_timeout + ")"));
      actions.append(q);
      if (w.kind === "input") {
        const field = el("input", { type: "text", "aria-label": "Answer to " + s.id, "data-answer": s.id });
        actions.append(field, " ", stepButton("Send", "answer", () => control("approve", { step: s.id, approve: true, input: field.value })));
      } else {
        actions.append(stepButton("Approve", "approve", () => control("approve", { step: s.id, approve: true })));
      }
      actions.append(" ", stepButton("Deny", "deny", () => control("approve", { step: s.id, approve: false })));
    } else if (s.status === "blocked" && !w) {
      // A permission block: approve retries the step, deny skips it.
      actions.append(" ", stepButton("Approve", "approve", () => control("approve", { step: s.id, approve: true })),
        " ", stepButton("Deny", "deny", () => control("approve", { step: s.id, approve: false })));
    }
    const row = el("tr", { "data-step": s.id, "data-status": s.status, class: wf.selected === s.id ? "selected" : "" },
      el("td", {}, el("button", { type: "button", class: "linkish", onclick: () => selectStep(s.id) }, s.id)),
      el("td", {}, badge(s.status)),
      el("td", {}, String(s.attempts)),
      el("td", { class: "mono" }, s.session_id || ""),
      el("td", {}, fmtDuration(s.duration_ms)),
      actions);
    body.append(row);
  }
}

function layers(steps) {
  const depth = {};
  const byId = Object.fromEntries(steps.map((s) => [s.id, s]));
  const visit = (id, seen) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const deps = (byId[id] && byId[id].deps) || [];
    depth[id] = deps.length ? 1 + Math.max(...deps.map((d) => visit(d, seen))) : 0;
    return depth[id];
  };
  steps.forEach((s) => visit(s.id, new Set()));
  return depth;
}

function renderDag() {
  const steps = wf.view.steps;
  const depth = layers(steps);
  const cols = {};
  const pos = {};
  const W = 170, H = 56, NW = 140, NH = 34;
  for (const s of steps) {
    const d = depth[s.id];
    cols[d] = (cols[d] || 0) + 1;
    pos[s.id] = { x: 10 + d * W, y: 10 + (cols[d] - 1) * H };
  }
  const width = 20 + (Math.max(0, ...Object.values(depth)) + 1) * W;
  const height = 20 + Math.max(1, ...Object.values(cols)) * H;
  const root = svg("svg", { width, height, role: "img", "aria-label": "Step dependency graph" });
  for (const s of steps) for (const d of s.deps || []) {
    if (!pos[d]) continue;
    const a = pos[d], b = pos[s.id];
    const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x, y2 = b.y + NH / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + 15},${y1} ${x2 - 15},${y2} ${x2},${y2}` }));
  }
  for (const s of steps) {
    const p = pos[s.id];
    const g = svg("g", { class: "node s-" + s.status + (wf.selected === s.id ? " selected" : ""), tabindex: "0", role: "button", "data-step": s.id, "data-status": s.status });
    g.append(svg("rect", { x: p.x, y: p.y, width: NW, height: NH, rx: 6 }));
    const t = svg("text", { x: p.x + 8, y: p.y + 21 });
    t.textContent = s.id.length > 18 ? s.id.slice(0, 17) + "…" : s.id;
    const title = svg("title", {});
    title.textContent = s.id + ": " + s.status;
    g.append(t, title);
    g.addEventListener("click", () => selectStep(s.id));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectStep(s.id); } });
    root.append(g);
  }
  $("dag").replaceChildren(root);
}

function renderGantt() {
  const steps = wf.view.steps;
  const bars = [];
  const now = Date.now();
  for (const s of steps) for (const a of s.attempt_history || []) {
    const start = Date.parse(a.started_at);
    const end = a.finished_at ? Date.parse(a.finished_at) : now;
    bars.push({ step: s.id, n: a.number, start, end, outcome: a.outcome });
  }
  if (!bars.length) { $("gantt").replaceChildren(el("p", { class: "meta" }, "No attempts yet.")); return; }
  const t0 = Math.min(...bars.map((b) => b.start));
  const t1 = Math.max(...bars.map((b) => b.end), t0 + 1);
  const LW = 150, W = 700, RH = 20;
  const rowOf = Object.fromEntries(steps.map((s, i) => [s.id, i]));
  const root = svg("svg", { width: LW + W + 20, height: steps.length * RH + 24, role: "img", "aria-label": "Timeline of step attempts" });
  steps.forEach((s, i) => {
    const t = svg("text", { x: 4, y: i * RH + 14 });
    t.textContent = s.id;
    root.append(t);
  });
  for (const b of bars) {
    const x = LW + ((b.start - t0) / (t1 - t0)) * W;
    const w = Math.max(2, ((b.end - b.start) / (t1 - t0)) * W);
    const r = svg("rect", { class: "bar o-" + b.outcome, x, y: rowOf[b.step] * RH + 3, width: w, height: RH - 6, rx: 2 });
    const title = svg("title", {});
    title.textContent = `${b.step} attempt ${b.n}: ${b.outcome}, ${fmtDuration(b.end - b.start)}`;
    r.append(title);
    root.append(r);
  }
  const axis = svg("text", { x: LW, y: steps.length * RH + 18 });
  axis.textContent = "0 — " + fmtDuration(t1 - t0);
  root.append(axis);
  $("gantt").replaceChildren(root);
}

function selectStep(id) {
  wf.selected = id;
  renderWorkflow();
  loadStep();
}

async function loadStep() {
  const id = wf.selected;
  const s = wf.view.steps.find((x) => x.id === id);
  if (!s) return;
  $("step-detail").hidden = false;
  $("sd-id").textContent = id;
  $("sd-error").textContent = s.error || "";
  $("sd-error").hidden = !s.error;
  const log = $("sd-progress");
  log.replaceChildren(...(wf.progress[id] || []).map((m) => el("li", {}, m)));
  const base = "/workflows/" + encodeURIComponent(wf.id) + "/steps/" + encodeURIComponent(id) + "/output?stream=";
  const [out, err] = await Promise.all([api(base + "stdout"), api(base + "stderr")]);
  $("sd-stdout").textContent = out;
  $("sd-stderr").textContent = err;
  followTail(s);
}

// While the selected command step runs, its output tails live (each message replaces the
// text: the last 32 KiB of each stream); the kept output is loaded once it ends.
let tail = null;
function followTail(s) {
  // One stream per attempt: once it ended, the same attempt is not followed again.
  if (tail && tail.step === s.id && tail.attempt === s.attempts) return;
  if (tail && tail.es) tail.es.close();
  tail = null;
  if (s.status !== "running") return;
  const url = "/api/workflows/" + encodeURIComponent(wf.id) + "/steps/" + encodeURIComponent(s.id) + "/tail";
  const es = new EventSource(url);
  const mine = { step: s.id, attempt: s.attempts, es };
  tail = mine;
  es.addEventListener("output", (m) => {
    if (wf.selected !== s.id) return;
    try {
      const d = JSON.parse(m.data);
      $("sd-stdout").textContent = d.stdout;
      $("sd-stderr").textContent = d.stderr;
    } catch (e) { console.error(e); }
  });
  es.addEventListener("end", () => {
    es.close();
    mine.es = null;
    if (tail === mine && wf.selected === s.id) loadStep();
  });
}

async function control(action, body) {
  notice("");
  const path = "/workflows/" + encodeURIComponent(wf.id) + "/" + action;
  await api(path, { method: "POST", body: body || {} }).catch(() => {});
  loadWorkflow().catch(() => {});
}

function showWorkflow(id) {
  $("list-view").hidden = true;
  $("wf-view").hidden = false;
  $("step-detail").hidden = true;
  Object.assign(wf, { id, view: null, selected: null, progress: {} });
  const refresh = coalesce(() => loadWorkflow().catch(() => {}), 150);
  loadWorkflow().then(() => {
    openStream("/api/workflows/" + encodeURIComponent(id) + "/events?cursor=0", (e) => {
      if (e.type === "step_progress" && e.step_id && e.data && e.data.message) {
        (wf.progress[e.step_id] = wf.progress[e.step_id] || []).push(new Date(e.at).toLocaleTimeString() + "  " + e.data.message);
        if (wf.selected === e.step_id) $("sd-progress").append(el("li", {}, wf.progress[e.step_id].at(-1)));
        return;
      }
      refresh();
    });
  }).catch(() => {});
}

// ---------------------------------------------------------------- routing

function route() {
  notice("");
  const m = location.hash.match(/^#\/workflows\/(.+)$/);
  if (m) showWorkflow(decodeURIComponent(m[1]));
  else showList();
}

document.addEventListener("DOMContentLoaded", () => {
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); loadList(false).catch(() => {}); });
  $("f-status").addEventListener("change", () => loadList(false).catch(() => {}));
  $("more").addEventListener("click", () => loadList(true).catch(() => {}));
  $("bulk-cancel").addEventListener("click", () => bulk("cancel").catch(() => {}));
  $("bulk-delete").addEventListener("click", () => bulk("delete").catch(() => {}));
  $("btn-resume").addEventListener("click", () => control("resume", { mode: "retry" }));
  $("btn-cancel").addEventListener("click", () => control("cancel"));
  $("btn-delete").addEventListener("click", async () => {
    if (!confirm("Delete this workflow and everything stored about it?")) return;
    await api("/workflows/" + encodeURIComponent(wf.id), { method: "DELETE" }).catch(() => {});
    location.hash = "#/";
  });
  window.addEventListener("hashchange", route);
  route();
});
