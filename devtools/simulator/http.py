"""HTTP plumbing: requests, responses as storage, app-lib and altinn-events write them, the server and handler."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .dotnet import _is_int32, _newtonsoft, _stj

if TYPE_CHECKING:
    from .core import Simulator
    from .faults import _Fault

_JSON_UTF8 = "application/json; charset=utf-8"
_MAX_REQUEST_BODY = 16 << 20


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Iterator[Any] | None = None
    length: int | None = None


class _Reply(Exception):
    """Raised by a route to answer at once."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class _Request:
    method: str
    path: str
    target: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    role: str = "platform"

    @property
    def raw_path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query_string(self) -> str:
        return urlsplit(self.target).query

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def params(self, name: str) -> list[str]:
        return list(self.query.get(name) or [])

    def bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def is_json(self) -> bool:
        media = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return media in ("application/json", "text/json") or (media.startswith("application/") and media.endswith("+json"))

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise _Reply(_problem(400, "body is not JSON")) from None


def _json(status: int, doc: Any, content_type: str = _JSON_UTF8) -> _Response:
    """Storage's JSON (Newtonsoft)."""
    return _Response(status, _newtonsoft(doc), content_type)


def _stj_json(status: int, doc: Any, content_type: str = _JSON_UTF8) -> _Response:
    """app-lib's and altinn-events' JSON (System.Text.Json)."""
    return _Response(status, _stj(doc), content_type)


def _text(status: int, text: str) -> _Response:
    """An ASP.NET controller returning a string (NotFound("..."), BadRequest("..."), StatusCode(n, "..."))."""
    return _Response(status, text.encode(), "text/plain; charset=utf-8")


def _json_string(status: int, text: str) -> _Response:
    """A storage action with [Produces("application/json")] (InstancesController Get, GetInstances,
    AddCompleteConfirmation, UpdateSubstatus; DataController Get) returning a string: a JSON string."""
    return _json(status, text)


def _stj_string_response(status: int, text: str) -> _Response:
    """The same from app-lib (InstancesController.Get) or altinn-events (SubscriptionController.Post), System.Text.Json."""
    return _stj_json(status, text)


def _problem(status: int, detail: str, title: str | None = None) -> _Response:
    titles = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type"}
    doc = {"type": "about:blank", "title": title or titles.get(status, "Error"), "status": status, "detail": detail}
    return _Response(status, json.dumps(doc).encode(), "application/problem+json; charset=utf-8")


def _empty(status: int) -> _Response:
    return _Response(status)


def _bool_param(value: str | None, name: str) -> bool | None:
    # ASP.NET model binding of bool?: "true"/"false" in any case; anything else is a 400.
    if value is None or value == "":
        return None
    if value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Reply(_problem(400, f"The value '{value}' is not valid for {name}."))


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not _is_int32(value.strip()):
        raise _Reply(_problem(400, f"The value '{value}' is not valid for {name}."))
    return int(value)


# --------------------------------------------------------------------------------------------
# Server and handler


_Route = tuple[str, Callable[..., _Response], tuple[str, ...]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: Simulator
    role: str  # "platform" or "apps"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AltinnSimulator/1.0"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sim._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.verbose:
            sys.stderr.write(f"[simulator] {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch()

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > _MAX_REQUEST_BODY:
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_REQUEST_BODY:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        sim = self.server.sim
        started = time.time()
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        logged = False
        outcome = _Outcome()
        role = self.server.role
        route = sim._route(role, self.command, path)
        endpoint = route[0] if route else "other"
        sim._count(endpoint)
        try:
            response = self._answer(route, endpoint, path, split.query, outcome)
            outcome.status = response.status
            # Logged before the answer goes out, so a client that has its answer also sees the entry.
            sim._log_request(role, self.command, split.path, endpoint, outcome.status, started, outcome.fault)
            logged = True
            self._write(response, _cut(outcome.fault))
        except OSError:
            self.close_connection = True
        finally:
            if not logged:
                sim._log_request(role, self.command, split.path, endpoint, outcome.status, started, outcome.fault)

    def _answer(self, route: _Route | None, endpoint: str, path: str, query: str, outcome: _Outcome) -> _Response:
        """Read the body, apply the endpoint's fault (recorded in ``outcome``) or run the route."""
        sim = self.server.sim
        try:
            body = self._read_body()
        except ValueError:
            body = None
        if body is None:
            self.close_connection = True
            return _problem(413, "request body too large or malformed")
        fault = outcome.fault = sim._take_fault(endpoint, self.path) if route else None
        request = _Request(self.command, path, self.path, parse_qs(query, keep_blank_values=True), self.headers, body, self.server.role)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            return sim._fault_response(fault)
        if route is None:
            return _empty(404)
        try:
            return route[1](request, *route[2])
        except _Reply as reply:
            return reply.response
        except Exception:
            traceback.print_exc()
            return _Response(500, b"simulator error", "text/plain; charset=utf-8")

    def _write(self, response: _Response, cut: tuple[str, int] | None) -> None:
        if response.stream is not None:
            chunks: Iterator[Any] = response.stream
            length = response.length or 0
        else:
            chunks = iter((response.body,))
            length = len(response.body)
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        limit = cut[1] if cut else None
        sent = 0
        for chunk in chunks:
            if limit is not None and sent + len(chunk) >= limit:
                if limit > sent:
                    self.wfile.write(chunk[: limit - sent])
                break
            if len(chunk):
                self.wfile.write(chunk)
            sent += len(chunk)
        if cut:
            self._abort(cut[0])

    def _abort(self, kind: str) -> None:
        self.close_connection = True
        sock = self.connection
        try:
            if kind == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                sock.close()  # linger 0: the kernel answers with RST
            else:
                sock.shutdown(socket.SHUT_WR)  # FIN after the partial body
        except OSError:
            pass


@dataclass
class _Outcome:
    """What the request log records of a request: the answer's status (0: none) and the fault applied."""

    status: int = 0
    fault: _Fault | None = None


def _cut(fault: _Fault | None) -> tuple[str, int] | None:
    """How a fault ends the answer early: ("truncate", bytes) or ("reset", bytes)."""
    if fault is not None and fault.truncate_at is not None:
        return ("truncate", fault.truncate_at)
    if fault is not None and fault.reset_after is not None:
        return ("reset", fault.reset_after)
    return None
