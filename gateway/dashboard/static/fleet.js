// The fleet page (#/): counts, search, filters, sort, a page of compact rows, open alerts.
// Built for thousands of devices: only one page of rows is in the DOM, rows are reused and
// updated in place, and the list is recomputed at most once per animation frame.
import { $, ago, buildHash, count, deviceHref, formatValue, h, metricLabel, when } from "./util.js";
import { alertRow, bindAlertActions, keepFocus, refreshSince } from "./alerts.js";
import { severityRank, store } from "./store.js";

const STATUSES = [
  ["all", "All"], ["alerting", "Alerting"], ["offline", "Offline"], ["online", "Online"], ["never", "Never connected"],
];
const SORTS = [
  ["problems", "Problems first"], ["id", "Device id"], ["seen-new", "Last seen, newest first"],
  ["seen-old", "Last seen, oldest first"], ["label", "Label"],
];
const PAGE_SIZES = [50, 100, 250, 500];
const MAX_VALUES = 3; // metric values shown per row; the device page has them all
const MAX_ALERT_ROWS = 50;

function stateOf(device) {
  if (device.online) return "online";
  return device.last_seen ? "offline" : "never";
}

export class FleetView {
  constructor(root) {
    this.root = root;
    this.params = {};
    this.rows = new Map(); // device id -> {tr, sig, seen}
    this.pageIds = [];
    this.alertsVersion = -1;
    this.labelsKey = "";
    this.build();
  }

  build() {
    const statusButtons = STATUSES.map(([value, text]) =>
      h("button", { type: "button", dataset: { status: value }, "aria-pressed": "false" },
        text, " ", h("span", { class: "count", dataset: { count: value } }, "0")));
    this.root.append(
      h("h1", { id: "fleet-title", tabindex: "-1" }, "Fleet"),
      h("section", { "aria-labelledby": "alerts-title", class: "panel" },
        h("h2", { id: "alerts-title" }, "Open alerts ", h("span", { class: "count", id: "alert-count" }, "0")),
        h("p", { id: "no-alerts", class: "muted" }, "No open alerts."),
        h("div", { class: "table-wrap" },
          h("table", { id: "alerts", class: "alerts" },
            h("caption", { class: "sr-only" }, "Open alerts, most severe first"),
            h("thead", {}, h("tr", {}, ["Severity", "Device", "Alert", "Value", "State", "Since", "Actions"]
              .map((t) => h("th", { scope: "col" }, t)))),
            h("tbody"))),
        h("p", { id: "alerts-more", class: "muted", hidden: true }),
        h("p", { id: "alert-action-status", class: "muted", role: "status" })),
      h("section", { "aria-labelledby": "devices-title", class: "panel" },
        h("h2", { id: "devices-title" }, "Devices"),
        h("div", { class: "toolbar" },
          h("label", { class: "search" }, "Search ",
            h("input", { type: "search", id: "q", placeholder: "device id or label", autocomplete: "off" })),
          h("label", {}, "Label ", h("select", { id: "label-filter" }, h("option", { value: "" }, "any label"))),
          h("label", {}, "Sort ", h("select", { id: "sort" },
            SORTS.map(([value, text]) => h("option", { value }, text))))),
        h("div", { role: "group", "aria-label": "Show devices by status", class: "filters", id: "status-filter" },
          statusButtons),
        h("p", { id: "fleet-count", role: "status", class: "muted" }),
        h("div", { class: "table-wrap" },
          h("table", { id: "devices", class: "devices" },
            h("caption", { class: "sr-only" }, "Devices"),
            h("thead", {}, h("tr", {}, ["Device", "Label", "Status", "Alerts", "Latest values", "Last seen"]
              .map((t) => h("th", { scope: "col" }, t)))),
            h("tbody"))),
        h("nav", { class: "pager", "aria-label": "Device pages" },
          h("button", { type: "button", id: "prev" }, "Previous page"),
          h("span", { id: "page-info" }),
          h("button", { type: "button", id: "next" }, "Next page"),
          h("label", {}, "Rows per page ", h("select", { id: "page-size" },
            PAGE_SIZES.map((n) => h("option", { value: n }, String(n))))))));

    this.tbody = $("#devices tbody", this.root);
    this.alertBody = $("#alerts tbody", this.root);
    bindAlertActions($("#alerts", this.root), $("#alert-action-status", this.root));
    this.typing = null;
    $("#q", this.root).addEventListener("input", (e) => {
      clearTimeout(this.typing);
      this.typing = setTimeout(() => {
        this.typing = null;
        this.navigate({ q: e.target.value, page: 1 }, true);
      }, 120);
    });
    $("#status-filter", this.root).addEventListener("click", (e) => {
      const button = e.target.closest("button[data-status]");
      if (button) this.navigate({ status: button.dataset.status, page: 1 });
    });
    $("#label-filter", this.root).addEventListener("change", (e) => this.navigate({ label: e.target.value, page: 1 }));
    $("#sort", this.root).addEventListener("change", (e) => this.navigate({ sort: e.target.value, page: 1 }));
    $("#page-size", this.root).addEventListener("change", (e) => this.navigate({ size: e.target.value, page: 1 }));
    $("#prev", this.root).addEventListener("click", () => this.navigate({ page: this.params.page - 1 }));
    $("#next", this.root).addEventListener("click", () => this.navigate({ page: this.params.page + 1 }));
  }

