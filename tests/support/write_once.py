"""A write-once guard for archive containers: a streaming HTTP/1.1 reverse proxy in front of
Azurite's blob endpoint that refuses, and records, every request that could change or remove a
blob that already exists in an archive container.

The product writes archive blobs write-once: each Put Blob and Put Block List it sends to an
archive container carries ``If-None-Match: *``, and it never sets metadata, properties or tags on,
copies onto, or deletes an archive blob. The guard checks that independently of the product's code,
on the wire, while the whole suite runs: the app's storage setting (``AzureWebJobsStorage``) names
the guard as ``BlobEndpoint``; tests that inspect or tamper use Azurite's own connection string and
bypass it. A refused request gets ``409 WriteOnceViolation`` (as from an immutability policy) and is
recorded in ``violations``; everything else is passed through unchanged, bodies streamed in chunks.

Rules, for requests on a blob (``/{account}/{container}/{blob}``, not ``restype=container``) of a
guarded container (``archive-*`` or ``altinn-data``; ``state-*`` is not guarded):

* PUT without ``comp`` (Put Blob) or ``comp=blocklist`` (Put Block List): only with
  ``If-None-Match: *``;
* PUT ``comp=block`` (Put Block: staging, invisible until committed) and ``comp=lease``: allowed;
* any other PUT ``comp`` (metadata, properties, tags, tier, appendblock, page, ...), a copy
  (``x-ms-copy-source``) and DELETE: refused.

Also refused: DELETE of a guarded container itself, and the sub-requests of a blob batch
(``comp=batch``: Delete Blob, Set Blob Tier) that the rules above refuse.

If Azurite cannot be reached, or drops the connection, the guard closes the client's connection
(it never answers 5xx itself), so storage-outage tests see what they would see without it.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Violation", "WriteOnceGuard", "is_archive_container", "with_blob_endpoint"]

CHUNK = 256 * 1024
MAX_BATCH_BODY = 8 * 1024 * 1024  # Azure caps a batch at 4 MiB; a larger "batch" is refused unread

# RFC 7230 6.1 hop-by-hop headers, not forwarded (framing is redone on each side).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
_ALLOWED_PUT_COMPS = frozenset({"block", "lease"})
_WRITE_ONCE_PUT_COMPS = frozenset({"", "blocklist"})
_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def is_archive_container(name: str) -> bool:
    """The containers whose blobs are write-once: ``archive-*`` (tests) and ``altinn-data`` (default)."""
    return name.startswith("archive-") or name == "altinn-data"


@dataclass(frozen=True)
class Violation:
    """A request the guard refused."""

    method: str
    path: str
    query: str
    rule: str
    at: float  # time.time()

    def __str__(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.at)) + f".{int(self.at * 1000) % 1000:03d}"
        return f"{stamp} {self.method} {self.path}{'?' + self.query if self.query else ''}: {self.rule}"


def _split(target: str) -> tuple[str, str, str | None, str | None, dict[str, str]]:
    """(path, query, container, blob, {lower-cased query name: value}) of a path-style request target."""
    parts = urlsplit(target)
    params = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    segments = parts.path.lstrip("/").split("/", 2)  # account, container, blob
    container = segments[1] if len(segments) > 1 and segments[1] else None
    blob = segments[2] if len(segments) > 2 and segments[2] else None
    return parts.path, parts.query, container, blob, params


def classify(method: str, target: str, headers: Any, guarded: Callable[[str], bool]) -> str | None:
    """The rule a request breaks, or None. ``headers``: anything with a case-insensitive ``get``."""
    method = method.upper()
    if method not in ("PUT", "DELETE"):
        return None
    _, _, container, blob, params = _split(target)
    if container is None or not guarded(container):
        return None
    if params.get("restype", "").lower() == "container" or blob is None:
        return "Delete Container on an archive container" if method == "DELETE" else None
    if method == "DELETE":
        return "Delete Blob on an archive blob"
    comp = params.get("comp", "").lower()
    if comp in _ALLOWED_PUT_COMPS:
        return None
    if headers.get("x-ms-copy-source") is not None:
        return f"copy onto an archive blob (x-ms-copy-source{', comp=' + comp if comp else ''})"
    if comp in _WRITE_ONCE_PUT_COMPS:
        if (headers.get("If-None-Match") or "").strip() == "*":
            return None
        what = "Put Block List" if comp else "Put Blob"
        return f"{what} without If-None-Match: * (may overwrite an existing archive blob)"
    return f"PUT comp={comp} on an archive blob (modifies an existing blob)"


_SUB_REQUEST = re.compile(rb"^(PUT|DELETE|POST|GET|HEAD|PATCH) (\S+) HTTP/1\.[01]\r?\n((?:[^\r\n]+\r?\n)*)", re.MULTILINE)


class _Headers(dict[str, str]):
    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


def classify_batch(body: bytes, guarded: Callable[[str], bool], account: str) -> list[tuple[str, str, str]]:
    """(method, target, rule) of each sub-request of a blob batch body that breaks a rule. The
    sub-requests' paths may leave out the account (``/container/blob``): then it is put in front."""
    found = []
    for match in _SUB_REQUEST.finditer(body):
        method, target = match.group(1).decode(), match.group(2).decode("latin-1")
        headers = _Headers()
        for line in match.group(3).decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not target.startswith("/"):
            parts = urlsplit(target)
            target = parts.path + ("?" + parts.query if parts.query else "")
        if target.lstrip("/").split("/", 1)[0] != account:
            target = f"/{account}{target}"
        rule = classify(method, target, headers, guarded)
        if rule is not None:
            found.append((method, target, "in a batch: " + rule))
    return found


