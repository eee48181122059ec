// Edgewire dashboard: the page shell (auth panel, connection badge, role, alert announcements)
// and the router. #/ is the fleet, #/device/<id> a device, #/console the operator's console
// (devices and alert rules); back and forward work on all.
import { $, parseHash } from "./util.js";
import { TOKEN, alertText, start, store, takeTokenFromUrl, token, ui } from "./store.js";
import { FleetView } from "./fleet.js";
import { DeviceView } from "./device.js";
import { ConsoleView } from "./console.js";

ui.connection = (state, text) => {
  const badge = $("#conn");
  badge.dataset.state = state;
  badge.textContent = text;
};

ui.authFailed = (message) => {
  ui.connection("auth", "no access");
  $("#auth").hidden = false;
  $("#auth-reason").textContent = token()
    ? "The gateway refused the token this browser holds (wrong, revoked, or from another gateway)."
    : "This gateway asks for a dashboard token, and this browser has none.";
  $("#auth-detail").textContent = message || "";
  $("#views").hidden = true;
  $("#token-input").focus();
};

ui.authOk = () => {
  $("#auth").hidden = true;
  $("#views").hidden = false;
};

ui.role = () => {
  const role = $("#role");
  role.textContent = store.role ? `${store.role}${store.tokenName ? ` · ${store.tokenName}` : ""}` : "";
  $("#forget").hidden = !token();
  $("#console-link").hidden = store.role !== "operator"; // a viewer sees none of the operator forms
  document.body.dataset.role = store.role || "";
};

ui.announce = (alerts) => {
  const first = alerts.slice(0, 3).map((a) => `${a.severity || "alert"} on ${a.device}: ${alertText(a)}`);
  const more = alerts.length > 3 ? ` and ${alerts.length - 3} more` : "";
  $("#announcer").textContent = `New alert: ${first.join("; ")}${more}.`;
};

const views = {};
let current = null;

function route() {
  const { path, params } = parseHash(location.hash);
  const match = path.match(/^\/device\/(.+)$/);
  const next = match ? views.device : path === "/console" ? views.console : views.fleet;
  const switched = current !== next;
  const moveFocus = current !== null; // not on the page's first load: a screen reader starts at the top
  // Hide every other view: on the first load ``current`` is null, and the fleet's section is
  // visible in the page's HTML, so a deep link to a device would show it above the device.
  if (switched) for (const view of Object.values(views)) if (view !== next) view.hide();
  current = next;
  if (match) next.show(decodeURIComponent(match[1]), params, switched, moveFocus);
  else next.show(params, switched && moveFocus);
}

function init() {
  takeTokenFromUrl();
  $("#skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("#main").focus();
  });
  $("#forget").addEventListener("click", () => {
    localStorage.removeItem(TOKEN);
    location.reload();
  });
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("#token-input").value.trim();
    if (!value) return;
    localStorage.setItem(TOKEN, value);
    $("#token-input").value = "";
    start();
  });
  $("#auth-url").textContent = `${location.origin}/#token=<token>`;
  views.fleet = new FleetView($("#fleet-view"));
  views.device = new DeviceView($("#device-view"));
  views.console = new ConsoleView($("#console-view"));
  store.listeners.add((tick) => current && current.render(tick));
  window.addEventListener("hashchange", () => {
    if (takeTokenFromUrl()) start(); // an address with a token pasted into this open page: use it now
    route();
  });
  route();
  setInterval(() => { for (const fn of store.listeners) fn(true); }, 5000); // keep "… ago" fresh
  setInterval(() => current && current.clock(), 1000); // alerts' "Since", to the second
  start();
}

init();