  /** Change the list's parameters: a new history entry, or (while typing) the current one replaced. */
  navigate(changes, replace = false) {
    if (this.typing !== null) { // typing not applied yet: it belongs to the entry we leave
      clearTimeout(this.typing);
      this.typing = null;
      if (!replace) this.navigate({ q: $("#q", this.root).value, page: 1 }, true);
    }
    const p = { ...this.params, ...changes };
    const hash = buildHash("/", {
      q: p.q, status: p.status === "all" ? "" : p.status, label: p.label,
      sort: p.sort === "problems" ? "" : p.sort, page: p.page > 1 ? p.page : "", size: p.size === 100 ? "" : p.size,
    });
    if (replace) {
      history.replaceState(null, "", hash);
      this.show(new URLSearchParams(hash.split("?")[1] || ""), false);
    } else {
      location.hash = hash;
    }
  }

  show(params, switched) {
    const size = Number(params.get("size"));
    this.params = {
      q: params.get("q") || "",
      status: STATUSES.some(([s]) => s === params.get("status")) ? params.get("status") : "all",
      label: params.get("label") || "",
      sort: SORTS.some(([s]) => s === params.get("sort")) ? params.get("sort") : "problems",
      page: Math.max(1, Math.floor(Number(params.get("page"))) || 1),
      size: PAGE_SIZES.includes(size) ? size : 100,
    };
    const q = $("#q", this.root);
    if (q.value !== this.params.q && document.activeElement !== q) q.value = this.params.q;
    $("#sort", this.root).value = this.params.sort;
    $("#page-size", this.root).value = String(this.params.size);
    for (const button of this.root.querySelectorAll("#status-filter button")) {
      button.setAttribute("aria-pressed", String(button.dataset.status === this.params.status));
    }
    this.root.hidden = false;
    store.fleetHash = location.hash || "#/";
    if (switched) {
      document.title = "Edgewire fleet";
      // Back from a device page: put the focus on that device's link, else on the heading.
      this.render();
      const row = this.lastDevice && this.rows.get(this.lastDevice);
      const link = row && row.tr.isConnected ? row.tr.querySelector("a") : null;
      (link || $("#fleet-title", this.root)).focus();
      return;
    }
    this.render();
  }

  hide() {
    this.root.hidden = true;
  }

  /** Every second: the alerts' "Since" times. */
  clock() {
    if (!this.root.hidden) refreshSince(this.alertBody);
  }

