"""The Simulator: two HTTP servers on local origins, composed of one mixin per service."""

from __future__ import annotations

import collections
import socket
import threading
from typing import cast

from .apps import AppsMixin
from .dotnet import _guid, _is_int32
from .faults import FaultsMixin, _Fault
from .http import _Handler, _Route, _Server
from .maskinporten import MaskinportenMixin
from .query import QueryMixin
from .setup_api import SetupMixin
from .subscriptions import SubscriptionsMixin


class Simulator(SetupMixin, MaskinportenMixin, FaultsMixin, QueryMixin, AppsMixin, SubscriptionsMixin):
    """Altinn platform, app hosts and Maskinporten on two local origins; see the package docstring.

    The routes are handled per service: Maskinporten (maskinporten.py), the exchange (authentication.py),
    storage (storage.py, query.py), the app API (apps.py) and events (events.py, subscriptions.py).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        apps_port: int = 0,
        maskinporten_token_lifetime: float = 599,
        altinn_token_lifetime: float = 1800,
        quote_exchange_token: bool = False,
        validation_retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0),
        validation_timeout: float = 10.0,
    ) -> None:
        self.maskinporten_token_lifetime = maskinporten_token_lifetime
        self.altinn_token_lifetime = altinn_token_lifetime
        self.quote_exchange_token = quote_exchange_token
        # altinn-events src/Events/appsettings.json ValidationQueuePolicy: a failed validation is retried after
        # 1 s, 5 s, 10 s (cooldown), then 30 s, 60 s, 120 s, 120 s, 120 s (scheduled), then moved to the error
        # queue (ValidationEventHandlerPolicy). The simulator keeps the shape on a shorter clock.
        self.validation_retry_delays = tuple(validation_retry_delays)
        # altinn-events src/Events/Configuration/EventsOutboundSettings.cs RequestTimeout: 45 s in Altinn.
        self.validation_timeout = validation_timeout
        self.verbose = False
        self._lock = threading.RLock()
        self._server = _Server((host, port), _Handler)
        self._server.sim = self
        self._server.role = "platform"
        self._apps_server = _Server((host, apps_port), _Handler)
        self._apps_server.sim = self
        self._apps_server.role = "apps"
        self.url = self._origin(self._server)
        self.apps_url = self._origin(self._apps_server)
        self.maskinporten_issuer = self.url + "/maskinporten/"
        self.token_endpoint = self.maskinporten_issuer + "token"
        self._init_state()

    def _init_state(self) -> None:
        """The registries, counters and records, empty."""
        self._threads = []
        self._background = []
        self._stopping = threading.Event()
        self._connections = set()
        self._clients = {}
        self._seen_jti = set()
        self._mp_tokens = {}
        self._altinn_tokens = {}
        self._faults = []
        self._seq = 0
        self._last_us = 0
        self._next_party = 50_000_000
        self._next_subscription = 1
        self._apps = {}
        self.instances = {}
        self._element_owner = {}
        self.parties = {}
        self.subscriptions = {}
        self.calls = collections.Counter()
        self.grants = 0
        self.exchanges = 0
        self.connections = 0
        self.rejected_grants = []
        self.confirmations = []
        self.complete_violations = []
        self.substatus_updates = []
        self.validation_attempts = []
        self.requests = []
        self.on_complete = None

    @staticmethod
    def _origin(server: _Server) -> str:
        bound_host, bound_port = cast(tuple[str, int], server.server_address[:2])
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        return f"http://{shown}:{bound_port}"

    # ---- lifecycle

    def start(self) -> Simulator:
        """Serve both origins in daemon threads; returns self."""
        if self._threads:
            raise RuntimeError("simulator already started")
        for server in (self._server, self._apps_server):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"simulator-{server.role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and end validation retries."""
        self._stopping.set()
        if self._threads:
            for server in (self._server, self._apps_server):
                server.shutdown()
            for thread in self._threads:
                thread.join(timeout=5)
            self._threads = []
        self._server.server_close()
        self._apps_server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._background):
            thread.join(timeout=2)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._connections.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def reset_counters(self) -> None:
        """Clear calls, grants, exchanges, rejections, confirmations, violations, substatus updates,
        validation attempts and the request log."""
        with self._lock:
            self.calls.clear()
            self.grants = 0
            self.exchanges = 0
            self.rejected_grants.clear()
            self.confirmations.clear()
            self.complete_violations.clear()
            self.substatus_updates.clear()
            self.validation_attempts.clear()
            self.requests.clear()

    # ---- internals used by the handler

    def _count(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def _log_request(self, role: str, method: str, path: str, endpoint: str, status: int, started: float, fault: _Fault | None) -> None:
        entry = {
            "method": method,
            "path": path,
            "endpoint": endpoint,
            "status": status,
            "time": started,
            "fault": fault.describe() if fault else None,
            "host": role,
        }
        with self._lock:
            self.requests.append(entry)

    def _route(self, role: str, method: str, path: str) -> _Route | None:
        parts = path.strip("/").split("/")
        if role == "apps":
            return self._app_route(method, parts)
        if path == "/maskinporten/token":
            return ("token", self._token, ()) if method == "POST" else None
        if path == "/authentication/api/v1/exchange/maskinporten":
            return ("exchange", self._exchange, ()) if method == "GET" else None
        if parts[:4] == ["storage", "api", "v1", "instances"]:
            return self._storage_route(method, parts)
        if parts[:4] == ["events", "api", "v1", "subscriptions"]:
            return self._events_route(method, parts)
        return None

    def _storage_route(self, method: str, parts: list[str]) -> _Route | None:
        # altinn-storage src/Storage/Controllers/InstancesController.cs and DataController.cs routes:
        # {instanceOwnerPartyId:int}/{instanceGuid:guid}[/complete|/substatus|/data/{dataGuid:guid}], {instanceGuid:guid}.
        n = len(parts)
        if n == 4 and method == "GET":
            return ("query", self._query, ())
        if n == 5 and method == "GET" and _guid(parts[4]):
            return ("instance", self._get_instance, ("", parts[4]))
        if n >= 6 and _is_int32(parts[4]) and _guid(parts[5]):
            return self._instance_route(method, parts)
        return None

    def _instance_route(self, method: str, parts: list[str]) -> _Route | None:
        """Below storage's instances/{instanceOwnerPartyId:int}/{instanceGuid:guid}."""
        n = len(parts)
        party, guid = parts[4], parts[5]
        if n == 6 and method == "GET":
            return ("instance", self._get_instance, (party, guid))
        if n == 7 and parts[6] == "complete" and method == "POST":
            return ("complete", self._complete, (party, guid))
        if n == 7 and parts[6] == "substatus" and method == "PUT":
            return ("substatus", self._substatus, (party, guid))
        if n == 8 and parts[6] == "data" and method == "GET" and _guid(parts[7]):
            return ("data", self._get_data, (party, guid, parts[7]))
        return None

    def _events_route(self, method: str, parts: list[str]) -> _Route | None:
        n = len(parts)
        if n == 4 and method == "POST":
            return ("subscriptions", self._create_subscription, ())
        if n == 4 and method == "GET":
            return ("subscriptions", self._list_subscriptions, ())
        if n == 5 and method in ("GET", "DELETE"):
            return ("subscriptions", self._one_subscription, (parts[4],))
        return None

    def _app_route(self, method: str, parts: list[str]) -> _Route | None:
        # app-lib-dotnet src/Altinn.App.Api/Controllers/InstancesController.cs [Route("{org}/{app}/instances")] and
        # DataController.cs [Route("{org}/{app}/instances/{instanceOwnerPartyId:int}/{instanceGuid:guid}/data")].
        n = len(parts)
        if not _is_app_instance_path(parts):
            return None
        org, app, party, guid = parts[0], parts[1], parts[3], parts[4]
        if n == 5 and method == "GET":
            return ("app-instance", self._app_instance, (org, app, party, guid))
        if n == 6 and parts[5] == "complete" and method == "POST":
            return ("app-complete", self._app_complete, (org, app, party, guid))
        if n in (7, 9) and parts[5] == "data" and method == "GET" and _guid(parts[6]) and (n == 7 or parts[7] == "type"):
            return ("app-data", self._app_data, (org, app, party, guid, parts[6], parts[8] if n == 9 else ""))
        return None


def _is_app_instance_path(parts: list[str]) -> bool:
    """{org}/{app}/instances/{instanceOwnerPartyId:int}/{instanceGuid:guid}[/...]."""
    return not (len(parts) < 5 or parts[2] != "instances" or not _is_int32(parts[3]) or not _guid(parts[4]))
