"""HTTP triggers: the server, and the host's routing (literal routes under ``/{routePrefix}/``, case-insensitive,
allowed methods), function keys and the answer made of what a function returns."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions import _abc as func_abc

from .bindings import _Function

if TYPE_CHECKING:
    from .host import LocalHost

log = logging.getLogger(__package__)

# The Functions host refuses larger HTTP request bodies with 413 (its default maxRequestBodySize).
MAX_REQUEST_BODY = 100 * 1024 * 1024


class _BodyTooLarge(ValueError):
    """The request body is (or claims to be) larger than MAX_REQUEST_BODY."""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    host: LocalHost


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHost"
    timeout = 120  # idle keep-alive connections end after this
    disable_nagle_algorithm = True  # like the real host: no 40 ms delayed-ACK stall per response
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the host logs requests itself, without the query string (it may hold the key)

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except _BodyTooLarge:
            self.close_connection = True  # the rest of the body is not read
            self._send(413, [], b"")
            return
        except ValueError as exc:
            self._send(400, [("Content-Type", "text/plain")], str(exc).encode())
            self.close_connection = True
            return
        status, headers, payload = _handle_http(self.server.host, self.command, self.path, self.headers.items(), body)
        self._send(status, headers, payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise ValueError("bad Content-Length") from None
        if size < 0:
            raise ValueError("bad Content-Length")
        if size > MAX_REQUEST_BODY:  # BufferedReader.read(n) allocates n bytes up front
            raise _BodyTooLarge
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(65537)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ValueError("bad chunk size") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            if size < 0:
                raise ValueError("bad chunk size")
            total += size
            if total > MAX_REQUEST_BODY:  # never allocate what a header claims
                raise _BodyTooLarge
            chunks.append(self.rfile.read(size))
            self.rfile.readline(3)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and not no_body:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch  # noqa: N815 (http.server's names)


_SKIP_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def _response_parts(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP answer for what an HTTP function returned (like azure.functions' converter)."""
    if result is None:
        return 204, [], b""
    if isinstance(result, func_abc.HttpResponse):
        headers = {k.lower(): str(v) for k, v in result.headers.items()}
        if "content-type" not in headers:
            mimetype = result.mimetype
            charset = getattr(result, "charset", "utf-8")
            headers["content-type"] = f"{mimetype}; charset={charset}" if mimetype.startswith("text/") else mimetype
        items = [(k, v) for k, v in headers.items() if k not in _SKIP_RESPONSE_HEADERS]
        return int(result.status_code), items, result.get_body()
    if isinstance(result, str):
        return 200, [("content-type", "text/plain; charset=utf-8")], result.encode()
    if isinstance(result, bytes | bytearray):
        return 200, [("content-type", "application/octet-stream")], bytes(result)
    raise TypeError(f"an HTTP function returned {type(result).__name__}, not HttpResponse")


def _handle_http(host: LocalHost, method: str, target: str, header_items: Iterable[tuple[str, str]], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Route, authorise and invoke; returns (status, headers, body)."""
    split = urlsplit(target)
    path = unquote(split.path)
    query = parse_qsl(split.query, keep_blank_values=True)
    log.debug("HTTP %s %s", method, path)  # no query string: it may hold the key
    if host._stopping.is_set():
        return 503, [], b""
    fn = _route(host, method, path)
    if fn is None:
        return 404, [], b""

    headers: dict[str, str] = {}
    for name, value in header_items:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    params: dict[str, str] = {}
    for name, value in query:
        params.setdefault(name, value)
    if fn.auth_level != "anonymous":
        given = params.get("code") or headers.get("x-functions-key") or ""
        if not hmac.compare_digest(given.encode(), host.function_key.encode()):
            return 401, [], b""

    host_header = headers.get("host") or f"{host._http_host}:{host.port}"
    request = func.HttpRequest(
        method=method.upper(),
        url=f"http://{host_header}{target}",
        headers=headers,
        params=params,
        route_params={},
        body=body,
    )
    try:
        result = host._invocations.invoke(fn, {fn.arg_name: request}, f"HTTP {method} {path}")
        return _response_parts(result)
    except Exception:  # the function failed or timed out
        return 500, [], b""


def _route(host: LocalHost, method: str, path: str) -> _Function | None:
    """The HTTP function for ``path`` (below the route prefix, case-insensitively) and ``method``, if any."""
    prefix = f"/{host.settings.route_prefix}/" if host.settings.route_prefix else "/"
    if not (path + "/").startswith(prefix):
        return None
    relative = path[len(prefix) :].strip("/").lower()  # routes match case-insensitively
    for fn in host._http_functions:
        assert fn.route is not None
        if fn.route.lower() == relative and (fn.methods is None or method.upper() in fn.methods):
            return fn
    return None