  /** Remember the device a link was followed to, so "back" returns the focus to it. */
  visited(id) {
    this.lastDevice = id;
  }

  render() {
    if (this.root.hidden) return;
    performance.mark("fleet-render-start");
    const alerting = store.alertsByDevice;
    this.renderAlerts();
    this.renderLabels();
    const p = this.params;
    const counts = { all: 0, online: 0, offline: 0, alerting: 0, never: 0 };
    const needle = p.q.trim().toLowerCase();
    const matches = [];
    for (const device of store.devices.values()) {
      const state = stateOf(device);
      const isAlerting = alerting.has(device.id);
      counts.all += 1;
      counts[state] += 1;
      if (state === "never") counts.offline += 1;
      if (isAlerting) counts.alerting += 1;
      if (p.label && device.label !== p.label) continue;
      if (needle && !device.id.toLowerCase().includes(needle)
          && !(device.label || "").toLowerCase().includes(needle)) continue;
      if (p.status === "alerting" ? !isAlerting
        : p.status === "offline" ? state === "online"
          : p.status !== "all" && p.status !== state) continue;
      matches.push(device);
    }
    for (const [key, n] of Object.entries(counts)) {
      $(`[data-count="${key}"]`, this.root).textContent = count(n);
    }
    this.sort(matches);
    const pages = Math.max(1, Math.ceil(matches.length / p.size));
    const page = Math.min(p.page, pages);
    const slice = matches.slice((page - 1) * p.size, page * p.size);
    const now = Date.now();
    const ids = slice.map((d) => d.id);
    const rows = slice.map((d) => this.row(d, alerting.get(d.id), now));
    keepFocus(this.tbody, () => {
      if (ids.length !== this.pageIds.length || ids.some((id, i) => id !== this.pageIds[i])) {
        this.tbody.replaceChildren(...rows);
        this.pageIds = ids;
      }
    });
    const onPage = new Set(ids);
    for (const id of this.rows.keys()) if (!onPage.has(id) && id !== this.lastDevice) this.rows.delete(id);
    const first = matches.length ? (page - 1) * p.size + 1 : 0;
    $("#fleet-count", this.root).textContent = matches.length
      ? `Showing ${count(first)}–${count(first + slice.length - 1)} of ${count(matches.length)} devices`
        + (matches.length < counts.all ? ` (${count(counts.all)} in the fleet)` : "")
      : counts.all ? "No device matches these filters." : "No devices registered yet.";
    $("#page-info", this.root).textContent = `Page ${page} of ${pages}`;
    $("#prev", this.root).disabled = page <= 1;
    $("#next", this.root).disabled = page >= pages;
    performance.mark("fleet-render-end");
    // bench/dashboard.py reads these measures (docs/performance.md, "Dashboard")
    performance.measure("fleet-render", { start: "fleet-render-start", end: "fleet-render-end",
      detail: { devices: counts.all, matches: matches.length, rows: slice.length } });
    performance.clearMarks("fleet-render-start");
    performance.clearMarks("fleet-render-end");
    if (performance.getEntriesByName("fleet-render").length > 500) performance.clearMeasures("fleet-render");
    this.root.dataset.rendered = String(store.version);
  }

  sort(list) {
    const alerting = store.alertsByDevice;
    const rank = (d) => (alerting.has(d.id) ? 0 : d.online ? 3 : d.last_seen ? 1 : 2);
    const byId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    const comparators = {
      problems: (a, b) => rank(a) - rank(b) || byId(a, b),
      id: byId,
      "seen-new": (a, b) => (b.last_seen || 0) - (a.last_seen || 0) || byId(a, b),
      "seen-old": (a, b) => (a.last_seen || 0) - (b.last_seen || 0) || byId(a, b),
      label: (a, b) => (a.label || "\uffff").localeCompare(b.label || "\uffff") || byId(a, b),
    };
    list.sort(comparators[this.params.sort]);
  }

