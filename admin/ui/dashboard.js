// meshd dashboard: polls dashboard.json (a relative URL, so it works
// through kubectl port-forward and under a path prefix) and draws it.
// Text from meshd (names, errors) is set with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
let timer = null, busy = false;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) {
    if (k === undefined || k === null) continue;
    e.append(k instanceof Node ? k : String(k));
  }
  return e;
}

function fmtRate(v) { return v === undefined ? "–" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
function fmtPct(s) { return s && s.calls > 0 ? (100 * s.error_rate).toFixed(1) + "%" : "–"; }
function fmtMs(v) { return v === undefined || v === null ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + "s" : v >= 10 ? v.toFixed(0) + "ms" : v.toFixed(2) + "ms"; }

// spark draws calls/s (line) and errors/s (area) of a stat's points.
function spark(s) {
  const W = 160, H = 30, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const base = document.createElementNS(NS, "line");
  base.setAttribute("class", "axis");
  base.setAttribute("x1", 0); base.setAttribute("x2", W); base.setAttribute("y1", H - 0.5); base.setAttribute("y2", H - 0.5);
  svg.append(base);
  const pts = (s && s.points) || [];
  if (pts.length === 0) return svg;
  const t0 = pts[0].t - 1, t1 = pts[pts.length - 1].t;
  const max = Math.max(1e-9, ...pts.map(p => p.rate));
  const x = t => ((t - t0) / Math.max(1, t1 - t0)) * (W - 2) + 1;
  const y = v => H - 1 - (v / max) * (H - 4);
  const line = (k) => pts.map(p => `${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)}`).join(" ");
  const area = document.createElementNS(NS, "polygon");
  area.setAttribute("class", "errors");
  area.setAttribute("points", `${x(pts[0].t).toFixed(1)},${H - 1} ${line("errors")} ${x(t1).toFixed(1)},${H - 1}`);
  const rate = document.createElementNS(NS, "polyline");
  rate.setAttribute("class", "rate");
  rate.setAttribute("points", pts.length === 1 ? `1,${y(pts[0].rate)} ${W - 1},${y(pts[0].rate)}` : line("rate"));
  const title = document.createElementNS(NS, "title");
  title.textContent = `peak ${fmtRate(max)} calls/s over ${pts.length} polls`;
  svg.append(area, rate, title);
  return svg;
}

function statCells(s) {
  return [
    el("td", { class: "num" }, s && s.calls > 0 ? fmtRate(s.rate) : "0"),
    el("td", { class: "num" + (s && s.error_rate > 0 ? " err" : "") }, fmtPct(s)),
    el("td", { class: "num" }, fmtMs(s && s.p50_ms)),
    el("td", { class: "num" }, fmtMs(s && s.p99_ms)),
    el("td", {}, spark(s)),
  ];
}

function pick(o, ...names) { for (const n of names) if (o && o[n] !== undefined && o[n] !== null && o[n] !== "") return o[n]; return undefined; }

function describeMatch(m) {
  const parts = [];
  const meth = pick(m, "method", "Method"), svc = pick(m, "service", "Service"), pre = pick(m, "prefix", "Prefix");
  if (meth) parts.push(meth); else if (svc) parts.push("service " + svc); else if (pre) parts.push("prefix " + pre);
  const auth = pick(m, "authority", "Authority");
  if (auth) parts.push("authority " + auth);
  for (const h of pick(m, "headers", "Headers") || []) parts.push("header " + pick(h, "name", "Name"));
  return parts.join(" · ");
}

function render(d) {
  const ov = d.overview || {};
  const recent = d.recent || { routes: {}, clusters: {} };
  const ready = document.getElementById("ready");
  ready.textContent = d.ready === "ready" ? "ready" : "not ready: " + d.ready;
  ready.className = "badge " + (d.ready === "ready" ? "ok" : "bad");
  const reload = document.getElementById("reload");
  reload.replaceChildren("reloads: " + (ov.reloads_ok || 0) + " ok, " + (ov.reloads_failed || 0) + " failed");
  if (ov.last_reload_error) reload.append(" · ", el("span", { class: "err", id: "reload-error" }, "last reload failed: " + ov.last_reload_error));
  document.getElementById("updated").textContent = "updated " + new Date(d.time).toLocaleTimeString() +
    (recent.window_seconds > 0 ? " · window " + Math.round(recent.window_seconds) + "s" : "");

  const lt = document.querySelector("#listeners tbody");
  lt.replaceChildren(...(ov.listeners || []).map(l => el("tr", { "data-listener": l.name },
    el("td", {}, l.name), el("td", {}, el("code", {}, l.address)), el("td", { class: "muted" }, (l.features || []).join(", ")))));

  const rt = document.querySelector("#routes tbody");
  rt.replaceChildren(...(d.routes || []).map((r, i) => {
    const total = (r.clusters || []).reduce((a, c) => a + (pick(c, "weight", "Weight") || 0), 0);
    const split = (r.clusters || []).map(c => {
      const w = pick(c, "weight", "Weight") || 0, name = pick(c, "name", "Name");
      return (r.clusters.length > 1 && total > 0) ? `${name} ${Math.round(100 * w / total)}%` : name;
    }).join(", ");
    return el("tr", { "data-route": r.name }, el("td", { class: "muted" }, i + 1), el("td", {}, el("b", {}, r.name)),
      el("td", {}, el("code", {}, describeMatch(r.match))), el("td", {}, split), ...statCells(recent.routes[r.name]));
  }));

  const names = Object.keys(d.clusters || {}).sort();
  document.getElementById("clusters").replaceChildren(...names.map(name => {
    const st = d.clusters[name].status || {};
    const eps = st.Endpoints || [];
    const s = recent.clusters[name];
    const head = el("div", { class: "head" }, el("b", {}, name), el("span", { class: "muted" }, st.Policy || ""),
      el("span", { class: "badge " + (st.Healthy > 0 ? "ok" : "bad") }, `${st.Healthy || 0}/${st.Total || 0} serving`),
      st.Panic ? el("span", { class: "badge bad" }, "panic") : null,
      el("span", {}, (s && s.calls > 0 ? fmtRate(s.rate) : "0") + " calls/s"),
      el("span", { class: s && s.error_rate > 0 ? "err" : "" }, "errors " + fmtPct(s)),
      el("span", {}, "p50 " + fmtMs(s && s.p50_ms)), el("span", {}, "p99 " + fmtMs(s && s.p99_ms)), spark(s));
    const rows = eps.map(e => el("tr", { "data-endpoint": e.Address, "data-state": e.State },
      el("td", {}, el("code", {}, e.Address)),
      el("td", {}, el("span", { class: "badge state-" + e.State }, e.State)),
      el("td", { class: "muted" }, e.Source || ""), el("td", { class: "muted" }, e.Reason || ""),
      el("td", {}, e.Zone || "–"),
      el("td", { class: "num" }, e.EffectiveWeight && e.EffectiveWeight !== e.Weight ? `${e.Weight} (${e.EffectiveWeight.toFixed(1)})` : e.Weight),
      el("td", { class: "num" }, e.Outstanding || 0)));
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...["endpoint", "state", "source", "reason", "zone"].map(h => el("th", {}, h)),
      el("th", { class: "num" }, "weight"), el("th", { class: "num" }, "outstanding"))), el("tbody", {}, ...rows));
    return el("div", { class: "cluster", "data-cluster": name }, head, table);
  }));
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

async function poll() {
  timer = null;
  if (busy) return;
  busy = true;
  const banner = document.getElementById("banner");
  try {
    const resp = await fetch("dashboard.json", { cache: "no-store" });
    if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
    render(await resp.json());
    banner.hidden = true;
  } catch (e) {
    banner.textContent = "cannot reach meshd's admin port: " + e.message;
    banner.hidden = false;
  }
  busy = false;
  if (!document.hidden) timer = setTimeout(poll, POLL_MS);
}

// A hidden tab stops polling: nobody looks, nothing is computed.
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && timer === null) poll();
});
poll();
