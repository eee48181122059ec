// The device page's Status panel: the fields people know first, then every other field of the
// device's last status report, rendered as text, on/off items (outputs) or lists, never raw JSON.
import { ago, h } from "./util.js";
import { store } from "./store.js";

const STATUS_FIELDS = [
  ["boot", "Boot"], ["fw", "Firmware"], ["kind", "Kind"], ["buffered", "Queued readings"],
  ["dropped", "Dropped readings"], ["rssi", null], ["up", "Uptime"], ["interval", "Interval (s)"],
  ["interval_ms", "Interval (ms)"], ["heap_free", "Free heap (bytes)"], ["outputs", "Outputs"],
];
const KNOWN_STATUS = new Set(STATUS_FIELDS.map(([key]) => key));
const MAX_DEPTH = 3;

export function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${hours} h` : hours ? `${hours} h ${m} min` : `${m} min ${s % 60} s`;
}

function scalar(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

function words(key) {
  return key.replaceAll("_", " ");
}

/** A status value as a node or text: an object is a list of its items (an output's true/false is
 * on/off), a list is comma-separated, a nested object a nested list. */
export function statusValue(key, value, depth = 0) {
  if (key === "up" && typeof value === "number") return duration(value);
  if (Array.isArray(value)) {
    return value.length ? value.map((v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : scalar(v)))
      .join(", ") : "none";
  }
  if (value === null || typeof value !== "object") return scalar(value);
  const entries = Object.entries(value);
  if (!entries.length) return "none";
  if (depth >= MAX_DEPTH) return JSON.stringify(value);
  const switches = key === "outputs";
  return h("ul", { class: "items" }, entries.map(([name, v]) => h("li", { dataset: { item: name } },
    h("span", { class: "item-name" }, words(name)), " ",
    switches && typeof v === "boolean"
      ? h("span", { class: `badge ${v ? "on" : "off"}` }, v ? "on" : "off")
      : statusValue(name, v, depth + 1))));
}

/** The rows of the Status panel (a <dl>'s children) for ``device``. */
export function statusRows(device) {
  const status = device.status || {};
  const rows = [];
  const add = (label, value, key) => rows.push(h("div", { dataset: { field: key } }, h("dt", {}, label), h("dd", {}, value)));
  const boot = status.boot ?? device.boot;
  if (boot !== undefined && boot !== null) add("Boot", String(boot), "boot");
  for (const [key, label] of STATUS_FIELDS) {
    if (key === "boot" || status[key] === undefined) continue;
    // a status field named like a metric (rssi) is labelled from the metric table
    const row = store.meta.metrics[key];
    add(label || (row ? `${row.label} (${row.unit})` : key), statusValue(key, status[key]), key);
  }
  const err = device.last_error;
  add("Last error", err ? `${err.code}: ${err.msg} (${ago(err.at)})` : "none", "last_error");
  for (const [key, value] of Object.entries(status)) {
    if (!KNOWN_STATUS.has(key)) add(words(key), statusValue(key, value), key);
  }
  if (!Object.keys(status).length) add("Status report", "none received since the gateway started", "none");
  return rows;
}

/** The outputs the device reports in its status (name -> on), or null if it reports none. */
export function reportedOutputs(device) {
  const outputs = device && device.status && device.status.outputs;
  if (!outputs || typeof outputs !== "object" || Array.isArray(outputs)) return null;
  const names = Object.keys(outputs);
  return names.length ? outputs : null;
}
