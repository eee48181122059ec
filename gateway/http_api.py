"""HTTP endpoints and WebSocket upgrades: one routing table, path -> handler.

Plain HTTP routes answer a request (``/healthz``, ``/metrics``, the dashboard page); WebSocket
routes check the upgrade (credential, token) and then serve the connection. Adding an endpoint is
one line: ``http.route("/v1/thing", handler)`` or ``http.websocket("/v1/thing", check, serve)``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.auth import bearer_credential
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, json_response
from gateway.dashboard.http import load_static, static_response
from gateway.dashboard.phone_page import load_phone, phone_response
from gateway.dashboard.roles import ANONYMOUS, DashboardAuth, DashboardIdentity
from gateway.errors import AuthError, StorageError
from gateway.registry import verify_admin_token
from protocol import wire

ORIGIN_NOT_ALLOWED = "origin_not_allowed"  # HTTP 403 on /v1/dashboard
HOST_NOT_ALLOWED = "host_not_allowed"  # HTTP 403 on /v1/dashboard
METHOD_NOT_ALLOWED = "method_not_allowed"  # HTTP 405: every route answers GET only
TOKEN_NEEDED = ("this dashboard needs a token: open the address the gateway printed at start (it ends in "
                "#token=...; python -m gateway tokens url --data-dir DIR prints it again), or ask its "
                "administrator for one (python -m gateway tokens add NAME --role viewer)")
TOKEN_REFUSED = ("dashboard token not valid (wrong, revoked, or from another gateway): ask for a new one "
                 "(python -m gateway tokens add NAME --role viewer) or use <data_dir>/dashboard.token")

Handler = Callable[[EdgeConnection, Request], Awaitable[Response | None]]
Serve = Callable[[EdgeConnection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """``check`` answers the HTTP request (a Response), or returns None to accept a WebSocket
    upgrade that ``serve`` then handles; plain HTTP routes have no ``serve``."""

    check: Handler
    serve: Serve | None = None


def _query_token(path: str) -> str | None:
    """``token`` from the request's query string (browsers cannot set WebSocket headers)."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("token")
    return values[0] if values else None


