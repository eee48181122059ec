// The dashboard's data: the token, GETs to the gateway, the /v1/dashboard stream and the store
// the views render from. Frames and roles: docs/protocol.md section 9 and docs/dashboard.md.

// What the page shell provides (app.js): auth panel, connection badge, role, alert announcer.
export const ui = {
  authFailed: (message) => {},
  authOk: () => {},
  connection: (state, text) => {},
  role: () => {},
  announce: (alerts) => {},
};

const TOKEN_KEY = "edgewire-token";

// ------------------------------------------------------------------ token
// The token arrives in the URL fragment (/#token=…), which the browser never sends to a server.
// It is kept in this browser's localStorage (so a link opened in a new tab works) until
// "Forget token" is pressed; it travels as Authorization: Bearer (HTTP) and ?token= (WebSocket).
// Taken at start-up and on every hashchange (an address pasted into an open page); returns true
// when the browser now holds a different token, so the caller starts again with it.
export function takeTokenFromUrl() {
  const raw = location.hash.replace(/^#/, "");
  const m = raw.match(/(^|[?&])token=([^&]*)/);
  if (!m) return false;
  let taken = null;
  try {
    taken = m[2] ? decodeURIComponent(m[2]).trim() : null;
  } catch {
    taken = null; // a malformed %-escape: not a token
  }
  const changed = Boolean(taken) && taken !== localStorage.getItem(TOKEN_KEY);
  if (changed) localStorage.setItem(TOKEN_KEY, taken);
  let rest = raw.slice(0, m.index) + raw.slice(m.index + m[0].length);
  rest = rest.replace(/^([^?&]*)&/, "$1?"); // "#/x?token=T&a=b" leaves "/x&a=b": make it "/x?a=b"
  history.replaceState(null, "", `${location.pathname}#${rest && rest !== "?" ? rest : "/"}`);
  return changed;
}

export const TOKEN = TOKEN_KEY;

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

export class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET ``path`` from the gateway with the token; HttpError (with the JSON error's code) on a refusal. */
async function getOk(path) {
  const resp = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (resp.ok) return resp;
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  throw new HttpError(resp.status, body && body.code, (body && body.message) || resp.statusText);
}

/** GET a JSON document from the gateway with the token; HttpError on a refusal. */
export async function getJSON(path) {
  const resp = await getOk(path);
  try {
    return await resp.json();
  } catch {
    return null;
  }
}

/** GET a file (a CSV export) with the token and hand it to the browser as a download named ``name``. */
export async function download(path, name) {
  const blob = await (await getOk(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ------------------------------------------------------------------ store
export const store = {
  role: null, // "viewer" | "operator" once the session is known
  tokenName: null,
  meta: { metrics: {}, commands: {} },
  devices: new Map(), // id -> device as the stream sends it, plus _v (a version counter)
  alerts: [], // open alerts (not cleared)
  alertsByDevice: new Map(),
  alertsVersion: 0,
  fleetHash: "#/",
  live: false,
  synced: false, // a snapshot of the registry arrived: a device not in it does not exist
  version: 0,
  listeners: new Set(),
};

let renderQueued = false;
function changed() {
  store.version += 1;
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    for (const fn of store.listeners) fn();
  });
}

const SEVERITY_RANK = { critical: 0, major: 1, minor: 2, warning: 3 };
export function severityRank(alert) {
  return SEVERITY_RANK[alert.severity] ?? 4;
}

function setAlerts(alerts) {
  store.alertsVersion += 1;
  const before = new Set(store.alerts.map((a) => a.id));
  store.alerts = alerts.filter((a) => a.state !== "cleared");
  store.alerts.sort((a, b) => severityRank(a) - severityRank(b) || (b.raised || 0) - (a.raised || 0));
  store.alertsByDevice = new Map();
  for (const alert of store.alerts) {
    const list = store.alertsByDevice.get(alert.device) || [];
    list.push(alert);
    store.alertsByDevice.set(alert.device, list);
  }
  if (initialAlertsSeen) {
    const fresh = store.alerts.filter((a) => !before.has(a.id));
    if (fresh.length) ui.announce(fresh);
  }
  initialAlertsSeen = true;
}
let initialAlertsSeen = false;

export function alertText(alert) {
  return alert.text || alert.message || alert.rule || alert.metric || "alert";
}

function putDevice(device) {
  const old = store.devices.get(device.id);
  device._v = old ? old._v + 1 : 1;
  store.devices.set(device.id, device);
}

function apply(msg) {
  if (msg.t === "snapshot") {
    store.role = msg.role;
    store.tokenName = msg.token;
    ui.role();
    store.devices = new Map();
    for (const device of msg.devices) putDevice(device);
    store.synced = true;
    setAlerts(msg.alerts || []);
  } else if (msg.t === "update") {
    for (const device of Object.values(msg.devices || {})) putDevice(device);
    for (const id of msg.removed || []) store.devices.delete(id); // deleted from the registry
    if (msg.alerts) setAlerts(msg.alerts);
    if (msg.events) for (const fn of eventListeners) fn(msg.events);
  } else if (msg.t === "ok" || msg.t === "error") {
    const entry = pending.get(msg.id);
    if (entry) {
      pending.delete(msg.id);
      clearTimeout(entry.timer);
      if (msg.t === "ok") entry.resolve(msg);
      else entry.reject(Object.assign(new Error(msg.msg), { code: msg.code }));
    }
    return;
  }
  changed();
}

export const eventListeners = new Set();

// ------------------------------------------------------------------ stream
let ws = null;
let delay = 500;
let nextId = 1;
const pending = new Map();

/** Send an operator action over the stream; resolves with the "ok" frame, rejects with {code, message}. */
export function request(frame, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      reject(Object.assign(new Error("not connected to the gateway; wait for “live” and retry"),
        { code: "not_connected" }));
      return;
    }
    const id = `r${nextId++}`;
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(Object.assign(new Error("no answer from the gateway"), { code: "timeout" }));
    }, timeoutMs);
    pending.set(id, { resolve, reject, timer });
    ws.send(JSON.stringify({ ...frame, id }));
  });
}

