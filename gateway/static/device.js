// A device page (#/device/<id>?range=fit|1h|24h|7d or ?from=MS&to=MS): live values, status, alerts,
// history charts with time ranges, zoom, alert thresholds and episodes, CSV downloads, and (for
// operators) command forms.
import { $, ago, buildHash, formatValue, h, metricLabel, when } from "./util.js";
import { alertRow, bindAlertActions, keepFocus, refreshSince } from "./alerts.js";
import { alertText, download, getJSON, request, store } from "./store.js";
import { MetricChart } from "./charts.js";
import { reportedOutputs, statusRows } from "./status.js";

const HOUR = 3_600_000;
const RANGES = { "1h": HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR };
const RANGE_LABELS = { fit: "Fit to data", "1h": "1 h", "24h": "24 h", "7d": "7 d", custom: "Custom…" };
// The page opens on "fit": from the device's first reading (at most 7 d ago) to now, so ten
// minutes of data fill the chart instead of being a sliver of 24 h.
const DEFAULT_RANGE = "fit";
const MIN_FIT = 120_000;
const MAX_SPAN = 400 * 24 * HOUR;
const MIN_SPAN = 10_000;
const ALERT_HISTORY = 50; // recent alerts listed, and shaded on the charts

/** "2025-11-25T14:13" in local time, for <input type="datetime-local">. */
function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export class DeviceView {
  constructor(root) {
    this.root = root;
    this.id = null;
    this.charts = new Map();
    this.loadSeq = 0;
    this.builtFor = null;
    this.rules = [];
    this.recentAlerts = [];
    window.addEventListener("resize", () => {
      clearTimeout(this.resizing);
      this.resizing = setTimeout(() => { for (const c of this.charts.values()) c.resize(); }, 150);
    });
  }

  parseRange(params) {
    const from = Number(params.get("from"));
    const to = Number(params.get("to"));
    if (Number.isInteger(from) && Number.isInteger(to) && from > 0 && to > from) {
      return { kind: "custom", from, to };
    }
    const kind = RANGES[params.get("range")] || params.get("range") === "fit" ? params.get("range") : DEFAULT_RANGE;
    return { kind };
  }

  /** [from, to] in ms for the current range (presets end now; "fit" once fitToData has run). */
  window() {
    if (this.range.kind === "custom") return [this.range.from, this.range.to];
    const now = Date.now();
    return [now - (this.range.kind === "fit" ? this.fitSpan || HOUR : RANGES[this.range.kind]), now];
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
          const reply = await getJSON(`/v1/history?${query}`);
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

  show(id, params, switched, moveFocus) {
    const newDevice = switched || id !== this.id;
    this.id = id;
    const range = this.parseRange(params);
    const rangeChanged = !this.range || newDevice || JSON.stringify(range) !== JSON.stringify(this.range);
    this.range = range;
    if (rangeChanged) {
      this.fitting = null; // "fit" is chosen again from the data each time it is picked
      this.fitSpan = undefined;
    }
    this.root.hidden = false;
    if (newDevice) {
      document.title = `${id} · Edgewire`;
      this.build();
    }
    this.syncRangeControls();
    this.render();
    if (rangeChanged) this.loadHistory();
    if (newDevice && moveFocus) {
      $("#device-title", this.root).focus();
      window.scrollTo(0, 0);
    }
  }

  hide() {
    this.root.hidden = true;
    this.destroyCharts();
    this.id = null;
    this.builtFor = null;
  }

  /** Every second: the alerts' "Since" times. */
  clock() {
    if (!this.root.hidden && this.id) refreshSince($("#device-alerts", this.root));
  }

  destroyCharts() {
    for (const chart of this.charts.values()) chart.destroy();
    this.charts.clear();
  }

  build() {
    this.destroyCharts();
    this.builtFor = this.id;
    this.commandsRole = null;
    this.alertsVersion = null;
    this.rules = [];
    this.recentAlerts = [];
    const rangeButtons = Object.entries(RANGE_LABELS).map(([kind, label]) =>
      h("button", { type: "button", dataset: { range: kind }, "aria-pressed": "false" }, label));
    this.root.replaceChildren(
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
        h("a", { href: store.fleetHash || "#/", id: "back" }, "← All devices")),
      h("header", { class: "device-head" },
        h("h1", { id: "device-title", tabindex: "-1" }, this.id),
        h("span", { id: "device-state", class: "badge" }),
        h("span", { id: "device-label", class: "muted" }),
        h("span", { id: "device-seen", class: "muted" })),
      h("p", { id: "device-missing", class: "notice", role: "status", hidden: true }),
      h("div", { id: "device-body", hidden: true },
      h("section", { class: "panel", "aria-labelledby": "live-title" },
        h("h2", { id: "live-title" }, "Live values"),
        h("div", { id: "live-values", class: "cards" }),
        h("p", { id: "no-values", class: "muted" }, "No readings yet.")),
      h("section", { class: "panel", "aria-labelledby": "status-title" },
        h("h2", { id: "status-title" }, "Status"),
        h("dl", { id: "device-status", class: "status" })),
      h("section", { class: "panel", "aria-labelledby": "device-alerts-title" },
        h("h2", { id: "device-alerts-title" }, "Alerts"),
        h("p", { id: "device-no-alerts", class: "muted" }, "No open alerts."),
        h("div", { class: "table-wrap" }, h("table", { id: "device-alerts", class: "alerts" },
          h("caption", { class: "sr-only" }, "Open alerts of this device"),
          h("thead", {}, h("tr", {}, ["Severity", "Alert", "Value", "State", "Since", "Actions"]
            .map((t) => h("th", { scope: "col" }, t)))),
          h("tbody"))),
        h("p", { id: "device-alert-status", class: "muted", role: "status" }),
        h("details", { id: "alert-history" },
          h("summary", {}, "Recent alerts (open and closed)"),
          h("ol", { id: "alert-history-list", class: "history-list" }))),
      h("section", { class: "panel", "aria-labelledby": "history-title" },
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
        h("div", { id: "charts", class: "charts" })),
      h("section", { class: "panel", "aria-labelledby": "commands-title" },
        h("h2", { id: "commands-title" }, "Commands"),
        h("p", { id: "commands-note", class: "notice", hidden: true }),
        h("div", { id: "commands", class: "commands" }),
        h("h3", {}, "Results"),
        h("ol", { id: "command-log", class: "history-list", "aria-live": "polite" }))));

    bindAlertActions($("#device-alerts", this.root), $("#device-alert-status", this.root));
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
    this.loadAlertHistory();
    this.loadRules();
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

  syncRangeControls() {
    if (this.range.kind !== "custom") this.preset = this.range.kind;
    for (const button of this.root.querySelectorAll("#ranges button")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === this.range.kind));
    }
    const form = $("#custom-range", this.root);
    if (this.range.kind === "custom") {
      form.hidden = false;
      $("#range-from", this.root).value = localInput(this.range.from);
      $("#range-to", this.root).value = localInput(this.range.to);
    }
  }

  chart(metric) {
    let chart = this.charts.get(metric);
    if (!chart) {
      const container = $("#charts", this.root);
      const [from, to] = this.window();
      chart = new MetricChart(container, store.meta, metric, (f, t) => this.navigate({ from: f, to: t }),
        (c) => this.downloadCsv(c));
      chart.range = [from, to];
      this.charts.set(metric, chart);
      this.markChart(chart);
    }
    return chart;
  }

  async loadHistory(metrics) {
    const device = store.devices.get(this.id);
    const names = metrics || Object.keys((device && device.latest) || {}).sort();
    const seq = metrics ? this.loadSeq : ++this.loadSeq;
    if (!names.length) return;
    const charts = names.map((metric) => this.chart(metric)); // "loading…" while the range is fitted
    if (this.range.kind === "fit" && this.fitSpan === undefined) {
      await this.fitToData(names);
      if (seq !== this.loadSeq) return;
    }
    const [from, to] = this.window();
    await Promise.all(names.map(async (metric, i) => {
      const chart = charts[i];
      if (this.charts.get(metric) !== chart) return;
      chart.range = [from, to];
      const query = new URLSearchParams({ device: this.id, metric, from, to, points: this.points(chart) });
      try {
        const reply = await getJSON(`/v1/history?${query}`);
        if (seq !== this.loadSeq || this.charts.get(metric) !== chart) return;
        chart.setHistory(reply.points, from, to, reply.source);
      } catch (err) {
        if (seq === this.loadSeq) chart.summary.textContent = `History not loaded: ${err.message}`;
      }
    }));
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
      for (const chart of this.charts.values()) this.markChart(chart);
    } catch {
      // no threshold lines: the charts work without them
    }
  }

  /** The thresholds of the rules on ``chart``'s metric and its alert episodes (recent and open). */
  markChart(chart) {
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

  async loadAlertHistory() {
    const id = this.id;
    const list = $("#alert-history-list", this.root);
    try {
      const reply = await getJSON(`/v1/alerts?${new URLSearchParams({ device: id, limit: ALERT_HISTORY })}`);
      if (id !== this.id) return;
      this.recentAlerts = reply.alerts;
      for (const chart of this.charts.values()) this.markChart(chart);
      list.replaceChildren(...reply.alerts.map((a) => h("li", {},
        h("span", { class: `sev sev-${a.severity || "warning"}` }, a.severity || "warning"), " ",
        `${alertText(a)} — raised ${when(a.raised)}`,
        a.cleared ? `, cleared ${when(a.cleared)}` : a.state ? ` (${a.state})` : "")));
      if (!reply.alerts.length) list.replaceChildren(h("li", { class: "muted" }, "No alerts recorded."));
    } catch (err) {
      if (id === this.id) list.replaceChildren(h("li", { class: "error" }, `Not loaded: ${err.message}`));
    }
  }

  render() {
    if (this.root.hidden || !this.id) return;
    const device = store.devices.get(this.id);
    const missing = $("#device-missing", this.root);
    // Nothing but the notice for a device the registry does not have (no empty panels, no forms).
    $("#device-body", this.root).hidden = !device;
    if (!device) {
      missing.hidden = !store.synced;
      missing.replaceChildren(`No device “${this.id}” exists on this gateway: it is not registered (or was `
        + "deleted). Check the address, or ", h("a", { href: store.fleetHash || "#/" }, "see all devices"), ".");
      $("#device-state", this.root).hidden = true;
      return;
    }
    missing.hidden = true;
    $("#device-state", this.root).hidden = false;
    const state = device.online ? "online" : device.last_seen ? "offline" : "never";
    const badge = $("#device-state", this.root);
    badge.className = `badge ${state}`;
    badge.textContent = state === "never" ? "never connected" : state;
    $("#device-label", this.root).textContent = device.label || "";
    $("#device-seen", this.root).textContent = `last seen ${ago(device.last_seen)}`;
    this.renderLive(device);
    this.renderStatus(device);
    this.renderAlerts();
    this.renderCommands(device);
  }

  renderLive(device) {
    const metrics = Object.keys(device.latest || {}).sort();
    $("#no-values", this.root).hidden = metrics.length > 0;
    const cards = metrics.map((m) => {
      const [value, t] = device.latest[m];
      return h("div", { class: "card", dataset: { metric: m } },
        h("div", { class: "card-label" }, metricLabel(store.meta, m)),
        h("div", { class: "card-value" }, formatValue(store.meta, m, value)),
        h("div", { class: "muted", title: when(t) }, ago(t)));
    });
    $("#live-values", this.root).replaceChildren(...cards);
    const live = this.range.kind !== "custom";
    const fresh = [];
    for (const m of metrics) {
      const chart = this.charts.get(m);
      if (!chart) fresh.push(m);
      else if (live && chart.loaded) {
        chart.append(device.latest[m][1], device.latest[m][0], Date.now());
      }
    }
    if (fresh.length) this.loadHistory(fresh); // a metric seen for the first time
  }

  renderStatus(device) {
    $("#device-status", this.root).replaceChildren(...statusRows(device));
  }

  renderAlerts() {
    const alerts = store.alertsByDevice.get(this.id) || [];
    const key = `${store.role}|${alerts.map((a) => `${a.id}:${a.state}`).join(",")}`;
    if (key === this.alertsVersion) return;
    const refresh = this.alertsVersion !== null;
    this.alertsVersion = key;
    $("#device-no-alerts", this.root).hidden = alerts.length > 0;
    $("#device-alerts", this.root).hidden = alerts.length === 0;
    const body = $("#device-alerts tbody", this.root);
    keepFocus(body, () => body.replaceChildren(...alerts.map((a) => alertRow(a, { showDevice: false }))));
    for (const chart of this.charts.values()) this.markChart(chart); // an episode opened or ended
    if (refresh) this.loadAlertHistory();
  }

  renderCommands(device) {
    const note = $("#commands-note", this.root);
    const operator = store.role === "operator";
    note.hidden = operator && device.online;
    note.textContent = !operator
      ? "Sending commands needs the operator role. Ask the gateway's administrator for an operator token "
        + "(python -m gateway tokens add NAME --role operator), then open the dashboard with it."
      : "The device is offline: commands are refused until it reconnects.";
    const outputs = reportedOutputs(device);
    const key = `${store.role}|${Object.keys(store.meta.commands).join(",")}|${Object.keys(outputs || {}).join(",")}`;
    if (key === this.commandsRole) return;
    this.commandsRole = key;
    const forms = Object.entries(store.meta.commands).map(([name, spec]) => this.commandForm(name, spec, operator));
    $("#commands", this.root).replaceChildren(...forms);
  }

  commandForm(name, spec, operator) {
    const device = store.devices.get(this.id);
    const metrics = [...new Set([...Object.keys((device && device.latest) || {}), ...Object.keys(store.meta.metrics)])];
    const outputs = reportedOutputs(device);
    const fields = spec.args.map((arg) => {
      const id = `cmd-${name}-${arg.name}`;
      let input;
      if (arg.name === "output" && outputs) { // the outputs the device reports in its status
        input = h("select", { id, name: arg.name, required: arg.required },
          Object.keys(outputs).sort().map((o) => h("option", { value: o }, o)));
      } else if (arg.kind === "number") {
        input = h("input", { type: "number", step: "any", id, name: arg.name, required: arg.required, inputmode: "decimal" });
      } else if (arg.kind === "metric") {
        input = h("select", { id, name: arg.name, required: arg.required },
          metrics.map((m) => h("option", { value: m }, `${metricLabel(store.meta, m)} (${m})`)));
      } else if (arg.kind === "bool") {
        input = h("input", { type: "checkbox", id, name: arg.name });
      } else {
        input = h("input", { type: "text", id, name: arg.name, required: arg.required, maxlength: 32, autocomplete: "off" });
      }
      const label = `${arg.name}${arg.required ? "" : " (optional)"}`;
      return arg.kind === "bool"
        ? h("div", { class: "field check" }, input, h("label", { for: id }, label))
        : h("div", { class: "field" }, h("label", { for: id }, label), input);
    });
    const form = h("form", { class: "command", dataset: { command: name } },
      h("fieldset", { disabled: !operator },
        h("legend", {}, name.replaceAll("_", " ")),
        h("p", { class: "muted usage" }, spec.usage),
        fields,
        h("button", { type: "submit" }, `Send ${name}`)));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendCommand(form, name, spec);
    });
    return form;
  }

  async sendCommand(form, name, spec) {
    const args = {};
    for (const arg of spec.args) {
      const input = form.elements[arg.name];
      if (arg.kind === "bool") args[arg.name] = input.checked;
      else if (input.value === "") continue;
      else if (arg.kind === "number") args[arg.name] = Number(input.value);
      else args[arg.name] = input.value;
    }
    if (name === "reboot" && !window.confirm(`Reboot ${this.id}?`)) return;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const entry = h("li", { dataset: { command: name, outcome: "pending" } }, `${name} ${JSON.stringify(args)}: sending…`);
    const log = $("#command-log", this.root);
    log.prepend(entry);
    while (log.children.length > 20) log.lastChild.remove();
    try {
      const reply = await request({ t: "command", device: this.id, name, args });
      const result = reply.result || {};
      entry.dataset.outcome = result.ok ? "ok" : "refused";
      entry.textContent = `${name} ${JSON.stringify(args)}: ${result.ok ? "done" : "refused by the device"}`
        + `${result.msg ? ` — ${result.msg}` : ""}`;
    } catch (err) {
      entry.dataset.outcome = "error";
      entry.textContent = `${name} ${JSON.stringify(args)}: not sent — ${err.message}${err.code ? ` (${err.code})` : ""}`;
    } finally {
      button.disabled = false;
    }
  }
}
