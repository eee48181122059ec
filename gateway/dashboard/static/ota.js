// The updates panel (docs/dashboard.md, docs/ota.md): rollouts and each device's app version (``fw``
// from its status) and update state, read from /v1/ota every few seconds. Shown under the fleet,
// only while there is something to show; read-only (rollouts are driven with `python -m gateway ota`).
import { $, ago, h } from "./util.js";
import { getJSON, store } from "./store.js";

const REFRESH_MS = 5000;
const root = $("#ota-panel");
let last = null;

function progress(r) {
  const c = r.counts || {};
  const failed = (c.failed || 0) + (c.rolled_back || 0);
  const busy = (c.offered || 0) + (c.downloading || 0) + (c.verifying || 0) + (c.trial || 0);
  return `${c.good || 0} good, ${busy} updating, ${failed} failed, ${c.pending || 0} pending of ${r.members}`;
}

function fw(id) {
  const device = store.devices.get(id);
  return (device && device.status && device.status.fw) || "–";
}

function updateText(p) {
  let text = `${p.state} ${p.release}`;
  if (p.reason) text += ` (${p.reason})`;
  if (p.state === "downloading" && p.total) text += ` ${Math.floor((100 * (p.done || 0)) / p.total)} %`;
  return text;
}

function render(data) {
  const reports = data.devices || [];
  const rollouts = data.rollouts || [];
  root.hidden = location.hash.startsWith("#/device/") || location.hash.startsWith("#/console") || (!reports.length && !rollouts.length);
  if (root.hidden) return;
  root.replaceChildren(
    h("h2", { id: "ota-title" }, "Updates"),
    h("div", { class: "table-wrap" },
      h("table", { class: "ota-rollouts" },
        h("caption", { class: "sr-only" }, "Rollouts, newest first"),
        h("thead", {}, h("tr", {}, ["Rollout", "Release", "State", "Devices", "Canary", "Failure limit", "Why"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rollouts.map((r) => h("tr", { dataset: { rollout: r.rollout, state: r.state } },
          h("td", {}, r.rollout), h("td", {}, r.release), h("td", {}, r.state), h("td", {}, progress(r)),
          h("td", {}, `${r.canary_pct} %`), h("td", {}, String(r.max_failures)), h("td", {}, r.reason || "")))))),
    h("div", { class: "table-wrap" },
      h("table", { class: "ota-devices" },
        h("caption", { class: "sr-only" }, "Each device's app version and latest update state"),
        h("thead", {}, h("tr", {}, ["Device", "App version", "Update", "Reported"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, reports.map((p) => h("tr", { dataset: { device: p.device, state: p.state } },
          h("th", { scope: "row" }, p.device), h("td", {}, fw(p.device)), h("td", {}, updateText(p)),
          h("td", {}, ago(p.updated))))))));
}

async function refresh() {
  try {
    last = await getJSON("/v1/ota");
  } catch {
    last = null; // no OTA here (storage = none) or no access yet: nothing shown
  }
  if (last) render(last);
  else root.hidden = true;
}

if (root) {
  window.addEventListener("hashchange", () => last && render(last));
  setInterval(refresh, REFRESH_MS);
  refresh();
}