function setConn(state, text) {
  store.live = state === "live";
  ui.connection(state, text);
}

function connect(mine) {
  const t = token();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/dashboard${t ? `?token=${encodeURIComponent(t)}` : ""}`);
  ws = socket;
  let opened = false;
  socket.onopen = () => {
    opened = true;
    delay = 500;
    setConn("live", "live");
  };
  socket.onmessage = (e) => apply(JSON.parse(e.data));
  socket.onclose = () => {
    if (ws !== socket) return;
    ws = null;
    for (const [id, entry] of pending) {
      clearTimeout(entry.timer);
      entry.reject(Object.assign(new Error("connection to the gateway lost"), { code: "not_connected" }));
      pending.delete(id);
    }
    setConn("reconnecting", "reconnecting…");
    changed();
    // A refused upgrade looks like any failure to the browser: ask /v1/session why.
    const wait = opened ? 500 : delay;
    setTimeout(() => mine === generation && start(opened ? 500 : Math.min(delay * 2, 10000)), wait);
  };
}

let generation = 0;

/** (Re)start: ask /v1/session who we are, load the metric and command tables, open the stream. */
export async function start(nextDelay = 500) {
  const mine = ++generation; // a newer start (token entered, retry) supersedes this one
  delay = nextDelay;
  if (ws) {
    const old = ws;
    ws = null;
    old.close();
  }
  try {
    const session = await getJSON("/v1/session");
    if (!Object.keys(store.meta.metrics).length) store.meta = await getJSON("/v1/meta");
    if (mine !== generation) return;
    ui.authOk();
    store.role = session.role;
    store.tokenName = session.token;
    ui.role();
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
      ui.authFailed(err.message); // says why and how to get a token; no retry loop
      return;
    }
    setConn("reconnecting", "gateway unreachable, retrying…");
    setTimeout(() => mine === generation && start(Math.min(delay * 2, 10000)), delay);
    return;
  }
  connect(mine);
}
