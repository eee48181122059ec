// The operator's console (#/console): devices (add, label, disable/enable, rotate, delete) and,
// from rules.js, the alert rules. Every change is an operator action over the dashboard stream
// (docs/protocol.md section 9), run by the admin API's requests on the gateway. A new or rotated
// token is shown once, with a QR code of the phone page's address (/phone#token=…&device=…: the
// fragment never reaches a server) and a ready `make flash` line (hardware.md).
import { $, h } from "./util.js";
import { request, store } from "./store.js";
import { RulesPanel } from "./rules.js";

const OPERATOR_NOTE = "The console needs the operator role. Ask the gateway's administrator for an operator token "
  + "(python -m gateway tokens add NAME --role operator), then open the dashboard with it.";

/** The phone page's address for a device: its token travels in the fragment only. */
export function phoneUrl(id, token) {
  return `${location.origin}/phone#token=${encodeURIComponent(token)}&device=${encodeURIComponent(id)}`;
}

/** The technician's line (Makefile flash target; hardware.md lists the other variables). */
export function flashLine(id, token) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `make flash PORT=/dev/ttyUSB0 DEVICE_ID=${id} WIFI_SSID=... WIFI_PASSWORD_FILE=wifi.txt `
    + `GATEWAY_URL=${scheme}://${location.host}/v1/device TOKEN=${token}`;
}

/** Draw ``text`` as a QR code on a canvas (qrcode-generator, MIT, vendored; loaded on first use). */
async function drawQr(canvas, text) {
  const { qrcode } = await import("./vendor/qrcode.mjs");
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  const cell = 4;
  const margin = 4 * cell; // the quiet zone readers need
  canvas.width = canvas.height = n * cell + 2 * margin;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000";
  for (let r = 0; r < n; r += 1) {
    for (let c = 0; c < n; c += 1) if (qr.isDark(r, c)) ctx.fillRect(margin + c * cell, margin + r * cell, cell, cell);
  }
  canvas.dataset.ready = "1";
}

function field(id, label, input, hint) {
  const described = hint ? `${id}-hint` : undefined;
  if (described) input.setAttribute("aria-describedby", described);
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint && h("span", { id: described, class: "muted hint" }, hint));
}

export class ConsoleView {
  constructor(root) {
    this.root = root;
    this.rules = new RulesPanel();
    this.status = h("p", { id: "console-status", role: "status", class: "muted" });
    this.note = h("p", { id: "console-note", class: "notice", hidden: true }, OPERATOR_NOTE);
    this.forms = h("div", { id: "console-forms" }, this.devicesPanel(), this.rules.build());
    root.append(h("h1", { id: "console-title", tabindex: "-1" }, "Console"), this.note, this.status, this.forms);
    root.hidden = true;
  }

  devicesPanel() {
    const addId = h("input", { id: "add-device-id", name: "device", type: "text", required: true, maxlength: 64,
      autocomplete: "off", spellcheck: "false", pattern: "[A-Za-z0-9_.:\\-]{1,64}" });
    const addLabel = h("input", { id: "add-device-label", name: "label", type: "text", maxlength: 256, autocomplete: "off" });
    this.addForm = h("form", { id: "add-device", class: "console-form", "aria-labelledby": "add-device-title" },
      h("h3", { id: "add-device-title" }, "Add a device"),
      field("add-device-id", "Device id", addId, "1-64 of A-Z a-z 0-9 _ - . :"),
      field("add-device-label", "Label (optional)", addLabel),
      h("button", { type: "submit" }, "Add device"));
    this.addForm.addEventListener("submit", (e) => {
      e.preventDefault();
      this.act({ t: "device_add", device: addId.value.trim(), label: addLabel.value }, (reply) => {
        this.addForm.reset();
        this.showToken(reply.device, reply.token, "added");
      });
    });

    this.pick = h("select", { id: "manage-device", name: "device" });
    this.label = h("input", { id: "manage-label", name: "label", type: "text", maxlength: 256, autocomplete: "off" });
    this.toggle = h("button", { type: "button", id: "device-toggle", class: "secondary" }, "Disable");
    this.confirmBox = h("div", { id: "delete-confirm", class: "notice", hidden: true, role: "group",
      "aria-labelledby": "delete-confirm-text" });
    this.manage = h("form", { id: "manage-device-form", class: "console-form", "aria-labelledby": "manage-title" },
      h("h3", { id: "manage-title" }, "Manage a device"),
      field("manage-device", "Device", this.pick),
      field("manage-label", "Label", this.label),
      h("div", { class: "actions" },
        h("button", { type: "submit" }, "Save label"),
        this.toggle,
        h("button", { type: "button", id: "device-rotate", class: "secondary",
          onclick: () => this.act({ t: "device_rotate", device: this.pick.value },
            (reply) => this.showToken(reply.device, reply.token, "rotated")) }, "Rotate token"),
        h("button", { type: "button", id: "device-delete", class: "secondary", onclick: () => this.askDelete() },
          "Delete…")),
      this.confirmBox);
    this.manage.addEventListener("submit", (e) => {
      e.preventDefault();
      this.act({ t: "device_label", device: this.pick.value, label: this.label.value });
    });
    this.pick.addEventListener("change", () => this.fillManage(true));
    this.toggle.addEventListener("click", () => {
      const device = store.devices.get(this.pick.value);
      this.act({ t: device && device.enabled === false ? "device_enable" : "device_disable", device: this.pick.value });
    });

    this.tokenBox = h("section", { id: "device-token", class: "token-box", hidden: true, "aria-labelledby": "token-title" });
    return h("section", { class: "panel", "aria-labelledby": "devices-title" },
      h("h2", { id: "devices-title" }, "Devices"), this.addForm, this.tokenBox, this.manage);
  }

