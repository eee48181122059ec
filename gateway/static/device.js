// A device page (#/device/<id>?range=24h or ?from=MS&to=MS): live values, status, alerts,
// history charts with time ranges and zoom, and (for operators) command forms.
import { $, ago, buildHash, formatValue, h, metricLabel, when } from "./util.js";
import { alertRow, bindAlertActions, keepFocus } from "./alerts.js";
import { alertText, getJSON, request, store } from "./store.js";
import { MetricChart } from "./charts.js";

const RANGES = { "1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000 };
const DEFAULT_RANGE = "24h";
const MAX_SPAN = 400 * 86_400_000;
const MIN_SPAN = 10_000;
// Status fields with a name people know; the rest are listed as they come.
const STATUS_FIELDS = [
  ["boot", "Boot"], ["fw", "Firmware"], ["buffered", "Queued readings"], ["dropped", "Dropped readings"],
  ["rssi", null], ["up", "Uptime"], ["interval", "Interval (s)"], ["interval_ms", "Interval (ms)"],
  ["heap_free", "Free heap (bytes)"],
];
const KNOWN_STATUS = new Set(STATUS_FIELDS.map(([key]) => key));

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${hours} h` : hours ? `${hours} h ${m} min` : `${m} min ${s % 60} s`;
}

function statusValue(key, value) {
  if (key === "up" && typeof value === "number") return duration(value);
  if (value !== null && typeof value === "object") return JSON.stringify(value);
  return String(value);
}

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
    const kind = RANGES[params.get("range")] ? params.get("range") : DEFAULT_RANGE;
    return { kind };
  }

  /** [from, to] in ms for the current range (presets end now). */
  window() {
    if (this.range.kind === "custom") return [this.range.from, this.range.to];
    const now = Date.now();
    return [now - RANGES[this.range.kind], now];
  }

  show(id, params, switched, moveFocus) {
    const newDevice = switched || id !== this.id;
    this.id = id;
    const range = this.parseRange(params);
    const rangeChanged = !this.range || newDevice || JSON.stringify(range) !== JSON.stringify(this.range);
    this.range = range;
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

  destroyCharts() {
    for (const chart of this.charts.values()) chart.destroy();
    this.charts.clear();
  }

  build() {
    this.destroyCharts();
    this.builtFor = this.id;
    this.commandsRole = null;
    this.alertsVersion = null;
    const rangeButtons = [...Object.keys(RANGES), "custom"].map((kind) =>
      h("button", { type: "button", dataset: { range: kind }, "aria-pressed": "false" },
        kind === "custom" ? "Custom…" : kind.replace("h", " h").replace("d", " d")));
    this.root.replaceChildren(
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
        h("a", { href: store.fleetHash || "#/", id: "back" }, "← All devices")),
      h("header", { class: "device-head" },
        h("h1", { id: "device-title", tabindex: "-1" }, this.id),
        h("span", { id: "device-state", class: "badge" }),
        h("span", { id: "device-label", class: "muted" }),
        h("span", { id: "device-seen", class: "muted" })),
      h("p", { id: "device-missing", class: "notice", hidden: true }),
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
        h("ol", { id: "command-log", class: "history-list", "aria-live": "polite" })));

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
      chart = new MetricChart(container, store.meta, metric, (f, t) => this.navigate({ from: f, to: t }));
      chart.range = [from, to];
      this.charts.set(metric, chart);
    }
    return chart;
  }

  async loadHistory(metrics) {
    const device = store.devices.get(this.id);
    const names = metrics || Object.keys((device && device.latest) || {}).sort();
    const seq = metrics ? this.loadSeq : ++this.loadSeq;
    const [from, to] = this.window();
    await Promise.all(names.map(async (metric) => {
      const chart = this.chart(metric);
      const points = Math.min(1000, Math.max(60, chart.width()));
      const query = new URLSearchParams({ device: this.id, metric, from, to, points });
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

  async loadAlertHistory() {
    const id = this.id;
    const list = $("#alert-history-list", this.root);
    try {
      const reply = await getJSON(`/v1/alerts?${new URLSearchParams({ device: id, limit: 20 })}`);
      if (id !== this.id) return;
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
    if (!device) {
      missing.hidden = !store.live;
      missing.textContent = `No device “${this.id}” is registered on this gateway.`;
      return;
    }
    missing.hidden = true;
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
      if (!KNOWN_STATUS.has(key)) add(key.replaceAll("_", " "), statusValue(key, value), key);
    }
    if (!Object.keys(status).length) add("Status report", "none received since the gateway started", "none");
    $("#device-status", this.root).replaceChildren(...rows);
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
    const key = `${store.role}|${Object.keys(store.meta.commands).join(",")}`;
    if (key === this.commandsRole) return;
    this.commandsRole = key;
    const forms = Object.entries(store.meta.commands).map(([name, spec]) => this.commandForm(name, spec, operator));
    $("#commands", this.root).replaceChildren(...forms);
  }

  commandForm(name, spec, operator) {
    const device = store.devices.get(this.id);
    const metrics = [...new Set([...Object.keys((device && device.latest) || {}), ...Object.keys(store.meta.metrics)])];
    const fields = spec.args.map((arg) => {
      const id = `cmd-${name}-${arg.name}`;
      let input;
      if (arg.kind === "number") {
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
