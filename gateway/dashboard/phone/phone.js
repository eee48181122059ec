// The phone page: this browser as an Edgewire device (docs/dashboard.md, "A phone as a device").
//
// The device core is protocol/device.py, run by MicroPython's WebAssembly port; phone.py drives it.
// This file is the board: the WebSocket, the sensors, IndexedDB (the outbox's store, as the
// firmware's flash ring), the screen and the vibration motor, offered to Python as the module
// "phonehost". The token comes once in the address's fragment (#token=…&device=…, the dashboard's
// add-device QR code), is kept in localStorage and leaves the address bar at once; it travels only
// in the first WebSocket frame (docs/protocol.md section 2), never in a URL.

import { loadMicroPython } from "/phone/vendor/micropython.mjs";

const KEY = "edgewire-phone"; // localStorage: {device, token}
const DB = "edgewire-phone"; // IndexedDB: "readings" (seq -> reading JSON), "meta" ("counter")
const DEFAULT_INTERVAL_S = 2;
const $ = (sel) => document.querySelector(sel);

// ------------------------------------------------------------------ credential
function takeCredential() {
  const raw = location.hash.replace(/^#/, "");
  if (raw) {
    const params = new URLSearchParams(raw);
    const token = params.get("token");
    const device = params.get("device");
    history.replaceState(null, "", location.pathname); // the token leaves the address bar
    if (token && device) localStorage.setItem(KEY, JSON.stringify({ device, token }));
  }
  try {
    const held = JSON.parse(localStorage.getItem(KEY) || "null");
    return held && typeof held.device === "string" && typeof held.token === "string" ? held : null;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ IndexedDB: the outbox's store
function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb() {
  const req = indexedDB.open(DB, 1);
  req.onupgradeneeded = () => {
    req.result.createObjectStore("readings");
    req.result.createObjectStore("meta");
  };
  return request(req);
}

class Store {
  constructor(db) {
    this.db = db;
    this.chain = Promise.resolve(); // writes apply in the order Python made them
  }

  async load(device) {
    const tx = this.db.transaction(["readings", "meta"], "readwrite");
    const readings = tx.objectStore("readings");
    const meta = tx.objectStore("meta");
    let counter = await request(meta.get("counter"));
    if (!counter || counter.device !== device) { // another device's QR code: its readings are not ours
      readings.clear();
      counter = { device, next_seq: 1, confirmed: false, dropped: 0 };
      meta.put(counter, "counter");
    }
    const keys = await request(readings.getAllKeys());
    const values = await request(readings.getAll());
    if (keys.length && keys[keys.length - 1] >= counter.next_seq) { // closed between a reading's write and the counter's
      counter = { ...counter, next_seq: keys[keys.length - 1] + 1 };
    }
    return { counter, records: keys.map((k, i) => [k, values[i]]) };
  }

  write(fn) {
    this.chain = this.chain.then(() => new Promise((resolve, reject) => {
      const tx = this.db.transaction(["readings", "meta"], "readwrite");
      fn(tx.objectStore("readings"), tx.objectStore("meta"));
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    })).catch((err) => console.error("phone: IndexedDB write failed", err));
  }
}

// ------------------------------------------------------------------ sensors
const latest = {}; // metric -> value, since the last reading (motion, orientation, light)
const lasting = {}; // metric -> value, kept until it changes (battery, position)

function round(value, places) {
  const f = 10 ** places;
  return Math.round(value * f) / f;
}

function onMotion(e) {
  const a = e.accelerationIncludingGravity || e.acceleration;
  if (!a) return;
  for (const [axis, v] of [["x", a.x], ["y", a.y], ["z", a.z]]) {
    if (typeof v === "number" && Number.isFinite(v)) latest[`accel_${axis}`] = round(v, 2);
  }
}

function onOrientation(e) {
  for (const name of ["alpha", "beta", "gamma"]) {
    const v = e[name];
    if (typeof v === "number" && Number.isFinite(v)) latest[`orientation_${name}`] = round(v, 1);
  }
}

function startLight() {
  if (!("AmbientLightSensor" in window)) return false;
  try {
    const sensor = new window.AmbientLightSensor();
    sensor.addEventListener("reading", () => { latest.light = round(sensor.illuminance, 1); });
    sensor.addEventListener("error", () => showSensor("light", "not allowed"));
    sensor.start();
    return true;
  } catch {
    return false;
  }
}

async function startBattery() {
  if (!navigator.getBattery) return false;
  const battery = await navigator.getBattery();
  const update = () => { lasting.battery = Math.round(battery.level * 100); };
  update();
  battery.addEventListener("levelchange", update);
  return true;
}

function startPosition() { // only after the user pressed "Share position" (and the browser asked)
  if (!window.isSecureContext) return showSensor("position", "needs HTTPS");
  if (!navigator.geolocation) return showSensor("position", "not in this browser");
  navigator.geolocation.watchPosition((p) => {
    lasting.latitude = round(p.coords.latitude, 6);
    lasting.longitude = round(p.coords.longitude, 6);
    showSensor("position", "shared");
  }, (err) => showSensor("position", err.code === 1 ? "refused" : "unavailable"), { enableHighAccuracy: true });
  showSensor("position", "asked");
}

async function askMotion() { // iOS asks from a tap; others need nothing
  for (const kind of [window.DeviceMotionEvent, window.DeviceOrientationEvent]) {
    if (kind && typeof kind.requestPermission === "function") {
      try { await kind.requestPermission(); } catch { /* refused: those metrics stay absent */ }
    }
  }
}

function showSensor(name, text) {
  const el = document.querySelector(`[data-sensor="${name}"]`);
  if (el) el.textContent = text;
}

// ------------------------------------------------------------------ outputs (set_output)
let buzzing = null;

function output(name, on) {
  if (name === "screen") {
    document.body.classList.toggle("flash", on);
    document.body.dataset.screen = on ? "on" : "off";
    return true;
  }
  if (typeof navigator.vibrate !== "function") return false;
  clearInterval(buzzing);
  buzzing = null;
  document.body.dataset.vibrate = on ? "on" : "off";
  if (!on) return navigator.vibrate(0) || true;
  navigator.vibrate([400, 200]);
  buzzing = setInterval(() => navigator.vibrate([400, 200]), 600);
  return true;
}

// ------------------------------------------------------------------ the device
class Device {
  constructor(mp, credential, store, loaded) {
    this.store = store;
    this.device = credential.device;
    this.ws = null;
    this.retryTimer = null;
    this.wakeTimer = null;
    this.stopped = false;
    this.interval = DEFAULT_INTERVAL_S;
    this.sampler = null;
    this.url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/device`;
    mp.registerJsModule("phonehost", this.host());
    mp.runPython("from phone import Phone");
    const boot = Math.random().toString(36).slice(2, 10);
    const { counter, records } = loaded;
    this.py = mp.globals.get("Phone")(credential.device, credential.token, boot, counter.next_seq,
      counter.confirmed, JSON.stringify(records), this.interval);
  }

  host() {
    return {
      send: (frame) => { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(frame); },
      put: (seq, text) => this.store.write((r) => r.put(text, seq)),
      remove: (first, last) => this.store.write((r) => r.delete(IDBKeyRange.bound(first, last))),
      renumber: (delta) => this.store.write((r) => {
        const keys = r.getAllKeys();
        const values = r.getAll();
        values.onsuccess = () => {
          r.clear();
          keys.result.forEach((k, i) => r.put(values.result[i], k + delta));
        };
      }),
      meta: (nextSeq, confirmed, dropped) => this.store.write((r, m) => {
        m.put({ device: this.device, next_seq: nextSeq, confirmed, dropped }, "counter");
      }),
      set_interval: (seconds) => { this.interval = seconds; this.sample(); },
      output,
      wake: (ms) => {
        clearTimeout(this.wakeTimer);
        this.wakeTimer = setTimeout(() => this.call("pump"), ms);
      },
      retry: (action, delayMs, reason) => this.retry(action, delayMs, reason),
      log: (text) => console.info(`phone: ${text}`),
    };
  }

  call(method, ...args) {
    try {
      const result = this.py[method](...args, Date.now());
      this.render();
      return result;
    } catch (err) {
      console.error(`phone: ${method} failed`, err);
      return null;
    }
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws || this.stopped) return;
    if (navigator.onLine === false) { // surely offline: the "online" event calls again
      this.render("offline");
      return;
    }
    let reached = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.render("connecting");
    ws.onopen = () => { reached = true; this.call("opened"); };
    ws.onmessage = (e) => { if (typeof e.data === "string") this.call("message", e.data); };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.call("ended", reached ? e.code : 0, reached);
    };
  }

  retry(action, delayMs, reason) {
    $("#reason").textContent = reason;
    if (action === "stop" || action === "refresh") { // a device token never expires: refresh is a stop too
      this.stopped = true;
      this.render("stopped");
      return;
    }
    this.render(navigator.onLine === false ? "offline" : "waiting");
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  online() { // the network is back: try now rather than at the end of the backoff
    if (!this.ws && !this.stopped) this.connect();
  }

  offline() { // a dead network: the connection is lost now, not at TCP's timeout (1006: no close frame)
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.close();
    this.call("ended", 1006, true);
  }

  sample() {
    clearInterval(this.sampler);
    this.sampler = setInterval(() => this.take(), this.interval * 1000);
    $("#interval").textContent = `${this.interval} s`;
  }

  take() {
    const m = { ...latest, ...lasting };
    for (const k of Object.keys(latest)) delete latest[k];
    if (!Object.keys(m).length) return;
    $("#values").textContent = Object.entries(m).map(([k, v]) => `${k} ${v}`).join(" · ");
    this.call("reading", JSON.stringify({ m, ts: Date.now() }));
  }

  render(conn) {
    const state = JSON.parse(this.py.state());
    const el = $("#conn");
    el.dataset.state = conn || (state.online ? "online" : el.dataset.state === "online" ? "waiting" : el.dataset.state);
    el.textContent = el.dataset.state;
    $("#buffered").textContent = String(state.buffered);
    $("#acked").textContent = String(state.acked);
    $("#next-seq").textContent = String(state.next_seq);
  }
}

// ------------------------------------------------------------------ start
function say(state, text) {
  $("#conn").dataset.state = state;
  $("#conn").textContent = text;
}

async function main() {
  const credential = takeCredential();
  if (!credential) {
    say("no-token", "no token");
    $("#help").hidden = false;
    return;
  }
  $("#device").textContent = credential.device;
  // Plain HTTP (not localhost): the browser hides motion, orientation and battery and refuses the
  // position; the device still connects, buffers and answers commands (docs/dashboard.md).
  $("#insecure").hidden = window.isSecureContext;
  if (!navigator.locks) return run(credential); // plain HTTP has no Web Locks: one tab is up to the user
  // One tab runs the device: two would number readings from the same store twice.
  return navigator.locks.request(KEY, { ifAvailable: true }, async (lock) => {
    if (!lock) return say("other-tab", "running in another tab");
    await run(credential);
    return new Promise(() => {}); // held while this page lives
  });
}

// The core's modules and phone.py, as the gateway lists them (gateway/dashboard/phone_page.py).
async function fetchSources() {
  const listing = await fetch("/phone/files.json");
  if (!listing.ok) throw new Error(`/phone/files.json: HTTP ${listing.status}`);
  return Promise.all((await listing.json()).map(async (name) => {
    const resp = await fetch(`/phone/${name}`);
    if (!resp.ok) throw new Error(`/phone/${name}: HTTP ${resp.status}`);
    return [name, new Uint8Array(await resp.arrayBuffer())];
  }));
}

async function run(credential) {
  const started = performance.now();
  const [mp, sources, store] = await Promise.all([
    loadMicroPython({ heapsize: 2 * 1024 * 1024, url: "/phone/vendor/micropython.wasm",
      stdout: (line) => console.info(line), stderr: (line) => console.warn(line) }),
    fetchSources(),
    openDb().then((db) => new Store(db)),
  ]);
  try { mp.FS.mkdir("/protocol"); } catch { /* exists */ }
  for (const [name, body] of sources) mp.FS.writeFile(`/${name}`, body);
  const device = new Device(mp, credential, store, await store.load(credential.device));
  document.body.dataset.loadMs = String(Math.round(performance.now() - started));
  window.addEventListener("devicemotion", onMotion);
  window.addEventListener("deviceorientation", onOrientation);
  window.addEventListener("online", () => device.online());
  window.addEventListener("offline", () => device.offline());
  showSensor("motion", window.DeviceMotionEvent ? "listening" : "needs HTTPS");
  showSensor("light", startLight() ? "listening" : "not in this browser");
  startBattery().then((ok) => showSensor("battery", ok ? "listening" : window.isSecureContext
    ? "not in this browser" : "needs HTTPS"),
    () => showSensor("battery", "not in this browser"));
  $("#motion-button").addEventListener("click", askMotion);
  $("#position-button").addEventListener("click", startPosition);
  $("#forget").addEventListener("click", () => { localStorage.removeItem(KEY); location.reload(); });
  device.sample();
  device.connect();
}

main().catch((err) => {
  console.error("phone: could not start", err);
  say("failed", `could not start: ${err.message || err}`);
});
