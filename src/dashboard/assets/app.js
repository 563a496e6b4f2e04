// The dashboard's page: polls /api/overview every second (rates are computed here, from
// two readings), follows /api/events (Server-Sent Events) for recent messages, and asks
// /api/search and /api/trace/{id} on demand. No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const fmt = new Intl.NumberFormat("en");
let previous = null; // the last overview, for rates

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function rate(name, published, now) {
  if (!previous) return null;
  const before = previous.published.get(name);
  const seconds = (now - previous.time) / 1000;
  if (before === undefined || seconds <= 0) return null;
  return (published - before) / seconds;
}

function stage(title, nodes) {
  return el("div", { class: "stage" }, el("h3", {}, title), ...nodes);
}

function drawSystem(sys, deadTopics, now) {
  const inputs = [el("div", { class: "node" }, el("span", { class: "name" }, "S1 generator"))];
  if (sys.api) {
    inputs.push(el("div", { class: "node" },
      el("span", { class: "name" }, "HTTP API"),
      el("div", { class: "sub" }, el("a", { href: sys.api + "/docs" }, "docs"), " · ",
        el("a", { href: sys.api + "/metrics" }, "metrics"))));
  }
  const topics = sys.topics.map((t) => {
    const r = rate(t.name, t.published, now);
    return el("div", { class: "node" + (deadTopics.has(t.name) ? " dlq" : ""), "data-topic": t.name },
      el("span", { class: "name" }, t.name),
      el("span", { class: "num", "data-published": t.published }, fmt.format(t.published)),
      el("div", { class: "sub" }, r === null ? "…" : `${fmt.format(Math.round(r))}/s`));
  });
  const groups = sys.consumers.map((c) => el("div", { class: "node", "data-group": c.group },
    el("span", { class: "name" }, c.group),
    el("span", { class: "num " + (c.lag > 0 ? "lag-n" : "lag-0"), "data-lag": c.lag }, `lag ${fmt.format(c.lag)}`),
    el("div", { class: "sub" }, `${c.topic} → ${c.place}; rejects → ${c.dead_letters}`)));
  const stores = sys.stores.map((s) => s.error
    ? el("div", { class: "node dlq" }, s.error)
    : el("div", { class: "node", "data-store": `${s.kind}/${s.records}` },
        el("span", { class: "name" }, s.records),
        el("span", { class: "num", "data-count": s.count }, fmt.format(s.count)),
        el("div", { class: "sub" }, s.engine)));
  const title = el("h2", {}, sys.name);
  if (sys.api) title.append(el("a", { href: sys.api + "/docs" }, sys.api));
  return el("article", { class: "system", "data-system": sys.name }, title,
    el("div", { class: "flow" },
      stage("in", inputs), el("div", { class: "arrow" }, "→"),
      stage("topics", topics), el("div", { class: "arrow" }, "→"),
      stage("consumer groups", groups), el("div", { class: "arrow" }, "→"),
      stage("stores", stores)));
}

async function refresh() {
  try {
    const response = await fetch("/api/overview");
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    const now = data.time_ms;
    const deadTopics = new Set(data.dead_letters.map((d) => d.topic));
    $("#systems").replaceChildren(...data.systems.map((s) => drawSystem(s, deadTopics, now)));
    $("#dead tbody").replaceChildren(...data.dead_letters.map((d) => el("tr", { "data-dead": d.topic },
      el("td", { class: "mono" }, d.topic), el("td", {}, fmt.format(d.count)),
      el("td", {}, d.latest.filter((r) => r).join(" · ") || "—"))));
    $("#audit").textContent = `${data.audit.log} · group ${data.audit.group} · lag ${fmt.format(data.audit.lag)} · search: ${data.search}`;
    $("#where").textContent = `bus: ${data.bus}`;
    const published = new Map();
    for (const s of data.systems) for (const t of s.topics) published.set(t.name, t.published);
    previous = { time: now, published };
    $("#status").textContent = "live";
    $("#status").className = "status ok";
  } catch (e) {
    $("#status").textContent = `unavailable: ${e.message}`;
    $("#status").className = "status bad";
  }
}

function traceLink(id) {
  if (!id) return "—";
  return el("a", { class: "trace", "data-trace": id, onclick: () => showTrace(id) }, id);
}

function row(m) {
  return el("tr", { class: m.reason ? "dead" : "", "data-id": `${m.topic}/${m.partition}/${m.offset}` },
    el("td", { class: "mono" }, (m.timestamp || "").replace("T", " ").replace("Z", "")),
    el("td", { class: "mono" }, `${m.topic}/${m.partition}/${m.offset}`),
    el("td", {}, m.event_type || "—"),
    el("td", { class: "mono" }, traceLink(m.correlation_id || m.trace_id)),
    el("td", { class: "payload", title: m.reason ? `dead letter: ${m.reason}` : "" },
      m.reason ? `[${m.reason}] ` : "", m.payload_text ?? JSON.stringify(m.payload)));
}

let live = 0;
function follow() {
  const source = new EventSource("/api/events");
  source.onmessage = (e) => {
    const body = $("#recent tbody");
    body.prepend(row(JSON.parse(e.data)));
    while (body.children.length > 50) body.lastChild.remove();
    live += 1;
    $("#live-count").textContent = `(${fmt.format(live)} since this page opened)`;
  };
}

async function search(q) {
  const response = await fetch(`/api/search?limit=50&q=${encodeURIComponent(q)}`);
  const data = await response.json();
  if (!response.ok) {
    $("#search-summary").textContent = data.error;
    $("#results tbody").replaceChildren();
    return;
  }
  $("#search-summary").textContent = `${fmt.format(data.hits.length)} of ${fmt.format(data.total)} matching messages, newest first`;
  $("#results tbody").replaceChildren(...data.hits.map(row));
}

async function showTrace(id) {
  const response = await fetch(`/api/trace/${encodeURIComponent(id)}`);
  const data = await response.json();
  $("#trace-title").hidden = false;
  $("#trace-title").textContent = `Trace ${id}: ${data.hits ? data.hits.length : 0} messages`;
  $("#trace tbody").replaceChildren(...(data.hits || []).map(row));
}

$("#search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  search($("#q").value);
});
refresh();
setInterval(refresh, 1000);
follow();