  /** Run one action; ``done(reply)`` on success; the outcome is announced in the status line. */
  async act(frame, done) {
    this.status.className = "muted";
    this.status.textContent = "working…";
    try {
      const reply = await request(frame);
      this.status.textContent = `${frame.t.replace("_", " ")}: done${reply.device ? ` (${reply.device})` : ""}.`;
      if (done) done(reply);
    } catch (err) {
      this.status.className = "error";
      this.status.textContent = `${frame.t.replace("_", " ")} refused (${err.code}): ${err.message}`;
    }
  }

  askDelete() {
    const id = this.pick.value;
    if (!id) return;
    const confirm = h("button", { type: "button", id: "device-delete-confirm", onclick: () => {
      this.confirmBox.hidden = true;
      this.act({ t: "device_delete", device: id });
    } }, `Delete ${id}`);
    this.confirmBox.replaceChildren(
      h("p", { id: "delete-confirm-text" }, `Delete ${id} from the registry? Its token stops working at once and its `
        + "session is closed. Its stored readings stay (charts and exports) until the readings' retention removes "
        + "them; its open alerts are cleared within a minute. Registering the id again starts a new device with "
        + "the same history."),
      confirm,
      h("button", { type: "button", class: "secondary", onclick: () => { this.confirmBox.hidden = true; this.pick.focus(); } },
        "Cancel"));
    this.confirmBox.hidden = false;
    confirm.focus();
  }

  showToken(id, token, verb) {
    const url = phoneUrl(id, token);
    const canvas = h("canvas", { id: "device-qr", role: "img", "aria-label": `QR code of the phone page's address for ${id}`,
      dataset: { device: id } });
    this.tokenBox.replaceChildren(
      h("h3", { id: "token-title", tabindex: "-1" }, `Token of ${id} (${verb}): shown once`),
      h("p", {}, "Copy it now: the gateway keeps only its digest. The old token, if any, no longer works."),
      h("p", {}, h("code", { id: "device-token-value" }, token)),
      h("div", { class: "qr-row" }, canvas,
        h("div", {},
          h("p", {}, "On a phone: scan the code; it opens the phone page, which keeps the token in its storage."),
          h("p", {}, h("code", { id: "device-phone-url" }, url)))),
      h("p", {}, "For a technician flashing an ESP32 (hardware.md; put the Wi-Fi password in wifi.txt):"),
      h("pre", { id: "device-flash", class: "flash-line" }, flashLine(id, token)),
      h("button", { type: "button", class: "secondary", onclick: () => {
        this.tokenBox.replaceChildren();
        this.tokenBox.hidden = true;
        this.pick.focus();
      } }, "Done (hide the token)"));
    this.tokenBox.hidden = false;
    $("#token-title", this.tokenBox).focus();
    drawQr(canvas, url).catch((err) => { canvas.replaceWith(h("p", { class: "error" }, `QR code not drawn: ${err.message}`)); });
  }

  fillManage(force) {
    const device = store.devices.get(this.pick.value);
    this.toggle.textContent = device && device.enabled === false ? "Enable" : "Disable";
    if (device && (force || document.activeElement !== this.label)) this.label.value = device.label || "";
  }

  show(params, moveFocus) {
    this.root.hidden = false;
    this.render();
    if (moveFocus) $("#console-title", this.root).focus();
  }

  hide() {
    this.root.hidden = true;
  }

  clock() {}

  render() {
    if (this.root.hidden) return;
    const operator = store.role === "operator";
    this.note.hidden = operator || !store.role;
    this.forms.hidden = !operator;
    if (!operator) return;
    const ids = [...store.devices.values()].filter((d) => d.registered).map((d) => d.id).sort();
    const key = ids.join("\n");
    if (key !== this.idsKey) {
      this.idsKey = key;
      const selected = this.pick.value;
      this.pick.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
      if (ids.includes(selected)) this.pick.value = selected;
      this.rules.devices(ids);
    }
    this.manage.hidden = !ids.length;
    this.fillManage(false);
    this.rules.render();
  }
}