class HttpApi:
    def __init__(self, config: GatewayConfig, *, admin_token: str, dashboard_auth: DashboardAuth,
                 client_address: Callable[[EdgeConnection, Headers], str], draining: Callable[[], bool],
                 count_error: Callable[[str], None] = lambda code: None) -> None:
        self.config = config
        self.count_error = count_error
        self._allowed_hosts = {h.lower() for h in (config.host, *config.allowed_hosts)}
        self.client_address = client_address
        self.admin_token = admin_token
        self.dashboard_auth = dashboard_auth
        self.draining = draining
        self.routes: dict[str, Route] = {}
        self._static = load_static()  # the dashboard page: gateway/dashboard/static/, read once
        for path in self._static:
            self.route(path, self.static)
        self._phone = load_phone()  # the phone page (/phone): a browser as a device, its own CSP
        for path in self._phone:
            self.route(path, self.phone)

    def refuse(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        """A counted refusal: HTTP ``status`` with {"code", "message"}."""
        self.count_error(code)
        return json_response(status, {"code": code, "message": message}, headers)

    def route(self, path: str, handler: Handler) -> None:
        """Serve plain HTTP requests for ``path`` with ``handler`` (it returns the Response)."""
        self.routes[path] = Route(handler)

    def websocket(self, path: str, check: Handler, serve: Serve) -> None:
        """Accept WebSocket upgrades on ``path`` that ``check`` lets through, served by ``serve``."""
        self.routes[path] = Route(check, serve)

    # ------------------------------------------------------------ websockets hooks
    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        assert isinstance(ws, EdgeConnection)
        path = request.path.split("?", 1)[0]
        route = self.routes.get(path)
        if route is not None and request.method != "GET":  # every route here only reads (or upgrades)
            return self.refuse(405, METHOD_NOT_ALLOWED, f"{path[:64]} answers GET only", {"Allow": "GET"})
        upgrade = "upgrade" in request.headers.get("Connection", "").lower()
        if route is not None and route.serve is None and not (upgrade and path in self._static):
            return await route.check(ws, request)
        if self.draining():
            return json_response(503, {"code": wire.E_SHUTDOWN, "message": "gateway restarting; reconnect later"},
                                 {"Retry-After": "5"})
        if route is None or route.serve is None:
            return json_response(404, {"code": "not_found", "message": f"no such path {path[:64]}"})
        return await route.check(ws, request)

    async def handle(self, ws: ServerConnection) -> None:
        """Serve an accepted WebSocket with its route's handler."""
        assert isinstance(ws, EdgeConnection) and ws.request is not None
        route = self.routes.get(ws.request.path.split("?", 1)[0])
        if route is not None and route.serve is not None:
            await route.serve(ws)

    # ------------------------------------------------------------ handlers
    async def static(self, ws: EdgeConnection, request: Request) -> Response:
        return static_response(*self._static[request.path.split("?", 1)[0]])

    async def phone(self, ws: EdgeConnection, request: Request) -> Response:
        return phone_response(self._phone[request.path.split("?", 1)[0]], request)

    def _own_hosts(self, ws: EdgeConnection, headers: Headers) -> set[str]:
        """The host[:port] values naming this gateway for this request: its Host header and, from a
        trusted proxy, X-Forwarded-Host."""
        hosts = {h.strip().lower() for h in headers.get_all("Host")}
        if self.config.trusted_proxies and ws.address != self._peer(ws):  # the request came through a proxy
            for value in headers.get_all("X-Forwarded-Host"):
                hosts.update(h.strip().lower() for h in value.split(",") if h.strip())
        return hosts

    @staticmethod
    def _peer(ws: EdgeConnection) -> str:
        return str(ws.remote_address[0]) if ws.remote_address else ""

    def _origin_allowed(self, ws: EdgeConnection, headers: Headers) -> bool:
        """A browser's Origin must be the gateway's own origin or listed in ``dashboard_origins``.
        Clients that send no Origin (not browsers) pass: they cannot be driven by a web page."""
        origins = headers.get_all("Origin")
        if not origins:
            return True
        if len(origins) > 1:
            return False
        origin = origins[0].strip().lower().rstrip("/")
        if origin in (o.lower().rstrip("/") for o in self.config.dashboard_origins):
            return True
        parts = urllib.parse.urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc in self._own_hosts(ws, headers)

    def _host_allowed(self, headers: Headers) -> bool:
        """Without the token, serve a Host only if it is an IP address, a loopback name, the configured
        ``host`` or in ``allowed_hosts``: a DNS-rebinding page reaches us under its own DNS name."""
        values = headers.get_all("Host")
        if len(values) != 1:
            return False
        try:
            name = urllib.parse.urlsplit("//" + values[0].strip()).hostname or ""
        except ValueError:
            return False
        if name == "localhost" or name.endswith(".localhost") or name in self._allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)  # an address is not a DNS name: nothing to rebind
            return True
        except ValueError:
            return False

    async def dashboard_upgrade(self, ws: EdgeConnection, request: Request) -> Response | None:
        identity = await self.dashboard_identity(ws, request)
        if isinstance(identity, Response):
            return identity
        ws.dashboard = identity
        ws.authenticated()
        return None

    async def dashboard_identity(self, ws: EdgeConnection, request: Request) -> DashboardIdentity | Response:
        """The dashboard's checks (Origin, token, Host), for its stream and its HTTP API: who the
        client is (its role), or the refusal. A token that is shown is always checked; without one,
        the client is a viewer where ``dashboard_auth`` lets it in (docs/configuration.md)."""
        ws.address = self.client_address(ws, request.headers)
        headers = request.headers
        if not self._origin_allowed(ws, headers):
            return self.refuse(403, ORIGIN_NOT_ALLOWED, "this page's origin may not open the dashboard stream; "
                               "add it to dashboard_origins")
        try:
            token = bearer_credential(headers) or _query_token(request.path)
        except AuthError:
            token = ""  # a malformed Authorization header proves nothing
        if token is not None:
            try:
                identity = await self.dashboard_auth.identify(token) if token else None
            except StorageError:
                self.count_error(wire.E_STORAGE)
                return json_response(503, {"code": wire.E_STORAGE, "message": "storage unavailable; try again"},
                                     {"Retry-After": "5"})
            return identity if identity is not None else self.refuse(401, wire.E_AUTH_FAILED, TOKEN_REFUSED)
        if self.config.dashboard_token_needed(ws.address):
            return self.refuse(401, wire.E_AUTH_FAILED, TOKEN_NEEDED)
        if not self._host_allowed(headers):
            return self.refuse(403, HOST_NOT_ALLOWED, "unknown Host for a dashboard without a token; add the name "
                               "to allowed_hosts or turn dashboard_auth on")
        return ANONYMOUS

    async def admin_upgrade(self, ws: EdgeConnection, request: Request) -> Response | None:
        try:
            token = bearer_credential(request.headers)
        except AuthError:
            token = None
        if not verify_admin_token(self.admin_token, token):
            return self.refuse(401, wire.E_AUTH_FAILED, "admin authentication failed")
        ws.authenticated()
        return None
