// A device page (#/device/<id>?range=fit|1h|24h|7d or ?from=MS&to=MS): live values, status, alerts,
// history (history.js) and, for operators, commands (commands.js). A device the registry does not
// have gets a notice that it does not exist, and nothing else.
import { $, ago, formatValue, h, metricLabel, when } from "./util.js";
import { alertRow, bindAlertActions, keepFocus, refreshSince } from "./alerts.js";
import { alertText, getJSON, store } from "./store.js";
import { DeviceHistory, parseRange } from "./history.js";
import { CommandPanel } from "./commands.js";
import { statusRows } from "./status.js";

const ALERT_HISTORY = 50; // recent alerts listed, and shaded on the charts

export class DeviceView {
  constructor(root) {
    this.root = root;
    this.id = null;
    this.history = new DeviceHistory();
    this.commands = new CommandPanel();
  }

  show(id, params, switched, moveFocus) {
    const newDevice = switched || id !== this.id;
    this.id = id;
    this.root.hidden = false;
    if (newDevice) {
      document.title = `${id} · Edgewire`;
      this.build();
    }
    const rangeChanged = this.history.setRange(parseRange(params));
    this.render();
    if (rangeChanged) this.loadHistory();
    if (newDevice && moveFocus) {
      $("#device-title", this.root).focus();
      window.scrollTo(0, 0);
    }
  }

  hide() {
    this.root.hidden = true;
    this.history.destroy();
    this.id = null;
  }

  /** Every second: the alerts' "Since" times. */
  clock() {
    if (!this.root.hidden && this.id) refreshSince($("#device-alerts", this.root));
  }

  build() {
    this.alertsVersion = null;
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
        this.history.build(this.id),
        this.commands.build(this.id)));
    bindAlertActions($("#device-alerts", this.root), $("#device-alert-status", this.root));
    this.loadAlertHistory();
  }

  /** Every chart's history over the current range. */
  loadHistory() {
    const device = store.devices.get(this.id);
    this.history.load(Object.keys((device && device.latest) || {}).sort(), true);
  }

  async loadAlertHistory() {
    const id = this.id;
    const list = $("#alert-history-list", this.root);
    try {
      const reply = await getJSON(`/v1/alerts?${new URLSearchParams({ device: id, limit: ALERT_HISTORY })}`);
      if (id !== this.id) return;
      this.history.setRecentAlerts(reply.alerts);
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
    const badge = $("#device-state", this.root);
    // Nothing but the notice for a device the registry does not have (no empty panels, no forms).
    $("#device-body", this.root).hidden = !device;
    badge.hidden = !device;
    if (!device) {
      missing.hidden = !store.synced;
      missing.replaceChildren(`No device “${this.id}” exists on this gateway: it is not registered (or was `
        + "deleted). Check the address, or ", h("a", { href: store.fleetHash || "#/" }, "see all devices"), ".");
      return;
    }
    missing.hidden = true;
    const state = device.online ? "online" : device.last_seen ? "offline" : "never";
    badge.className = `badge ${state}`;
    badge.textContent = state === "never" ? "never connected" : state;
    $("#device-label", this.root).textContent = device.label || "";
    $("#device-seen", this.root).textContent = `last seen ${ago(device.last_seen)}`;
    this.renderLive(device);
    $("#device-status", this.root).replaceChildren(...statusRows(device));
    this.renderAlerts();
    this.commands.render(device);
  }

  renderLive(device) {
    const latest = device.latest || {};
    const metrics = Object.keys(latest).sort();
    $("#no-values", this.root).hidden = metrics.length > 0;
    const cards = metrics.map((m) => {
      const [value, t] = latest[m];
      return h("div", { class: "card", dataset: { metric: m } },
        h("div", { class: "card-label" }, metricLabel(store.meta, m)),
        h("div", { class: "card-value" }, formatValue(store.meta, m, value)),
        h("div", { class: "muted", title: when(t) }, ago(t)));
    });
    $("#live-values", this.root).replaceChildren(...cards);
    this.history.live(latest);
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
    this.history.markAll(); // an episode opened or ended
    if (refresh) this.loadAlertHistory();
  }
}