  row(device, alerts, now) {
    const seen = ago(device.last_seen, now);
    const alertSig = alerts ? alerts.map((a) => `${a.id}:${a.state}:${a.severity}`).join(",") : "";
    const sig = `${device._v}|${alertSig}`;
    let entry = this.rows.get(device.id);
    if (entry && entry.sig === sig) {
      if (entry.seen !== seen) {
        entry.tr.lastChild.textContent = seen;
        entry.seen = seen;
      }
      return entry.tr;
    }
    const state = stateOf(device);
    const worst = alerts ? alerts.reduce((w, a) => (severityRank(a) < severityRank(w) ? a : w)) : null;
    const metrics = Object.keys(device.latest || {}).sort();
    const values = metrics.slice(0, MAX_VALUES).map((m) =>
      h("span", { class: "metric", dataset: { metric: m } },
        h("span", { class: "metric-name" }, metricLabel(store.meta, m)), " ",
        formatValue(store.meta, m, device.latest[m][0])));
    if (metrics.length > MAX_VALUES) values.push(h("span", { class: "muted" }, `+${metrics.length - MAX_VALUES}`));
    const cells = [
      h("td", { class: "label-cell" }, device.label || ""),
      h("td", {}, h("span", { class: `badge ${state}` }, state === "never" ? "never connected" : state),
        device.enabled === false ? h("span", { class: "badge disabled" }, "disabled") : null),
      h("td", {}, alerts ? h("span", { class: `sev sev-${worst.severity || "warning"}` },
        `${alerts.length} ${alerts.length === 1 ? "alert" : "alerts"}`) : ""),
      h("td", { class: "values" }, values),
      h("td", { class: "muted seen", title: when(device.last_seen) }, seen)];
    if (entry) {
      // Same row element, same link (a focused link keeps its focus): only the other cells change.
      entry.tr.replaceChildren(entry.tr.firstChild, ...cells);
    } else {
      const link = h("th", { scope: "row" }, h("a", {
        href: deviceHref(device.id), dataset: { focusKey: `device-${device.id}` },
        onclick: () => this.visited(device.id),
      }, device.id));
      entry = { tr: h("tr", {}, link, ...cells) };
      this.rows.set(device.id, entry);
    }
    entry.tr.dataset.device = device.id;
    entry.tr.dataset.state = state;
    entry.tr.className = alerts ? "alerting" : "";
    entry.sig = sig;
    entry.seen = seen;
    return entry.tr;
  }

  renderAlerts() {
    const version = `${store.alertsVersion}|${store.role}`; // "Since" is kept fresh by clock()
    if (this.alertsVersion === version) return;
    this.alertsVersion = version;
    const alerts = store.alerts;
    $("#alert-count", this.root).textContent = count(alerts.length);
    $("#no-alerts", this.root).hidden = alerts.length > 0;
    $("#alerts", this.root).hidden = alerts.length === 0;
    const more = $("#alerts-more", this.root);
    more.hidden = alerts.length <= MAX_ALERT_ROWS;
    more.textContent = `and ${count(alerts.length - MAX_ALERT_ROWS)} more (filter the devices by “Alerting”)`;
    keepFocus(this.alertBody, () => this.alertBody.replaceChildren(
      ...alerts.slice(0, MAX_ALERT_ROWS).map((a) => alertRow(a, { showDevice: true }))));
  }

  renderLabels() {
    const labels = new Set();
    for (const device of store.devices.values()) if (device.label) labels.add(device.label);
    const sorted = [...labels].sort();
    const key = sorted.join("\n");
    const select = $("#label-filter", this.root);
    if (key !== this.labelsKey) {
      this.labelsKey = key;
      select.replaceChildren(h("option", { value: "" }, "any label"), ...sorted.map((l) => h("option", { value: l }, l)));
    }
    if (this.params.label && !labels.has(this.params.label)) {
      select.append(h("option", { value: this.params.label }, this.params.label));
      this.labelsKey = "";
    }
    select.value = this.params.label;
  }
}
