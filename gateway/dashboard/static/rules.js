// The console's alert rules: the rules in force, a form for a rule of any type (its fields come
// from the gateway's rule table, rule_types), and a preview that replays the draft over a
// device's stored week with the alert engine's own code (rule_preview), drawn on the device's
// chart as alert episodes with the sentence "N alerts in the last 7 days".
import { $, h, metricLabel } from "./util.js";
import { getJSON, request, store } from "./store.js";
import { MetricChart } from "./charts.js";

const COMMON = ["id", "type", "metric", "severity", "devices"];

function field(id, label, input, hint) {
  if (hint) input.setAttribute("aria-describedby", `${id}-hint`);
  return input.type === "checkbox"
    ? h("div", { class: "field check" }, input, h("label", { for: id }, label),
      hint && h("span", { id: `${id}-hint`, class: "muted hint" }, hint))
    : h("div", { class: "field" }, h("label", { for: id }, label), input,
      hint && h("span", { id: `${id}-hint`, class: "muted hint" }, hint));
}

function shown(value) {
  return Array.isArray(value) ? value.join(", ") : value === null || value === undefined ? "" : String(value);
}

export class RulesPanel {
  build() {
    this.list = h("tbody", { id: "rules-body" });
    this.type = h("select", { id: "rule-type", name: "type" });
    this.params = h("div", { id: "rule-params" });
    this.status = h("p", { id: "rules-status", role: "status", class: "muted" });
    this.previewDevice = h("select", { id: "preview-device", name: "preview-device" });
    this.previewSummary = h("p", { id: "preview-summary", role: "status" });
    this.previewMarks = h("ol", { id: "preview-marks", class: "history-list" });
    this.previewChart = h("div", { id: "preview-chart" });
    this.form = h("form", { id: "rule-form", class: "console-form", "aria-labelledby": "rule-form-title" },
      h("h3", { id: "rule-form-title" }, "New or changed rule"),
      field("rule-id", "Rule id (the same id replaces a rule)", h("input", { id: "rule-id", name: "id", type: "text",
        maxlength: 64, autocomplete: "off", spellcheck: "false" }), "empty: made from the metric, type and threshold"),
      field("rule-type", "Type", this.type),
      field("rule-metric", "Metric", h("input", { id: "rule-metric", name: "metric", type: "text", list: "rule-metrics",
        autocomplete: "off", spellcheck: "false" }), "empty for a device-level rule (no_data, health)"),
      h("datalist", { id: "rule-metrics" }),
      field("rule-severity", "Severity", h("select", { id: "rule-severity", name: "severity" })),
      field("rule-devices", "Devices (optional)", h("input", { id: "rule-devices", name: "devices", type: "text",
        autocomplete: "off", spellcheck: "false" }), "patterns such as GH-*, comma-separated; empty: every device"),
      this.params,
      h("div", { class: "actions" },
        h("button", { type: "submit" }, "Save rule"),
        h("button", { type: "button", id: "rule-preview", class: "secondary", onclick: () => this.preview() },
          "Preview on the last 7 days"),
        h("button", { type: "reset", class: "secondary" }, "Clear the form")),
      field("preview-device", "Device for the preview", this.previewDevice));
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    this.form.addEventListener("reset", () => setTimeout(() => this.fields(), 0));
    this.type.addEventListener("change", () => this.fields());
    return h("section", { class: "panel", "aria-labelledby": "rules-title" },
      h("h2", { id: "rules-title" }, "Alert rules"),
      h("div", { class: "table-wrap" }, h("table", { class: "rules" },
        h("caption", { class: "sr-only" }, "Alert rules in force"),
        h("thead", {}, h("tr", {}, ["Rule", "Type", "Metric", "Settings", "From", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        this.list)),
      this.status, this.form,
      h("section", { id: "preview", "aria-labelledby": "preview-title" },
        h("h3", { id: "preview-title" }, "Preview"), this.previewSummary, this.previewChart, this.previewMarks));
  }

  devices(ids) {
    const selected = this.previewDevice.value;
    this.previewDevice.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    if (ids.includes(selected)) this.previewDevice.value = selected;
  }

  async render() {
    if (this.loading || this.loaded) return;
    this.loading = true;
    try {
      const table = await request({ t: "rule_types" });
      this.types = table.types;
      this.type.replaceChildren(...Object.keys(table.types).map((t) => h("option", { value: t }, t)));
      $("#rule-severity", this.form).replaceChildren(h("option", { value: "" }, "the type's default"),
        ...table.severities.map((s) => h("option", { value: s }, s)));
      $("#rule-metrics", this.form).replaceChildren(
        ...Object.keys(store.meta.metrics).map((m) => h("option", { value: m }, metricLabel(store.meta, m))));
      this.fields();
      await this.refresh();
      this.loaded = true;
    } catch (err) {
      this.status.textContent = `Rules not loaded (${err.code}): ${err.message}`;
    } finally {
      this.loading = false;
    }
  }

  /** The parameter fields of the chosen type (defaults as placeholders). */
  fields(values = {}) {
    const spec = this.types && this.types[this.type.value];
    if (!spec) return;
    this.params.replaceChildren(...spec.params.map((p) => {
      const id = `rule-p-${p.name}`;
      const value = values[p.name];
      let input;
      if (p.kind === "bool") {
        input = h("input", { id, name: p.name, type: "checkbox", checked: value === undefined ? Boolean(p.default) : value });
      } else if (p.kind === "choice") {
        input = h("select", { id, name: p.name }, p.choices.map((c) => h("option", { value: c }, c)));
        input.value = value === undefined ? p.default : value;
      } else {
        input = h("input", { id, name: p.name, type: p.kind === "names" ? "text" : "number", step: "any",
          inputmode: p.kind === "names" ? undefined : "decimal", required: p.required,
          placeholder: p.default === null || p.default === undefined ? "" : shown(p.default) });
        if (value !== undefined && value !== null) input.value = shown(value);
      }
      input.dataset.kind = p.kind;
      return field(id, `${p.name}${p.required ? "" : " (optional)"}`, input, p.doc);
    }));
  }

  /** The draft rule from the form (only what was filled in: the gateway fills the defaults). */
  draft() {
    const get = (name) => this.form.elements.namedItem(name);
    const rule = { type: this.type.value };
    for (const name of ["id", "metric", "severity"]) if (get(name).value.trim()) rule[name] = get(name).value.trim();
    const devices = get("devices").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (devices.length) rule.devices = devices;
    for (const input of this.params.querySelectorAll("input, select")) {
      const kind = input.dataset.kind;
      if (kind === "bool") rule[input.name] = input.checked;
      else if (kind === "choice") rule[input.name] = input.value;
      else if (input.value.trim() === "") continue;
      else if (kind === "names") rule[input.name] = input.value.split(",").map((s) => s.trim()).filter(Boolean);
      else rule[input.name] = Number(input.value);
    }
    return rule;
  }

  async refresh() {
    const reply = await request({ t: "rule_list" });
    this.rules = reply.rules;
    this.list.replaceChildren(...reply.rules.map((rule) => {
      const settings = Object.entries(rule).filter(([k]) => !COMMON.includes(k)
        && !["source", "updated", "updated_by"].includes(k)).map(([k, v]) => `${k} ${shown(v)}`).join(", ");
      return h("tr", { dataset: { rule: rule.id } },
        h("th", { scope: "row" }, rule.id), h("td", {}, rule.type), h("td", {}, rule.metric || "device"),
        h("td", {}, settings), h("td", {}, rule.source === "admin" ? `${rule.updated_by}` : "config file"),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "secondary", "aria-label": `Edit rule ${rule.id}`,
            onclick: () => this.edit(rule) }, "Edit"),
          h("button", { type: "button", class: "secondary", "aria-label": `Delete rule ${rule.id}`,
            onclick: () => this.remove(rule.id) }, "Delete")));
    }));
  }

