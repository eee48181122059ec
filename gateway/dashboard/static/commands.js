// A device page's Commands panel (operators): one form per row of the gateway's command table,
// sent over the dashboard's stream, with the device's answers listed under Results.
import { $, h, metricLabel } from "./util.js";
import { request, store } from "./store.js";
import { reportedOutputs } from "./status.js";

export class CommandPanel {
  /** The panel for device ``id``. */
  build(id) {
    this.id = id;
    this.version = null;
    this.root = h("section", { class: "panel", "aria-labelledby": "commands-title" },
      h("h2", { id: "commands-title" }, "Commands"),
      h("p", { id: "commands-note", class: "notice", hidden: true }),
      h("div", { id: "commands", class: "commands" }),
      h("h3", {}, "Results"),
      h("ol", { id: "command-log", class: "history-list", "aria-live": "polite" }));
    return this.root;
  }

  render(device) {
    const note = $("#commands-note", this.root);
    const operator = store.role === "operator";
    note.hidden = operator && device.online;
    note.textContent = !operator
      ? "Sending commands needs the operator role. Ask the gateway's administrator for an operator token "
        + "(python -m gateway tokens add NAME --role operator), then open the dashboard with it."
      : "The device is offline: commands are refused until it reconnects.";
    const outputs = reportedOutputs(device);
    const key = `${store.role}|${Object.keys(store.meta.commands).join(",")}|${Object.keys(outputs || {}).join(",")}`;
    if (key === this.version) return; // rebuilt only when the role, the table or the outputs change
    this.version = key;
    const forms = Object.entries(store.meta.commands).map(([name, spec]) => this.form(device, name, spec, operator));
    $("#commands", this.root).replaceChildren(...forms);
  }

  form(device, name, spec, operator) {
    const metrics = [...new Set([...Object.keys(device.latest || {}), ...Object.keys(store.meta.metrics)])];
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
      this.send(form, name, spec);
    });
    return form;
  }

  async send(form, name, spec) {
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
