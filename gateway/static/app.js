// Edgewire dashboard: snapshot + coalesced updates over /v1/dashboard (docs/protocol.md §9).
"use strict";
const UNITS = { temperature: "°C", humidity: "%RH", pressure: "hPa", co2: "ppm", light: "lx",
  soil_moisture: "%", cpu_temperature: "°C", voltage: "V", battery: "%", rssi: "dBm" };
const state = { devices: new Map(), alerts: [] };
const $ = (sel) => document.querySelector(sel);

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : new Date(ms).toLocaleString();
}

function renderDevices() {
  const body = $("#devices tbody");
  const alerting = new Set(state.alerts.map((a) => a.device));
  const rows = [...state.devices.values()].sort((a, b) => a.id.localeCompare(b.id));
  body.replaceChildren(...rows.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.device = d.id;
    if (alerting.has(d.id)) tr.className = "alerting";
    tr.append(text("td", d.id));
    const status = document.createElement("td");
    status.append(text("span", d.online ? "online" : "offline", "badge " + (d.online ? "online" : "offline")));
    tr.append(status);
    const values = document.createElement("td");
    for (const [name, [value]] of Object.entries(d.latest || {}).sort()) {
      const v = text("span", `${name} ${Number(value).toFixed(1)} ${UNITS[name] || ""}`.trim(), "metric");
      v.dataset.metric = name;
      values.append(v);
    }
    tr.append(values, text("td", ago(d.last_seen), "muted"));
    return tr;
  }));
  const online = rows.filter((d) => d.online).length;
  $("#summary").textContent = `${online} of ${rows.length} devices online`;
}

function renderAlerts() {
  $("#alert-count").textContent = String(state.alerts.length);
  $("#no-alerts").hidden = state.alerts.length > 0;
  $("#alerts tbody").replaceChildren(...state.alerts.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.alert = a.id;
    tr.append(text("td", a.device), text("td", a.rule), text("td", Number(a.value).toFixed(1)),
      text("td", ago(a.raised), "muted"));
    return tr;
  }));
}

function addEvents(events) {
  const list = $("#events");
  for (const ev of events) {
    const what = ev.kind.startsWith("alert") ? `${ev.kind.replace("_", " ")}: ${ev.alert.rule}` : ev.kind;
    list.prepend(text("li", `${new Date(ev.at).toLocaleTimeString()} ${ev.device} ${what}`));
  }
  while (list.children.length > 200) list.lastChild.remove();
}

function apply(msg) {
  if (msg.t === "snapshot") {
    state.devices = new Map(msg.devices.map((d) => [d.id, d]));
    state.alerts = msg.alerts;
  } else if (msg.t === "update") {
    for (const [id, d] of Object.entries(msg.devices)) state.devices.set(id, d);
    if (msg.alerts) state.alerts = msg.alerts;
    if (msg.events) addEvents(msg.events);
  }
  renderDevices();
  renderAlerts();
}

// The dashboard token (when the gateway asks for one) comes in the URL fragment, which the browser
// never sends to the server: open /#token=<contents of dashboard.token>. It is kept for this tab only.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has("token")) {
  sessionStorage.setItem("edgewire-token", fragment.get("token"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("edgewire-token");

function connect(delay = 500) {
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/dashboard${query}`);
  const badge = $("#conn");
  ws.onopen = () => { badge.textContent = "live"; badge.className = "badge online"; badge.dataset.state = "live"; delay = 500; };
  ws.onmessage = (e) => apply(JSON.parse(e.data));
  ws.onclose = () => {
    badge.textContent = "reconnecting…"; badge.className = "badge offline"; badge.dataset.state = "reconnecting";
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  };
}

setInterval(renderDevices, 5000); // keep "last seen" fresh
connect();
