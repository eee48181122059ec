// Small DOM and formatting helpers shared by the views (no framework, no build step).

/** Create an element: h("a", {href: "#/", class: "x", dataset: {k: "v"}}, "text", child...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const countFormat = new Intl.NumberFormat();

export function count(n) {
  return countFormat.format(n);
}

/** A metric value with its unit from the gateway's metric table. */
export function formatValue(meta, metric, value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  const row = meta.metrics[metric];
  const unit = row && row.unit && row.unit !== "fraction" ? ` ${row.unit}` : "";
  return `${numberFormat.format(Number(value))}${unit}`;
}

export function metricLabel(meta, metric) {
  const row = meta.metrics[metric];
  return row ? row.label : metric.replaceAll("_", " ");
}

/** "12 s ago", "5 min ago", "3 h ago", or a date; "never" for 0/null. */
export function ago(ms, now = Date.now()) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "never";
}

/** Parse "#/path?a=1&b=2" into {path, params}. */
export function parseHash(hash) {
  const raw = (hash || "").replace(/^#/, "") || "/";
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
  return { path: path || "/", params };
}

export function buildHash(path, params) {
  const entries = [...Object.entries(params)].filter(([, v]) => v !== undefined && v !== null && v !== "");
  const query = new URLSearchParams(entries).toString();
  return `#${path}${query ? `?${query}` : ""}`;
}

export function deviceHref(id) {
  return `#/device/${encodeURIComponent(id)}`;
}
