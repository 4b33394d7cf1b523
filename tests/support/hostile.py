"""A hostile Altinn on 127.0.0.1: a raw-socket HTTP server whose every answer a test scripts.

The simulator behaves like Altinn; this one behaves like a broken proxy, a schema change or a bug
upstream: it can answer anything at all (wrong types, duplicate ids, bodies longer or shorter than
announced, gzip nobody asked for, one byte every few seconds, endless bodies, huge headers) and it
records what the client did (requests, how many body bytes it managed to send before the client
hung up). Maskinporten's token endpoint and Altinn's exchange answer valid-looking tokens by
default, so a test only scripts the routes it is about.

    with HostileAltinn() as altinn:
        altinn.on("GET", "/storage/api/v1/instances/", lambda req: altinn.json({}))
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Answer:
    """What to send: raw header bytes, then the body pieces (each may wait ``gap`` seconds first)."""

    head: bytes
    body: Iterable[bytes] = ()
    gap: float = 0.0
    close: bool = False  # close the connection after the body (HTTP/1.0 style)


@dataclass
class Sent:
    target: str
    body_bytes: int = 0  # body bytes the socket accepted before the client hung up (or all)
    finished: bool = False  # the whole body went out
    client_closed: bool = False


Handler = Callable[[Request], Answer]


def _head(status: int, headers: list[tuple[str, str]], *, version: str = "HTTP/1.1") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
    lines = [f"{version} {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HostileAltinn:
    def __init__(self, *, sndbuf: int = 32 * 1024) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.maskinporten_issuer = self.url + "/maskinporten/"
        self.sndbuf = sndbuf
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[Request] = []
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)
        self.on("POST", r"/maskinporten/token", lambda req: self.json({"access_token": "mp." + secrets.token_urlsafe(24), "expires_in": 120}))
        self.on("GET", r"/authentication/api/v1/exchange/maskinporten", lambda req: self.text(self.altinn_token()))

    # -- scripting ------------------------------------------------------------------------------

    def on(self, method: str, pattern: str, handler: Handler) -> None:
        """Answer requests whose path matches ``pattern`` (a regex, searched) with ``handler``; the
        newest route wins."""
        with self._lock:
            self.routes.insert(0, (method, re.compile(pattern), handler))

    def altinn_token(self, lifetime: float = 1800) -> str:
        now = int(time.time())
        return jwt.encode({"org": "ttd", "iat": now, "exp": now + int(lifetime), "scope": "altinn:serviceowner"}, self._key, algorithm="HS256")

    @staticmethod
    def answer(
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
        length: int | None | bool = True,
        version: str = "HTTP/1.1",
        gap: float = 0.0,
        chunks: Iterable[bytes] | None = None,
    ) -> Answer:
        """``length``: True = the real length, an int = lie, None/False = no Content-Length (close-delimited)."""
        hdrs = list(headers or [])
        if content_type:
            hdrs.append(("Content-Type", content_type))
        if length is True:
            hdrs.append(("Content-Length", str(len(body))))
        elif isinstance(length, int) and not isinstance(length, bool):
            hdrs.append(("Content-Length", str(length)))
        close = length is None or length is False or version == "HTTP/1.0"
        if close:
            hdrs.append(("Connection", "close"))
        return Answer(_head(status, hdrs, version=version), chunks if chunks is not None else ([body] if body else []), gap, close)

    def json(self, doc: Any, status: int = 200, **kw: Any) -> Answer:
        return self.answer(status, json.dumps(doc).encode(), **kw)

    def text(self, text: str, status: int = 200, **kw: Any) -> Answer:
        return self.answer(status, text.encode(), content_type="text/plain; charset=utf-8", **kw)

    def calls(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        with self._lock:
            return [r for r in self.requests if r.method == method and rx.search(r.path)]

    # -- serving --------------------------------------------------------------------------------

    def __enter__(self) -> HostileAltinn:
        thread = threading.Thread(target=self._accept, name="hostile-altinn", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # wake the threads that wait for a next request on a kept-alive connection
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read_request(self, reader: Any) -> Request | None:
        line = reader.readline(65537)
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = reader.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", "0") or 0))
        return Request(method, target, headers, body)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with self._lock:
            self._conns.add(conn)
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                try:
                    req = self._read_request(reader)
                except (OSError, ValueError):
                    return
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                    handler = next((h for m, rx, h in self.routes if m == req.method and rx.search(req.path)), None)
                ans = handler(req) if handler else self.answer(404, b"")
                record = Sent(req.target)
                with self._lock:
                    self.sent.append(record)
                if not self._send(conn, ans, record) or ans.close:
                    return
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                reader.close()
                conn.close()
            except OSError:
                pass

    def _send(self, conn: socket.socket, ans: Answer, record: Sent) -> bool:
        try:
            conn.sendall(ans.head)
            for piece in ans.body:
                if self._stop.is_set():
                    return False
                if ans.gap:
                    time.sleep(ans.gap)
                conn.sendall(piece)
                record.body_bytes += len(piece)
        except OSError:
            record.client_closed = True
            return False
        record.finished = True
        return True


def endless(chunk: bytes = b"x" * 65536, limit: int = 1 << 30) -> Iterator[bytes]:
    """An endless body (bounded at ``limit`` so a broken client cannot hang the test forever)."""
    sent = 0
    while sent < limit:
        yield chunk
        sent += len(chunk)


@dataclass
class StorageInstance:
    """An instance document as storage would serve it, for a test to break member by member."""

    party: str = "50012345"
    guid: str = "0fc98a23-fe31-4ef5-8fb9-dd3f479354ce"
    org: str = "ttd"
    app: str = "apps-test"
    elements: list[dict[str, Any]] = field(default_factory=list)

    def element(self, element_id: str, size: int, **more: Any) -> dict[str, Any]:
        doc = {
            "id": element_id,
            "instanceGuid": self.guid,
            "dataType": "model",
            "contentType": "application/xml",
            "size": size,
            "fileScanResult": "NotApplicable",
        } | more
        self.elements.append(doc)
        return doc

    def document(self, **overrides: Any) -> dict[str, Any]:
        doc = {
            "id": f"{self.party}/{self.guid}",
            "appId": f"{self.org}/{self.app}",
            "org": self.org,
            "instanceOwner": {"partyId": self.party},
            "process": {"started": "2025-01-01T09:00:00Z", "ended": "2025-01-01T10:00:00Z", "endEvent": "EndEvent_1"},
            "status": {"isArchived": True, "isSoftDeleted": False, "isHardDeleted": False},
            "data": list(self.elements),
        }
        for key, value in overrides.items():
            if value is ...:
                doc.pop(key, None)
            else:
                doc[key] = value
        return doc

    @property
    def path(self) -> str:
        return f"/storage/api/v1/instances/{self.party}/{self.guid}"
