// A device page's History panel: the time range (fit to the data, 1 h, 24 h, 7 d, custom) kept in
// the address, zoom, one chart per metric with the alert rules' thresholds and the alert episodes,
// and a CSV download per chart.
import { $, buildHash, h } from "./util.js";
import { download, getJSON, store } from "./store.js";
import { MetricChart } from "./charts.js";

const HOUR = 3_600_000;
const RANGES = { "1h": HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR };
const RANGE_LABELS = { fit: "Fit to data", "1h": "1 h", "24h": "24 h", "7d": "7 d", custom: "Custom…" };
// The page opens on "fit": from the device's first reading (at most 7 d ago) to now, so ten
// minutes of data fill the chart instead of being a sliver of 24 h.
const DEFAULT_RANGE = "fit";
const MIN_FIT = 120_000;
const MAX_SPAN = 400 * 24 * HOUR;
const MIN_SPAN = 10_000;

/** "2025-11-25T14:13" in local time, for <input type="datetime-local">. */
function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

/** The range an address asks for: {kind: "custom", from, to} or {kind: "fit" | "1h" | "24h" | "7d"}. */
export function parseRange(params) {
  const from = Number(params.get("from"));
  const to = Number(params.get("to"));
  if (Number.isInteger(from) && Number.isInteger(to) && from > 0 && to > from) {
    return { kind: "custom", from, to };
  }
  const kind = params.get("range");
  return { kind: RANGES[kind] || kind === "fit" ? kind : DEFAULT_RANGE };
}

export class DeviceHistory {
  constructor() {
    this.id = null;
    this.charts = new Map();
    this.loadSeq = 0;
    this.range = null;
    this.rules = []; // the alert rules that apply to the device (GET /v1/rules)
    this.recentAlerts = []; // its recent alerts, open and closed (GET /v1/alerts)
    window.addEventListener("resize", () => {
      clearTimeout(this.resizing);
      this.resizing = setTimeout(() => { for (const c of this.charts.values()) c.resize(); }, 150);
    });
  }