def with_blob_endpoint(connection_string: str, endpoint: str) -> str:
    """``connection_string`` with its ``BlobEndpoint`` (added if missing) set to ``endpoint``."""
    parts = [p for p in connection_string.split(";") if p]
    out, done = [], False
    for part in parts:
        if part.split("=", 1)[0].strip().lower() == "blobendpoint":
            out.append(f"BlobEndpoint={endpoint}")
            done = True
        else:
            out.append(part)
    if not done:
        out.append(f"BlobEndpoint={endpoint}")
    return ";".join(out) + ";"


class _UpstreamGone(Exception):
    """Azurite could not be reached or dropped the connection: close the client's connection."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle client connection is closed after this long (clients reconnect)
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self.upstream is not None:
            self.upstream.close()
        self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_ANY(self) -> None:
        try:
            self._proxy()
        except (_UpstreamGone, OSError, http.client.HTTPException, ValueError):
            # Azurite unreachable or gone mid-request, or the client went away (or sent a body
            # that does not parse): the connection ends, no answer is made up. The upstream
            # connection is in an unknown state and is not reused.
            self.close_connection = True
            if self.upstream is not None:
                self.upstream.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_MERGE = do_ANY  # noqa: N815 - http.server's names

    # -- the request ----------------------------------------------------------------------

    def _body_framing(self) -> tuple[int | None, bool]:
        """(Content-Length, chunked) of the client's request body."""
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        length = self.headers.get("Content-Length")
        return (None if chunked or length is None else int(length)), chunked

    def _body_chunks(self, length: int | None, chunked: bool) -> Iterable[bytes]:
        """The client's request body, in chunks of at most CHUNK bytes, never all at once."""
        if chunked:
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._exactly(size)
                self.rfile.readline(65537)  # CRLF after the chunk
        else:
            yield from self._exactly(length or 0)

    def _exactly(self, size: int) -> Iterable[bytes]:
        """``size`` bytes of the client's body, in chunks."""
        remaining = size
        while remaining:
            data = self.rfile.read(min(CHUNK, remaining))
            if not data:
                raise ConnectionResetError("client body ended early")
            remaining -= len(data)
            yield data

    def _proxy(self) -> None:
        guard = self.server.guard
        length, chunked = self._body_framing()
        method = self.command.upper()

        rule = classify(method, self.path, self.headers, guard.guarded)
        guard._count(method, self.path, rule)
        prefetched: bytes | None = None
        if rule is None and method == "POST" and "comp=batch" in self.path.lower():
            if chunked or length is None or length > MAX_BATCH_BODY:
                rule = "a blob batch the guard cannot inspect (chunked or larger than 8 MiB)"
            else:
                prefetched = b"".join(self._body_chunks(length, chunked))
                broken = classify_batch(prefetched, guard.guarded, self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0])
                for sub_method, sub_target, sub_rule in broken:
                    path, query, *_ = _split(sub_target)
                    guard._record(Violation(sub_method, path, query, sub_rule, time.time()))
                if broken:
                    self._refuse(f"{len(broken)} sub-request(s) of this batch would modify or delete an archive blob", drain=False)
                    return
        if rule is not None:
            path, query, *_ = _split(self.path)
            guard._record(Violation(method, path, query, rule, time.time()))
            self._refuse(rule, drain=True, framing=(length, chunked))
            return

        # A body of at most one chunk is read first, so the request can be sent again on a fresh
        # connection if the kept-alive one turns out to be closed; larger ones are streamed.
        if prefetched is None and not chunked and (length or 0) <= CHUNK:
            prefetched = b"".join(self._body_chunks(length, chunked))
        response = self._forward(method, prefetched, length, chunked)
        self._relay(method, response)

    def _upstream_headers(self, chunked: bool) -> list[tuple[str, str]]:
        listed = {h.strip().lower() for h in (self.headers.get("Connection") or "").split(",")}
        out = []
        for name, value in self.headers.items():
            low = name.lower()
            if low in _HOP_BY_HOP or low in listed or low in ("host", "expect"):
                continue
            if low == "content-length" and chunked:
                continue
            out.append((name, value))
        out.insert(0, ("Host", self.server.guard.upstream_host_header))
        if chunked:
            out.append(("Transfer-Encoding", "chunked"))
        return out

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """The upstream connection and whether it is a kept-alive one (False: fresh)."""
        conn = self.upstream
        if conn is not None and conn.sock is not None:
            poller = select.poll()  # not select(): no limit on descriptor numbers
            poller.register(conn.sock, select.POLLIN | select.POLLPRI)
            try:
                idle = not poller.poll(0)
            except OSError:
                idle = False
            if idle:
                return conn, True
            conn.close()  # closed by Azurite (or unexpected bytes): do not reuse
        if conn is None:
            host, port = self.server.guard.upstream
            conn = self.upstream = http.client.HTTPConnection(host, port)
        try:
            conn.connect()
        except OSError as exc:
            raise _UpstreamGone from exc
        return conn, False

    def _forward(self, method: str, prefetched: bytes | None, length: int | None, chunked: bool) -> http.client.HTTPResponse:
        headers = self._upstream_headers(chunked)  # a prefetched body is never a chunked one
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders()
                if prefetched is not None:
                    if prefetched:
                        conn.send(prefetched)
                elif chunked:
                    for data in self._body_chunks(None, True):
                        conn.send(b"%x\r\n%s\r\n" % (len(data), data))
                    conn.send(b"0\r\n\r\n")
                else:
                    for data in self._body_chunks(length, False):
                        conn.send(data)
                return conn.getresponse()
            except _RETRYABLE as exc:
                conn.close()
                if attempt == 1 and reused and prefetched is not None:
                    continue  # a kept-alive connection Azurite had just closed: once more, fresh
                raise _UpstreamGone from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _UpstreamGone from exc
        raise AssertionError("unreachable")

    # -- the response ---------------------------------------------------------------------

    def _relay(self, method: str, response: http.client.HTTPResponse) -> None:
        no_body = method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        te_chunked = "chunked" in (response.getheader("Transfer-Encoding") or "").lower()
        has_length = response.getheader("Content-Length") is not None and not te_chunked
        listed = {h.strip().lower() for h in (response.getheader("Connection") or "").split(",")}
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            low = name.lower()
            if low in _HOP_BY_HOP or low in listed:
                continue
            self.send_header(name, value)
        until_close = not no_body and not has_length and not te_chunked
        if te_chunked and not no_body:
            self.send_header("Transfer-Encoding", "chunked")
        if until_close or self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if no_body:
            response.read()
        else:
            try:
                while True:
                    data = response.read1(CHUNK) if te_chunked else response.read(CHUNK)
                    if not data:
                        break
                    if te_chunked:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    else:
                        self.wfile.write(data)
            except (http.client.HTTPException, ConnectionResetError, ConnectionAbortedError) as exc:
                # Azurite dropped the connection mid-body: so does the guard (no clean end).
                raise _UpstreamGone from exc
            if te_chunked:
                self.wfile.write(b"0\r\n\r\n")
            if has_length and response.length:
                raise _UpstreamGone  # Azurite ended the body before its Content-Length
        if response.will_close and self.upstream is not None:
            self.upstream.close()

    def _refuse(self, message: str, *, drain: bool, framing: tuple[int | None, bool] = (0, False)) -> None:
        if drain:  # read (and drop) the body, so the connection stays usable
            for _ in self._body_chunks(*framing):
                pass
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>WriteOnceViolation</Code><Message>write-once guard: {_xml(message)}\n"
            f"RequestId:{uuid.uuid4()}\nTime:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}</Message></Error>"
        ).encode()
        self.send_response_only(409, "WriteOnceViolation")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ms-error-code", "WriteOnceViolation")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        if self.headers.get("x-ms-client-request-id"):
            self.send_header("x-ms-client-request-id", self.headers["x-ms-client-request-id"])
        self.send_header("Date", self.date_time_string())
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command.upper() != "HEAD":
            self.wfile.write(body)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], guard: WriteOnceGuard) -> None:
        self.guard = guard
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away (a worker killed with SIGKILL resets its connections)
        super().handle_error(request, client_address)

    def track(self, sock: socket.socket, *, add: bool) -> None:
        with self._clients_lock:
            (self._clients.add if add else self._clients.discard)(sock)

    def close_clients(self) -> None:
        with self._clients_lock:
            clients = list(self._clients)
            self._clients.clear()
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class WriteOnceGuard:
    """The guard on 127.0.0.1 (a free port) in front of the blob endpoint at ``upstream_port``.

    ``violations``: what was refused so far; ``take()`` returns them and starts a new list.
    """

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", *, guarded: Callable[[str], bool] = is_archive_container, host: str = "127.0.0.1"
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.upstream_host_header = f"{upstream_host}:{upstream_port}"
        self.guarded = guarded
        self._violations: list[Violation] = []
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # requests, archive writes let through
        self._server = _Server((host, 0), self)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"write-once-guard-{self.port}", daemon=True)
        self._thread.start()

    def blob_endpoint(self, account: str) -> str:
        return f"http://{self.host}:{self.port}/{account}"

    def connection_string(self, connection_string: str, account: str = "devstoreaccount1") -> str:
        """``connection_string`` with the guard as its blob endpoint (the queue endpoint unchanged)."""
        return with_blob_endpoint(connection_string, self.blob_endpoint(account))

    @property
    def violations(self) -> list[Violation]:
        with self._lock:
            return list(self._violations)

    def take(self) -> list[Violation]:
        with self._lock:
            taken, self._violations = self._violations, []
        return taken

    def reset(self) -> None:
        self.take()

    def _count(self, method: str, target: str, rule: str | None) -> None:
        _, _, container, blob, _ = _split(target)
        archive_write = method in ("PUT", "DELETE") and blob is not None and container is not None and self.guarded(container)
        with self._lock:
            self.counts["requests"] += 1
            if archive_write and rule is None:
                self.counts["archive writes let through"] += 1

    def _record(self, violation: Violation) -> None:
        with self._lock:
            self._violations.append(violation)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_clients()
        self._thread.join(5)

    def __enter__(self) -> WriteOnceGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WriteOnceGuard 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]}>"
