// Alert tables (fleet page and device page) and the operator's acknowledge / clear buttons.
import { ago, deviceHref, formatValue, h, when } from "./util.js";
import { alertText, request, store } from "./store.js";

/** Run ``fn`` (which may rebuild ``container``) and give focus back to the element that had it,
 * found again by its data-focus-key, so a keyboard user never loses their place. */
export function keepFocus(container, fn) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focusKey : null;
  fn();
  if (key && !container.contains(document.activeElement)) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again) again.focus({ preventScroll: true });
  }
}

function stateText(alert) {
  if (alert.state === "acknowledged") {
    return `acknowledged${alert.acked_by ? ` by ${alert.acked_by}` : ""}`;
  }
  return alert.state || "active";
}

export function alertRow(alert, { showDevice }) {
  const operator = store.role === "operator";
  const actions = h("td", { class: "actions" });
  if (operator && alert.id !== null && alert.id !== undefined) {
    if (alert.state !== "acknowledged" && alert.state !== "cleared") {
      actions.append(h("button", {
        type: "button", dataset: { action: "ack", alert: alert.id, focusKey: `ack-${alert.id}` },
        "aria-label": `Acknowledge alert ${alert.id} on ${alert.device}`,
      }, "Acknowledge"));
    }
    actions.append(h("button", {
      type: "button", class: "secondary", dataset: { action: "clear", alert: alert.id, focusKey: `clear-${alert.id}` },
      "aria-label": `Clear alert ${alert.id} on ${alert.device}`,
    }, "Clear"));
  }
  const severity = alert.severity || "warning";
  return h("tr", { dataset: { alert: alert.id, state: alert.state || "active", device: alert.device } },
    h("td", {}, h("span", { class: `sev sev-${severity}` }, severity)),
    showDevice ? h("td", {}, h("a", { href: deviceHref(alert.device), dataset: { focusKey: `dev-${alert.id}` } },
      alert.device)) : null,
    h("td", { class: "alert-text" }, alertText(alert)),
    h("td", { class: "num" }, alert.value === undefined ? "–" : formatValue(store.meta, alert.metric, alert.value)),
    h("td", { class: "alert-state" }, stateText(alert)),
    h("td", { class: "muted since", title: when(alert.raised), dataset: { raised: alert.raised || 0 } },
      ago(alert.raised)),
    actions);
}

/** Bring the "Since" cells of the alert rows under ``container`` up to ``now`` (called every second). */
export function refreshSince(container, now = Date.now()) {
  for (const cell of container.querySelectorAll("td.since[data-raised]")) {
    const text = ago(Number(cell.dataset.raised), now);
    if (cell.textContent !== text) cell.textContent = text;
  }
}

/** Delegate clicks on Acknowledge / Clear inside ``container``; results go to ``status``. */
export function bindAlertActions(container, status) {
  container.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    const id = Number(button.dataset.alert);
    button.disabled = true;
    status.textContent = `${action === "ack" ? "Acknowledging" : "Clearing"} alert ${id}…`;
    try {
      await request({ t: action, alert: id });
      status.textContent = `Alert ${id} ${action === "ack" ? "acknowledged" : "cleared"}.`;
    } catch (err) {
      status.textContent = `Alert ${id} not ${action === "ack" ? "acknowledged" : "cleared"}: ${err.message}` +
        (err.code ? ` (${err.code})` : "");
      button.disabled = false;
    }
  });
}