  /** The panel for device ``id`` (a new one replaces the last). */
  build(id) {
    this.destroy();
    this.id = id;
    this.rules = [];
    this.recentAlerts = [];
    const rangeButtons = Object.entries(RANGE_LABELS).map(([kind, label]) =>
      h("button", { type: "button", dataset: { range: kind }, "aria-pressed": "false" }, label));
    this.root = h("section", { class: "panel", "aria-labelledby": "history-title" },
      h("h2", { id: "history-title" }, "History"),
      h("div", { class: "range-bar" },
        h("div", { role: "group", "aria-label": "Time range", id: "ranges", class: "filters" }, rangeButtons),
        h("div", { role: "group", "aria-label": "Zoom", class: "filters" },
          h("button", { type: "button", id: "zoom-in" }, "Zoom in"),
          h("button", { type: "button", id: "zoom-out" }, "Zoom out"),
          h("button", { type: "button", id: "zoom-reset" }, "Reset"))),
      h("form", { id: "custom-range", class: "custom-range", hidden: true },
        h("label", {}, "From ", h("input", { type: "datetime-local", id: "range-from", required: true })),
        h("label", {}, "To ", h("input", { type: "datetime-local", id: "range-to", required: true })),
        h("button", { type: "submit" }, "Show range"),
        h("span", { id: "range-error", class: "error", role: "alert" })),
      h("p", { class: "muted hint" }, "Drag across a chart to zoom into that time span."),
      h("div", { id: "charts", class: "charts" }));
    $("#ranges", this.root).addEventListener("click", (e) => {
      const button = e.target.closest("button[data-range]");
      if (!button) return;
      if (button.dataset.range === "custom") {
        const [from, to] = this.window();
        $("#range-from", this.root).value = localInput(from);
        $("#range-to", this.root).value = localInput(to);
        $("#custom-range", this.root).hidden = false;
        $("#range-from", this.root).focus();
      } else {
        this.navigate({ range: button.dataset.range });
      }
    });
    $("#custom-range", this.root).addEventListener("submit", (e) => {
      e.preventDefault();
      const from = new Date($("#range-from", this.root).value).getTime();
      const to = new Date($("#range-to", this.root).value).getTime();
      const error = $("#range-error", this.root);
      if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) {
        error.textContent = "“From” must be a date and time before “To”.";
        return;
      }
      error.textContent = "";
      this.navigate({ from, to });
    });
    $("#zoom-in", this.root).addEventListener("click", () => this.zoom(0.5));
    $("#zoom-out", this.root).addEventListener("click", () => this.zoom(2));
    $("#zoom-reset", this.root).addEventListener("click", () => this.navigate({ range: this.preset || DEFAULT_RANGE }));
    this.loadRules();
    return this.root;
  }

  destroy() {
    for (const chart of this.charts.values()) chart.destroy();
    this.charts.clear();
    this.id = null;
    this.range = null;
  }

  /** Show ``range`` (parseRange); true if it differs from the one shown (its history is then loaded). */
  setRange(range) {
    const changed = !this.range || JSON.stringify(range) !== JSON.stringify(this.range);
    this.range = range;
    if (changed) {
      this.fitting = null; // "fit" is chosen again from the data each time it is picked
      this.fitSpan = undefined;
    }
    if (range.kind !== "custom") this.preset = range.kind;
    for (const button of this.root.querySelectorAll("#ranges button")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range.kind));
    }
    if (range.kind === "custom") {
      $("#custom-range", this.root).hidden = false;
      $("#range-from", this.root).value = localInput(range.from);
      $("#range-to", this.root).value = localInput(range.to);
    }
    return changed;
  }

  /** [from, to] in ms for the current range (presets end now; "fit" once fitToData has run). */
  window() {
    if (this.range.kind === "custom") return [this.range.from, this.range.to];
    const now = Date.now();
    return [now - (this.range.kind === "fit" ? this.fitSpan || HOUR : RANGES[this.range.kind]), now];
  }

  navigate(range) {
    location.hash = buildHash(`/device/${encodeURIComponent(this.id)}`, range);
  }

  zoom(factor) {
    const [from, to] = this.window();
    const span = Math.min(MAX_SPAN, Math.max(MIN_SPAN, (to - from) * factor));
    const middle = (from + to) / 2;
    const end = Math.min(Date.now(), Math.round(middle + span / 2));
    this.navigate({ from: Math.round(end - span), to: end });
  }

  /** "fit": the span from the earliest reading of ``metrics`` in the last 7 d to now, found with two
   * small queries: about hourly buckets over 7 d, then 10 s buckets over the first one with data. */
  fitToData(metrics) {
    if (!this.fitting) {
      const id = this.id;
      // [start of the earliest bucket with data, the buckets' width], or null if there is none
      const earliest = async (from, to, points) => {
        const firsts = await Promise.all(metrics.map(async (metric) => {
          const query = new URLSearchParams({ device: id, metric, from, to, points });
          let reply;
          try {
            reply = await getJSON(`/v1/history?${query}`);
          } catch (err) {
            if (err.code === "unknown_metric") return null; // nothing of it stored yet
            throw err;
          }
          return reply.points.length ? [reply.points[0][0], reply.step_ms] : null;
        }));
        const found = firsts.filter((f) => f !== null).sort((a, b) => a[0] - b[0]);
        return found.length ? found[0] : null;
      };
      this.fitting = (async () => {
        const now = Date.now();
        const week = RANGES["7d"];
        const coarse = await earliest(now - week, now, 7 * 24);
        if (coarse === null) return RANGES["24h"]; // nothing in a week: the usual day
        const [bucket, step] = coarse;
        if (bucket <= now - week) return week; // as old as the week: all of it
        const from = Math.max(bucket, now - week);
        const to = Math.min(now, bucket + step);
        const fine = to > from ? await earliest(from, to, Math.min(5000, Math.ceil((to - from) / 10_000))) : null;
        const first = fine === null ? bucket : fine[0];
        return Math.min(week, Math.max(MIN_FIT, Math.ceil((now - first) * 1.05)));
      })().then((span) => {
        if (id === this.id) this.fitSpan = span;
        return span;
      }, () => {
        if (id === this.id) this.fitSpan = RANGES["24h"];
        return this.fitSpan;
      });
    }
    return this.fitting;
  }

  chart(metric) {
    let chart = this.charts.get(metric);
    if (!chart) {
      chart = new MetricChart($("#charts", this.root), store.meta, metric,
        (f, t) => this.navigate({ from: f, to: t }), (c) => this.downloadCsv(c));
      chart.range = this.window();
      this.charts.set(metric, chart);
      this.mark(chart);
    }
    return chart;
  }

  /** Load the history of ``metrics`` over the current range (all of them: a new range). */
  async load(metrics, all) {
    const seq = all ? ++this.loadSeq : this.loadSeq;
    if (!metrics.length) return;
    const charts = metrics.map((metric) => this.chart(metric)); // "loading…" while the range is fitted
    if (this.range.kind === "fit" && this.fitSpan === undefined) {
      await this.fitToData(metrics);
      if (seq !== this.loadSeq) return;
    }
    const [from, to] = this.window();
    await Promise.all(metrics.map(async (metric, i) => {
      const chart = charts[i];
      if (this.charts.get(metric) !== chart) return;
      chart.range = [from, to];
      const query = new URLSearchParams({ device: this.id, metric, from, to, points: this.points(chart) });
      try {
        const reply = await getJSON(`/v1/history?${query}`);
        if (seq !== this.loadSeq || this.charts.get(metric) !== chart) return;
        chart.setHistory(reply.points, from, to, reply.source);
      } catch (err) {
        if (seq !== this.loadSeq || this.charts.get(metric) !== chart) return;
        // a metric seen live before its first reading is committed: nothing stored yet, the stream adds it
        if (err.code === "unknown_metric") chart.setHistory([], from, to, "raw");
        else chart.summary.textContent = `History not loaded: ${err.message}`;
      }
    }));
  }

  /** The device's latest values: appended to their charts (a range that ends now moves with them);
   * a metric seen for the first time gets its chart and history. */
  live(latest) {
    const moving = this.range.kind !== "custom";
    const fresh = [];
    for (const metric of Object.keys(latest).sort()) {
      const [value, t] = latest[metric];
      const chart = this.charts.get(metric);
      if (!chart) fresh.push(metric);
      else if (moving && chart.loaded) chart.append(t, value, Date.now());
    }
    if (fresh.length) this.load(fresh, false);
  }

  points(chart) {
    return Math.min(1000, Math.max(60, chart.width()));
  }

  /** Download what ``chart`` shows as CSV: the same buckets over its current range (/v1/history.csv). */
  async downloadCsv(chart) {
    const [from, to] = chart.range;
    const query = new URLSearchParams({ device: this.id, metric: chart.metric, from: Math.round(from),
      to: Math.round(to), points: this.points(chart) });
    chart.csvStatus.textContent = "";
    try {
      await download(`/v1/history.csv?${query}`, `${this.id}-${chart.metric}.csv`.replaceAll(":", "_"));
    } catch (err) {
      chart.csvStatus.textContent = `CSV not downloaded: ${err.message}`;
    }
  }

  async loadRules() {
    const id = this.id;
    try {
      const reply = await getJSON(`/v1/rules?${new URLSearchParams({ device: id })}`);
      if (id !== this.id) return;
      this.rules = reply.rules;
      this.markAll();
    } catch {
      // no threshold lines: the charts work without them
    }
  }

  /** The device's recent alerts (open and closed) arrived: their episodes are shaded. */
  setRecentAlerts(alerts) {
    this.recentAlerts = alerts;
    this.markAll();
  }

  markAll() {
    for (const chart of this.charts.values()) this.mark(chart);
  }

  /** The thresholds of the rules on ``chart``'s metric and its alert episodes (recent and open). */
  mark(chart) {
    const metric = chart.metric;
    const thresholds = [];
    for (const rule of this.rules) {
      if (rule.metric !== metric) continue;
      for (const kind of ["above", "below"]) {
        if (typeof rule[kind] === "number") thresholds.push({ value: rule[kind], kind, rule: rule.id });
      }
    }
    const alerts = new Map(this.recentAlerts.map((a) => [a.id, a]));
    for (const a of store.alertsByDevice.get(this.id) || []) alerts.set(a.id, a);
    const episodes = [...alerts.values()].filter((a) => a.metric === metric && a.raised)
      .map((a) => ({ from: a.raised, to: a.cleared || null, severity: a.severity }))
      .sort((x, y) => x.from - y.from);
    chart.setMarks(thresholds, episodes);
  }
}