  edit(rule) {
    this.type.value = rule.type;
    for (const name of ["id", "metric", "severity"]) this.form.elements.namedItem(name).value = rule[name] || "";
    this.form.elements.namedItem("devices").value = shown(rule.devices);
    this.fields(rule);
    $("#rule-id", this.form).focus();
  }

  async act(frame, what) {
    this.status.className = "muted";
    this.status.textContent = "working…";
    try {
      const reply = await request(frame);
      this.status.textContent = what(reply);
      await this.refresh();
      return reply;
    } catch (err) {
      this.status.className = "error";
      this.status.textContent = `Refused (${err.code}): ${err.message}`;
      return null;
    }
  }

  save() {
    return this.act({ t: "rule_put", rule: this.draft() }, (r) => `Rule ${r.rule.id} saved: in force now.`);
  }

  remove(id) {
    return this.act({ t: "rule_delete", rule_id: id },
      (r) => `Rule ${r.rule} deleted${r.cleared ? `; ${r.cleared} open alerts cleared` : ""}.`);
  }

  async preview() {
    const device = this.previewDevice.value;
    const rule = this.draft();
    if (!device) {
      this.previewSummary.textContent = "No device to replay the rule on.";
      return;
    }
    this.previewSummary.textContent = "replaying…";
    let reply;
    try {
      reply = (await request({ t: "rule_preview", rule, device }, 60000)).preview;
    } catch (err) {
      this.previewSummary.textContent = `Preview refused (${err.code}): ${err.message}`;
      return;
    }
    this.previewSummary.textContent = `${reply.summary.replace(/\.$/, "")} on ${device}.`;
    this.previewSummary.dataset.alerts = String(reply.alerts);
    const fmt = (ms) => new Date(ms).toLocaleString();
    this.previewMarks.replaceChildren(...reply.marks.map((m) => h("li", { dataset: { event: m.event, at: String(m.at) } },
      `${m.event} ${fmt(m.at)}: ${m.text}`)));
    this.previewMarks.dataset.marks = JSON.stringify(reply.marks.map((m) => [m.event, m.at]));
    const device_ = store.devices.get(device);
    const metric = reply.rule.metric || Object.keys((device_ && device_.latest) || {})[0];
    if (this.chart) this.chart.destroy();
    this.chart = null;
    if (!metric) return;
    this.chart = new MetricChart(this.previewChart, store.meta, metric, () => {}, () => {});
    const thresholds = ["above", "below"].filter((k) => typeof reply.rule[k] === "number" && reply.rule.type === k)
      .map((k) => ({ value: reply.rule[k], kind: k, rule: reply.rule.id }));
    this.chart.setMarks(thresholds, reply.episodes.map((e) => ({ from: e.from, to: e.to || reply.to })));
    const query = new URLSearchParams({ device, metric, from: reply.from, to: reply.to, points: 500 });
    try {
      const history = await getJSON(`/v1/history?${query}`);
      this.chart.setHistory(history.points, reply.from, reply.to, history.source);
    } catch (err) {
      this.chart.summary.textContent = `History not loaded: ${err.message}`;
    }
  }
}
