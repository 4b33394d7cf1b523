"""An Altinn 3 + Maskinporten simulator: a real HTTP server on 127.0.0.1 for tests and local runs.

One base URL (``sim.url``) serves everything: the Altinn platform (storage, events, token exchange),
the app host of every org (app API paths start with ``/{org}/{app}``) and Maskinporten
(issuer ``sim.url + "/maskinporten/"``, token endpoint ``issuer + "token"``). It checks what the
real services check (grant signature against the registered key or certificate, ``aud``,
``exp - iat <= 120``, unused ``jti``, scopes, bearer tokens and org on every Altinn call) and can
inject faults per endpoint: status codes, delays, truncated bodies and connection resets.

Behaviour worth knowing:

- The port is bound when the ``Simulator`` is made, so ``sim.url`` is known before ``start()``.
- Altinn calls need a token from the exchange: 401 without a valid one, 403 when its ``org`` is not
  the instance's org or it lacks the scope (``instances.read`` for GETs and the query,
  ``instances.write`` for ``/complete``).
- Data bodies are generated on the fly from the element's seed (``ElementSpec.seed``, else derived
  from the element id), so a GiB-sized element costs no memory. ``Content-Length`` is
  ``ElementSpec.size``. The metadata served is ``SimInstance.elements``, which tests may edit (a
  wrong ``size``, say) without changing the body; the download's ``Content-Type`` and
  ``Content-Disposition`` follow those dicts.
- Hard-deleted instances are still served (``status.isHardDeleted`` true); removed ones are 404.
- Faults are checked in the order they were added; the first that applies is used. ``match`` is a
  substring of the request target (path and query). With ``probability`` a fault is persistent and
  ``times`` is ignored.

Example::

    with Simulator() as sim:
        sim.register_client("my-client", public_key_pem=pem, kid="k1")
        inst = sim.add_instance("ttd", "app", [ElementSpec(size=10 << 20, filename="a.pdf")])
        ...
        assert sim.confirmations[0][0] == inst.id

``python -m devtools.simulator --port 8070`` runs one by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import functools
import hashlib
import json
import math
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import unicodedata
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_SCOPES = "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
READ_SCOPE = "altinn:serviceowner/instances.read"
WRITE_SCOPE = "altinn:serviceowner/instances.write"
ENDPOINTS = frozenset({"token", "exchange", "instance", "data", "complete", "query", "subscriptions"})

_GRANT_ALGS = ("RS256", "RS384", "RS512")
_GRANT_CLAIMS = frozenset({"aud", "iss", "scope", "iat", "exp", "jti", "resource"})
_BLOCK = 1 << 20  # generated content repeats a seeded block of this size, rotated per chunk
_MAX_REQUEST_BODY = 16 << 20
_MAX_EXPECTED_BYTES = 64 << 20
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Generated content


@functools.lru_cache(maxsize=8)
def _doubled_block(seed: int, block_len: int) -> bytes:
    block = random.Random(seed).randbytes(block_len)
    return block + block


def iter_content(seed: int, size: int) -> Iterator[memoryview]:
    """Yield the deterministic content of an element (seed, size) in chunks of at most 1 MiB."""
    if size <= 0:
        return
    block_len = min(size, _BLOCK)
    doubled = memoryview(_doubled_block(seed, block_len))
    sent = 0
    index = 0
    while sent < size:
        offset = 0 if index == 0 else (index * 2654435761 + seed) % block_len
        n = min(block_len, size - sent)
        yield doubled[offset : offset + n]
        sent += n
        index += 1


def _content_disposition(filename: str) -> str:
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in ascii_name) or "file"
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class ElementSpec:
    """How to generate one data element: metadata and a deterministic body of ``size`` bytes."""

    data_type: str = "model"
    content_type: str = "application/xml"
    size: int = 400
    filename: str | None = None
    file_scan_result: str = "NotApplicable"
    seed: int | None = None


class SimInstance:
    """An Altinn instance held by the simulator. Attributes may be changed by tests at any time."""

    def __init__(
        self,
        base_url: str,
        org: str,
        app: str,
        party_id: str,
        instance_guid: str,
        specs: list[ElementSpec],
        *,
        process_ended: bool,
        confirmed_by: list[str],
        hard_deleted: bool,
    ) -> None:
        now = time.time()
        self.org = org
        self.app = app
        self.party_id = party_id
        self.instance_guid = instance_guid
        self.process_ended = process_ended
        self.confirmed_by: list[str] = list(confirmed_by)
        self.hard_deleted = hard_deleted
        self.instance_owner: dict[str, Any] = {"partyId": party_id}
        self.created = now
        self.last_changed = now
        self.removed = False
        self._base = base_url
        self._ended_at: float | None = now if process_ended else None
        self._confirmed_on: dict[str, str] = {}
        self._seq = 0
        self._specs: dict[str, ElementSpec] = {}
        self._seeds: dict[str, int] = {}
        self._sha256: dict[str, str] = {}
        self.elements: list[dict[str, Any]] = []
        for spec in specs:
            element_id = str(uuid.uuid4())
            self._specs[element_id] = spec
            self._seeds[element_id] = spec.seed if spec.seed is not None else int(element_id.replace("-", "")[:15], 16)
            self.elements.append(self._element_json(element_id, spec))

    @property
    def id(self) -> str:
        return f"{self.party_id}/{self.instance_guid}"

    @property
    def app_url(self) -> str:
        """The instance on the app API."""
        return f"{self._base}/{self.org}/{self.app}/instances/{self.id}"

    @property
    def platform_url(self) -> str:
        """The instance on the storage API."""
        return f"{self._base}/storage/api/v1/instances/{self.id}"

    def _element_json(self, element_id: str, spec: ElementSpec) -> dict[str, Any]:
        created = _iso(self.created)
        return {
            "id": element_id,
            "instanceGuid": self.instance_guid,
            "dataType": spec.data_type,
            "filename": spec.filename,
            "contentType": spec.content_type,
            "blobStoragePath": f"{self.org}/{self.app}/{self.instance_guid}/data/{element_id}",
            "selfLinks": {
                "apps": f"{self.app_url}/data/{element_id}",
                "platform": f"{self.platform_url}/data/{element_id}",
            },
            "size": spec.size,
            "contentHash": None,
            "locked": self.process_ended,
            "refs": [],
            "isRead": True,
            "tags": [],
            "fileScanResult": spec.file_scan_result,
            "created": created,
            "createdBy": self.party_id,
            "lastChanged": created,
            "lastChangedBy": self.party_id,
        }

    def element(self, element_id: str) -> dict[str, Any]:
        """The served JSON dict of a data element (KeyError when unknown)."""
        for element in self.elements:
            if element["id"] == element_id:
                return element
        raise KeyError(element_id)

    def iter_content(self, element_id: str) -> Iterator[memoryview]:
        """The element's body, generated chunk by chunk."""
        spec = self._specs[element_id]
        return iter_content(self._seeds[element_id], spec.size)

    def expected_sha256(self, element_id: str) -> str:
        """Hex SHA-256 of the element's body, computed by regenerating it (cached)."""
        digest = self._sha256.get(element_id)
        if digest is None:
            h = hashlib.sha256()
            for chunk in self.iter_content(element_id):
                h.update(chunk)
            digest = self._sha256[element_id] = h.hexdigest()
        return digest

    def expected_bytes(self, element_id: str) -> bytes:
        """The element's whole body; only for small elements (up to 64 MiB)."""
        if self._specs[element_id].size > _MAX_EXPECTED_BYTES:
            raise ValueError("element too large for expected_bytes; use expected_sha256")
        return b"".join(bytes(c) for c in self.iter_content(element_id))

    def _mark_ended(self) -> None:
        if self.process_ended and self._ended_at is None:
            self._ended_at = time.time()

    def to_json(self, *, omit_nulls: bool = False) -> dict[str, Any]:
        """The instance as Altinn serves it (app API shape; ``omit_nulls`` gives the storage API shape)."""
        self._mark_ended()
        created = _iso(self.created)
        if self.process_ended:
            ended = _iso(self._ended_at or self.created)
            process: dict[str, Any] = {"started": created, "startEvent": "StartEvent_1", "currentTask": None, "ended": ended, "endEvent": "EndEvent_1"}
        else:
            ended = None
            task = {
                "flow": 2,
                "started": created,
                "elementId": "Task_1",
                "name": "Utfylling",
                "altinnTaskType": "data",
                "flowType": "CompleteCurrentMoveToNext",
            }
            process = {"started": created, "startEvent": "StartEvent_1", "currentTask": task}
        confirmations = [{"stakeholderId": s, "confirmedOn": self._confirmed_on.get(s, created)} for s in self.confirmed_by]
        doc = {
            "id": self.id,
            "instanceOwner": dict(self.instance_owner),
            "appId": f"{self.org}/{self.app}",
            "org": self.org,
            "selfLinks": {"apps": self.app_url, "platform": self.platform_url},
            "dueBefore": None,
            "visibleAfter": created,
            "process": process,
            "status": {
                "isArchived": self.process_ended,
                "archived": ended,
                "isSoftDeleted": False,
                "softDeleted": None,
                "isHardDeleted": self.hard_deleted,
                "hardDeleted": _iso(self.last_changed) if self.hard_deleted else None,
                "readStatus": "Read",
                "substatus": None,
            },
            "completeConfirmations": confirmations or None,
            "data": copy.deepcopy(self.elements),
            "created": created,
            "createdBy": self.party_id,
            "lastChanged": _iso(self.last_changed),
            "lastChangedBy": self.party_id,
        }
        return _drop_nulls(doc) if omit_nulls else doc

    def __repr__(self) -> str:
        return f"SimInstance({self.org}/{self.app} {self.id}, {len(self.elements)} elements)"


@dataclass
class _Client:
    client_id: str
    org: str
    scopes: frozenset[str]
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    certificates: list[x509.Certificate] = field(default_factory=list)


@dataclass
class _Token:
    client_id: str
    org: str | None
    scope: str
    expires: float
    revoked: bool = False

    def valid(self) -> bool:
        return not self.revoked and time.time() < self.expires

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope.split()


@dataclass
class _Fault:
    endpoint: str
    status: int | None
    delay: float | None
    truncate_at: int | None
    reset_after: int | None
    retry_after: int | None
    body: bytes | None
    remaining: int
    match: str | None
    probability: float | None
    rng: random.Random | None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k in ("status", "delay", "truncate_at", "reset_after") if (v := getattr(self, k)) is not None]
        return " ".join(parts)


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Iterator[memoryview] | None = None
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

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise _Reply(_problem(400, "body is not JSON")) from None


def _json(status: int, doc: Any, content_type: str = "application/json; charset=utf-8") -> _Response:
    return _Response(status, json.dumps(doc).encode(), content_type)


def _problem(status: int, detail: str) -> _Response:
    titles = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}
    doc = {"type": "about:blank", "title": titles.get(status, "Error"), "status": status, "detail": detail}
    return _json(status, doc, "application/problem+json; charset=utf-8")


def _empty(status: int) -> _Response:
    return _Response(status)


_ALTINN_KEY_LOCK = threading.Lock()
_ALTINN_KEY: list[rsa.RSAPrivateKey] = []


def generate_client_key() -> tuple[str, str]:
    """A fresh RSA key pair for a simulated Maskinporten client: ``(private PEM, public PEM)``.

    Made at run time: no key material is ever committed.
    """
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _altinn_signing_key() -> rsa.RSAPrivateKey:
    """The key Altinn tokens are signed with: one per process, made on first use."""
    with _ALTINN_KEY_LOCK:
        if not _ALTINN_KEY:
            _ALTINN_KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _ALTINN_KEY[0]


def _load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            key = x509.load_pem_x509_certificate(data).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("only RSA keys are supported (RS256/RS384/RS512)")
    return key


def _decode_token_param(token: str) -> int:
    try:
        doc = json.loads(base64.b64decode(token, validate=True))
        return int(doc["after"])
    except (ValueError, KeyError, TypeError):
        raise _Reply(_problem(400, "invalid continuationToken")) from None


def _bool_param(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _Reply(_problem(400, f"{name} must be true or false"))


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: Simulator

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
            parts = []
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
        status = 0
        logged = False
        fault: _Fault | None = None
        route = sim._route(self.command, path)
        endpoint = route[0] if route else "other"
        sim._count(endpoint)
        try:
            try:
                body = self._read_body()
            except ValueError:
                body = None
            if body is None:
                self.close_connection = True
                response = _problem(413, "request body too large or malformed")
            else:
                fault = sim._take_fault(endpoint, self.path) if route else None
                request = _Request(self.command, path, self.path, parse_qs(split.query, keep_blank_values=True), self.headers, body)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    response = sim._fault_response(fault)
                elif route is None:
                    response = _problem(404, "no such route")
                else:
                    try:
                        response = route[1](request, *route[2])
                    except _Reply as reply:
                        response = reply.response
                    except Exception:
                        traceback.print_exc()
                        response = _problem(500, "simulator error")
            status = response.status
            cut = None
            if fault is not None and fault.truncate_at is not None:
                cut = ("truncate", fault.truncate_at)
            elif fault is not None and fault.reset_after is not None:
                cut = ("reset", fault.reset_after)
            # Logged before the answer goes out, so a client that has its answer also sees the entry.
            sim._log_request(self.command, split.path, endpoint, status, started, fault)
            logged = True
            self._write(response, cut)
        except OSError:
            self.close_connection = True
        finally:
            if not logged:
                sim._log_request(self.command, split.path, endpoint, status, started, fault)

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


# --------------------------------------------------------------------------------------------
# The simulator


_Route = tuple[str, Callable[..., _Response], tuple[str, ...]]


class Simulator:
    """Altinn platform, app hosts and Maskinporten on one local base URL; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        maskinporten_token_lifetime: float = 599,
        altinn_token_lifetime: float = 1800,
        quote_exchange_token: bool = False,
    ) -> None:
        self.maskinporten_token_lifetime = maskinporten_token_lifetime
        self.altinn_token_lifetime = altinn_token_lifetime
        self.quote_exchange_token = quote_exchange_token
        self.verbose = False
        self._lock = threading.RLock()
        self._server = _Server((host, port), _Handler)
        self._server.sim = self
        bound_host, bound_port = self._server.server_address[:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        self.url: str = f"http://{shown}:{bound_port}"
        self.maskinporten_issuer: str = self.url + "/maskinporten/"
        self.token_endpoint: str = self.maskinporten_issuer + "token"
        self._thread: threading.Thread | None = None
        self._background: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._clients: dict[str, _Client] = {}
        self._seen_jti: set[str] = set()
        self._mp_tokens: dict[str, _Token] = {}
        self._altinn_tokens: dict[str, _Token] = {}
        self._faults: list[_Fault] = []
        self._seq = 0
        self._next_party = 50_000_000
        self._next_subscription = 1
        self.instances: dict[str, SimInstance] = {}
        self._element_owner: dict[str, SimInstance] = {}
        self.subscriptions: dict[int, dict[str, Any]] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.grants = 0
        self.exchanges = 0
        self.connections = 0
        self.rejected_grants: list[str] = []
        self.confirmations: list[tuple[str, float]] = []
        self.complete_violations: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.on_complete: Callable[[SimInstance], None] | None = None

    # ---- lifecycle

    def start(self) -> Simulator:
        """Serve in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"simulator-{self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
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

    # ---- set-up API

    def register_client(
        self,
        client_id: str,
        *,
        public_key_pem: bytes | str | None = None,
        kid: str | None = None,
        certificate_pem: bytes | str | None = None,
        scopes: str = DEFAULT_SCOPES,
        org: str = "ttd",
    ) -> None:
        """Register (or extend) a Maskinporten client: a key under ``kid`` and/or a certificate for ``x5c``."""
        if public_key_pem is None and certificate_pem is None:
            raise ValueError("give public_key_pem (with kid) and/or certificate_pem")
        if public_key_pem is not None and not kid:
            raise ValueError("a public key is registered under a kid; give kid")
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                client = self._clients[client_id] = _Client(client_id, org, frozenset(scopes.split()))
            client.org = org
            client.scopes = frozenset(scopes.split())
            if public_key_pem is not None and kid:
                client.keys[kid] = _load_public_key(public_key_pem)
            if certificate_pem is not None:
                data = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
                leaf = x509.load_pem_x509_certificates(data)[0]
                if not isinstance(leaf.public_key(), rsa.RSAPublicKey):
                    raise ValueError("only RSA certificates are supported")
                client.certificates.append(leaf)

    def add_instance(
        self,
        org: str,
        app: str,
        elements: list[ElementSpec] | None = None,
        *,
        party_id: str | None = None,
        instance_guid: str | None = None,
        process_ended: bool = True,
        confirmed_by: list[str] | None = None,
        hard_deleted: bool = False,
    ) -> SimInstance:
        """Create an instance (default: one 400-byte XML model element)."""
        specs = list(elements) if elements is not None else [ElementSpec()]
        with self._lock:
            if party_id is None:
                self._next_party += 1
                party_id = str(self._next_party)
            if not str(party_id).isdigit():
                raise ValueError("party_id must be digits")
            guid = str(uuid.UUID(instance_guid)) if instance_guid else str(uuid.uuid4())
            inst = SimInstance(
                self.url, org, app, str(party_id), guid, specs, process_ended=process_ended, confirmed_by=confirmed_by or [], hard_deleted=hard_deleted
            )
            if inst.id in self.instances:
                raise ValueError(f"instance {inst.id} exists")
            self._seq += 1
            inst._seq = self._seq
            self.instances[inst.id] = inst
            self._element_owner.update((element["id"], inst) for element in inst.elements)
        return inst

    def _resolve(self, inst_or_id: SimInstance | str) -> SimInstance:
        key = inst_or_id.id if isinstance(inst_or_id, SimInstance) else str(inst_or_id).lower()
        with self._lock:
            return self.instances[key]

    def expected_sha256(self, element_id: str) -> str:
        """Hex SHA-256 of any element this simulator made (shortcut for ``SimInstance.expected_sha256``)."""
        return self._element_owner[element_id].expected_sha256(element_id)

    def expected_bytes(self, element_id: str) -> bytes:
        """The body of any small element this simulator made (shortcut for ``SimInstance.expected_bytes``)."""
        return self._element_owner[element_id].expected_bytes(element_id)

    def remove_instance(self, inst_or_id: SimInstance | str) -> None:
        """Forget an instance: every later request for it gets 404."""
        inst = self._resolve(inst_or_id)
        with self._lock:
            self.instances.pop(inst.id, None)
            inst.removed = True

    def set_scan_result(self, inst: SimInstance | str, element_id: str, result: str) -> None:
        """Change an element's ``fileScanResult`` (NotApplicable, Pending, Clean, Infected)."""
        with self._lock:
            self._resolve(inst).element(element_id)["fileScanResult"] = result

    def add_fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        delay: float | None = None,
        truncate_at: int | None = None,
        reset_after: int | None = None,
        retry_after: int | None = None,
        body: bytes | str | None = None,
        times: int = 1,
        match: str | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Inject a fault on an endpoint for ``times`` requests, or persistently with ``probability``."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {sorted(ENDPOINTS)}")
        if status is None and delay is None and truncate_at is None and reset_after is None:
            raise ValueError("a fault needs status, delay, truncate_at or reset_after")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = _Fault(
            endpoint=endpoint,
            status=status,
            delay=delay,
            truncate_at=truncate_at,
            reset_after=reset_after,
            retry_after=retry_after,
            body=body.encode() if isinstance(body, str) else body,
            remaining=times,
            match=match,
            probability=probability,
            rng=random.Random(seed) if probability is not None else None,
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_altinn_tokens(self) -> None:
        """Every Altinn token issued so far is rejected from now on (401)."""
        with self._lock:
            for token in self._altinn_tokens.values():
                token.revoked = True

    def expire_maskinporten_tokens(self) -> None:
        """Every Maskinporten token issued so far is rejected by the exchange from now on (401)."""
        with self._lock:
            for token in self._mp_tokens.values():
                token.revoked = True

    def reset_counters(self) -> None:
        """Clear calls, grants, exchanges, rejections, confirmations, violations and the request log."""
        with self._lock:
            self.calls.clear()
            self.grants = 0
            self.exchanges = 0
            self.rejected_grants.clear()
            self.confirmations.clear()
            self.complete_violations.clear()
            self.requests.clear()

    # ---- events

    def cloud_event(self, inst: SimInstance, type: str = "app.instance.process.completed") -> dict[str, Any]:
        """The CloudEvent Altinn would push for ``inst`` (fresh id each call)."""
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "time": _iso(time.time()),
            "type": type,
            "source": inst.app_url,
            "resource": f"urn:altinn:resource:app_{inst.org}_{inst.app}",
            "resourceinstance": inst.id,
            "subject": f"/party/{inst.party_id}",
        }
        owner = inst.instance_owner
        if owner.get("organisationNumber"):
            event["alternativesubject"] = f"/org/{owner['organisationNumber']}"
        elif owner.get("personNumber"):
            event["alternativesubject"] = f"/person/{owner['personNumber']}"
        return event

    def publish(
        self,
        inst: SimInstance,
        type: str = "app.instance.process.completed",
        *,
        event: dict[str, Any] | None = None,
        timeout: float = 45.0,
    ) -> list[tuple[str, int]]:
        """POST the event (or ``event``) to every matching validated subscription; (endpoint, status), 0 = no answer."""
        ev = event if event is not None else self.cloud_event(inst, type)
        with self._lock:
            targets = [s["endPoint"] for s in self.subscriptions.values() if s.get("validated") and _subscription_matches(s, ev)]
        return [(endpoint, _post_json(endpoint, ev, timeout)) for endpoint in targets]

    # ---- internals used by the handler

    def _count(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def _log_request(self, method: str, path: str, endpoint: str, status: int, started: float, fault: _Fault | None) -> None:
        entry = {"method": method, "path": path, "endpoint": endpoint, "status": status, "time": started, "fault": fault.describe() if fault else None}
        with self._lock:
            self.requests.append(entry)

    def _take_fault(self, endpoint: str, target: str) -> _Fault | None:
        with self._lock:
            for fault in list(self._faults):
                if fault.endpoint != endpoint or (fault.match is not None and fault.match not in target):
                    continue
                if fault.rng is not None and fault.probability is not None:
                    if fault.rng.random() < fault.probability:
                        return fault
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault) -> _Response:
        status = fault.status or 500
        headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
        if fault.body is not None:
            is_json = fault.body.lstrip()[:1] in (b"{", b"[")
            content_type = "application/json; charset=utf-8" if is_json else "text/plain; charset=utf-8"
            return _Response(status, fault.body, content_type, headers)
        if fault.endpoint == "token":
            error = "temporarily_unavailable" if status in (429, 503) else "server_error" if status >= 500 else "invalid_request"
            response = _json(status, {"error": error, "error_description": "simulated fault"})
            response.headers = headers
            return response
        return _Response(status, headers=headers)

    def _route(self, method: str, path: str) -> _Route | None:
        parts = path.strip("/").split("/")
        n = len(parts)
        if path == "/maskinporten/token":
            return ("token", self._token, ()) if method == "POST" else None
        if path == "/authentication/api/v1/exchange/maskinporten":
            return ("exchange", self._exchange, ()) if method == "GET" else None
        if parts[:4] == ["storage", "api", "v1", "instances"]:
            if n == 4 and method == "GET":
                return ("query", self._query, ())
            if n == 6 and method == "GET":
                return ("instance", self._get_instance, (parts[4], parts[5]))
            if n == 7 and parts[6] == "complete" and method == "POST":
                return ("complete", self._complete, (parts[4], parts[5]))
            if n == 8 and parts[6] == "data" and method == "GET":
                return ("data", self._get_data, (parts[4], parts[5], parts[7]))
            return None
        if parts[:4] == ["events", "api", "v1", "subscriptions"]:
            if n == 4 and method == "POST":
                return ("subscriptions", self._create_subscription, ())
            if n == 4 and method == "GET":
                return ("subscriptions", self._list_subscriptions, ())
            if n == 5 and method in ("GET", "DELETE"):
                return ("subscriptions", self._one_subscription, (parts[4],))
            return None
        if n >= 5 and parts[2] == "instances":
            org, app, party, guid = parts[0], parts[1], parts[3], parts[4]
            if n == 5 and method == "GET":
                return ("instance", self._get_instance, (party, guid, org, app))
            if n == 6 and parts[5] == "complete" and method == "POST":
                return ("complete", self._complete, (party, guid, org, app))
            if n == 7 and parts[5] == "data" and method == "GET":
                return ("data", self._get_data, (party, guid, parts[6], org, app))
        return None

    # ---- Maskinporten

    def _token(self, req: _Request) -> _Response:
        def reject(error: str, reason: str) -> _Reply:
            with self._lock:
                self.rejected_grants.append(reason)
            response = _json(400, {"error": error, "error_description": reason})
            response.headers = [("Cache-Control", "no-store")]
            return _Reply(response)

        if "application/x-www-form-urlencoded" not in req.headers.get("Content-Type", "").lower():
            raise reject("invalid_request", "content type must be application/x-www-form-urlencoded")
        form = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        if form.get("grant_type", [""])[0] != JWT_BEARER:
            raise reject("invalid_request", f"grant_type must be {JWT_BEARER}")
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            raise reject("invalid_request", "assertion missing")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise reject("invalid_grant", f"malformed assertion: {exc}") from None
        alg = header.get("alg")
        if alg not in _GRANT_ALGS:
            raise reject("invalid_grant", f"alg {alg!r} not allowed")
        iss = unverified.get("iss")
        key = self._grant_key(header, iss, reject)
        try:
            jwt.api_jws.decode_complete(assertion, key=key, algorithms=[alg])
        except jwt.PyJWTError as exc:
            raise reject("invalid_grant", f"signature does not verify: {exc}") from None
        claims = unverified
        unknown = sorted(set(claims) - _GRANT_CLAIMS)
        if unknown:
            raise reject("invalid_grant", f"unknown claims: {', '.join(unknown)}")
        if claims.get("aud") != self.maskinporten_issuer:
            raise reject("invalid_grant", f"aud must be {self.maskinporten_issuer!r}, got {claims.get('aud')!r}")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_number(iat) or not _is_number(exp):
            raise reject("invalid_grant", "iat and exp must be numbers")
        if abs(now - iat) > 10:
            raise reject("invalid_grant", f"iat {iat} is not within 10 s of now ({now:.0f})")
        if exp <= now:
            raise reject("invalid_grant", "assertion expired (exp in the past)")
        if exp - iat > 120:
            raise reject("invalid_grant", f"exp - iat = {exp - iat:.0f} s exceeds 120 s")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise reject("invalid_grant", "jti missing")
        resource = claims.get("resource")
        if resource is not None and not (isinstance(resource, str) or (isinstance(resource, list) and all(isinstance(r, str) for r in resource))):
            raise reject("invalid_grant", "resource must be a string or an array of strings")
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            raise reject("invalid_scope", "scope missing")
        with self._lock:
            client = self._clients[iss]
            denied = sorted(set(scope.split()) - client.scopes)
            if denied:
                raise reject("invalid_scope", f"scope not allowed for client: {' '.join(denied)}")
            if jti in self._seen_jti:
                raise reject("invalid_grant", f"jti {jti!r} already used")
            self._seen_jti.add(jti)
            access_token = "mp." + secrets.token_urlsafe(32)
            self._mp_tokens[access_token] = _Token(client.client_id, client.org, " ".join(scope.split()), now + self.maskinporten_token_lifetime)
            self.grants += 1
        doc = {"access_token": access_token, "token_type": "Bearer", "expires_in": self.maskinporten_token_lifetime, "scope": " ".join(scope.split())}
        response = _json(200, doc)
        response.headers = [("Cache-Control", "no-store")]
        return response

    def _grant_key(self, header: dict[str, Any], iss: Any, reject: Callable[[str, str], _Reply]) -> rsa.RSAPublicKey:
        with self._lock:
            clients = list(self._clients.values())
        if "x5c" in header:
            chain = header["x5c"]
            if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
                raise reject("invalid_grant", "x5c must be a non-empty JSON array of base64 certificates")
            try:
                leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
            except ValueError:
                raise reject("invalid_grant", "x5c leaf is not a base64 DER certificate") from None
            owners = [c for c in clients if any(cert == leaf for cert in c.certificates)]
            if not owners:
                raise reject("invalid_grant", "x5c certificate is not registered with any client")
            if not any(c.client_id == iss for c in owners):
                raise reject("invalid_grant", f"iss {iss!r} is not the client the certificate is registered to")
            now = datetime.now(UTC)
            if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
                raise reject("invalid_grant", "x5c certificate is not valid now")
            key = leaf.public_key()
            assert isinstance(key, rsa.RSAPublicKey)
            return key
        kid = header.get("kid")
        if not kid:
            raise reject("invalid_grant", "assertion header has neither kid nor x5c")
        owners = [c for c in clients if kid in c.keys]
        if not owners:
            raise reject("invalid_grant", f"unknown kid {kid!r}")
        for client in owners:
            if client.client_id == iss:
                return client.keys[kid]
        raise reject("invalid_grant", f"iss {iss!r} is not the client kid {kid!r} is registered to")

    # ---- Altinn authentication

    def _exchange(self, req: _Request) -> _Response:
        bearer = req.bearer()
        with self._lock:
            grant = self._mp_tokens.get(bearer or "")
            if grant is None or not grant.valid():
                return _empty(401)
            now = time.time()
            org = grant.org if "altinn:serviceowner" in grant.scope else None
            claims: dict[str, Any] = {
                "iss": f"{self.url}/authentication/api/v1/openid/",
                "client_id": grant.client_id,
                "scope": grant.scope,
                "iat": int(now),
                "nbf": int(now),
                "exp": int(now + self.altinn_token_lifetime),
                "jti": str(uuid.uuid4()),
            }
            if org:
                claims["org"] = org
                claims["urn:altinn:org"] = org
            token = jwt.encode(claims, _altinn_signing_key(), algorithm="RS256", headers={"kid": "altinn-simulator"})
            self._altinn_tokens[token] = _Token(grant.client_id, org, grant.scope, now + self.altinn_token_lifetime)
            self.exchanges += 1
        body = json.dumps(token) if self.quote_exchange_token else token
        return _Response(200, body.encode(), "text/plain; charset=utf-8")

    def _altinn_token(self, req: _Request) -> _Token:
        with self._lock:
            token = self._altinn_tokens.get(req.bearer() or "")
            if token is None or not token.valid():
                raise _Reply(_empty(401))
            return token

    def _instance_for(self, req: _Request, party: str, guid: str, org: str | None, app: str | None, scope: str) -> SimInstance:
        token = self._altinn_token(req)
        with self._lock:
            inst = self.instances.get(f"{party}/{guid.lower()}")
        if inst is None or (org is not None and (inst.org != org or inst.app != app)):
            raise _Reply(_problem(404, "instance not found"))
        if token.org != inst.org or not token.has_scope(scope):
            raise _Reply(_empty(403))
        return inst

    # ---- instances

    def _get_instance(self, req: _Request, party: str, guid: str, org: str | None = None, app: str | None = None) -> _Response:
        inst = self._instance_for(req, party, guid, org, app, READ_SCOPE)
        with self._lock:
            doc = inst.to_json(omit_nulls=org is None)
        return _json(200, doc)

    def _get_data(self, req: _Request, party: str, guid: str, element_id: str, org: str | None = None, app: str | None = None) -> _Response:
        inst = self._instance_for(req, party, guid, org, app, READ_SCOPE)
        element_id = element_id.lower()
        with self._lock:
            try:
                element = dict(inst.element(element_id))
            except KeyError:
                raise _Reply(_problem(404, "data element not found")) from None
            size = inst._specs[element_id].size
        headers = [("Content-Disposition", _content_disposition(element["filename"]))] if element.get("filename") else []
        return _Response(
            200, content_type=element.get("contentType") or "application/octet-stream", headers=headers, stream=inst.iter_content(element_id), length=size
        )

    def _complete(self, req: _Request, party: str, guid: str, org: str | None = None, app: str | None = None) -> _Response:
        inst = self._instance_for(req, party, guid, org, app, WRITE_SCOPE)
        stakeholder = inst.org
        with self._lock:
            if not inst.process_ended:
                return _problem(409, "the process has not ended")
        callback = self.on_complete
        if callback is not None:
            try:
                callback(inst)
            except Exception as exc:
                with self._lock:
                    self.complete_violations.append(str(exc) or repr(exc))
        now = time.time()
        with self._lock:
            if stakeholder not in inst.confirmed_by:
                inst.confirmed_by.append(stakeholder)
                inst._confirmed_on[stakeholder] = _iso(now)
                inst.last_changed = now
            self.confirmations.append((inst.id, now))
            doc = inst.to_json(omit_nulls=org is None)
        return _json(200, doc)

    def _query(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        org, app_id = req.param("org"), req.param("appId")
        if not org and not app_id:
            return _problem(400, "org or appId is required")
        owner = org or (app_id or "").split("/")[0]
        if token.org != owner or not token.has_scope(READ_SCOPE):
            return _empty(403)
        try:
            size = int(req.param("size") or 100)
        except ValueError:
            return _problem(400, "size must be an integer")
        size = max(1, min(size, 1000))
        continuation = req.param("continuationToken")
        after = _decode_token_param(continuation) if continuation else 0
        is_complete = _bool_param(req.param("process.isComplete"), "process.isComplete")
        hard_deleted = _bool_param(req.param("status.isHardDeleted"), "status.isHardDeleted")
        exclude = req.param("excludeConfirmedBy")
        with self._lock:
            matched = [
                inst
                for inst in sorted(self.instances.values(), key=lambda i: i._seq)
                if inst._seq > after
                and (not org or inst.org == org)
                and (not app_id or f"{inst.org}/{inst.app}" == app_id)
                and (is_complete is None or inst.process_ended == is_complete)
                and (hard_deleted is None or inst.hard_deleted == hard_deleted)
                and (not exclude or exclude not in inst.confirmed_by)
            ]
            page = matched[:size]
            docs = [inst.to_json(omit_nulls=True) for inst in page]
        next_url = None
        if len(page) == size and len(matched) > size:
            params = [(k, v) for k, v in parse_qsl(urlsplit(req.target).query, keep_blank_values=True) if k != "continuationToken"]
            params.append(("continuationToken", base64.b64encode(json.dumps({"after": page[-1]._seq}).encode()).decode()))
            next_url = f"{self.url}{req.path}?{urlencode(params)}"
        return _json(200, {"count": len(docs), "self": f"{self.url}{req.target}", "next": next_url, "instances": docs})

    # ---- subscriptions

    def _create_subscription(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        if not token.org:
            return _empty(403)
        body = req.json()
        if not isinstance(body, dict):
            return _problem(400, "body must be a JSON object")
        endpoint = body.get("endPoint")
        if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc:
            return _problem(400, "endPoint must be an absolute http(s) URL")
        source_filter = body.get("sourceFilter")
        resource_filter = body.get("resourceFilter")
        if source_filter is not None:
            if not isinstance(source_filter, str) or not re.fullmatch(r"/[^/]+/[^/]+", urlsplit(source_filter).path):
                return _problem(400, "sourceFilter must be an absolute URL with the path /{org}/{app}")
            sf_org, sf_app = urlsplit(source_filter).path.strip("/").split("/")
            if sf_org != token.org:
                return _empty(403)
            resource_filter = resource_filter or f"urn:altinn:resource:app_{sf_org}_{sf_app}"
        consumer = f"/org/{token.org}"
        fields = {
            "endPoint": endpoint,
            "sourceFilter": source_filter,
            "typeFilter": body.get("typeFilter"),
            "resourceFilter": resource_filter,
            "subjectFilter": body.get("subjectFilter"),
            "alternativeSubjectFilter": body.get("alternativeSubjectFilter"),
        }
        with self._lock:
            for existing in self.subscriptions.values():
                if existing["consumer"] == consumer and all(existing.get(k) == v for k, v in fields.items()):
                    return self._subscription_response(201, existing)
            sub_id = self._next_subscription
            self._next_subscription += 1
            sub = {"id": sub_id, **fields, "consumer": consumer, "createdBy": consumer, "created": _iso(time.time()), "validated": False}
            self.subscriptions[sub_id] = sub
            response = self._subscription_response(201, sub)
            thread = threading.Thread(target=self._validate_subscription, args=(sub_id,), name=f"validate-subscription-{sub_id}", daemon=True)
            self._background = [t for t in self._background if t.is_alive()] + [thread]
        thread.start()
        response.headers.append(("Location", f"{self.url}/events/api/v1/subscriptions/{sub_id}"))
        return response

    def _subscription_response(self, status: int, sub: dict[str, Any]) -> _Response:
        return _json(status, _drop_nulls(dict(sub)))

    def _validate_subscription(self, sub_id: int) -> None:
        with self._lock:
            sub = self.subscriptions.get(sub_id)
            endpoint = sub["endPoint"] if sub else None
        if endpoint is None:
            return
        event = {
            "id": str(uuid.uuid4()),
            "source": f"{self.url}/events/api/v1/subscriptions/{sub_id}",
            "type": "platform.events.validatesubscription",
            "specversion": "1.0",
        }
        status = _post_json(endpoint, event, 30.0)
        if 200 <= status < 300:
            with self._lock:
                if sub_id in self.subscriptions:
                    self.subscriptions[sub_id]["validated"] = True

    def _list_subscriptions(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        consumer = f"/org/{token.org}"
        with self._lock:
            subs = [_drop_nulls(dict(s)) for s in self.subscriptions.values() if s["consumer"] == consumer]
        return _json(200, {"count": len(subs), "subscriptions": subs})

    def _one_subscription(self, req: _Request, raw_id: str) -> _Response:
        token = self._altinn_token(req)
        if not raw_id.isdigit():
            return _problem(404, "subscription not found")
        with self._lock:
            sub = self.subscriptions.get(int(raw_id))
            if sub is None:
                return _problem(404, "subscription not found")
            if sub["consumer"] != f"/org/{token.org}":
                return _empty(403)
            if req.method == "DELETE":
                del self.subscriptions[int(raw_id)]
                return _empty(200)
            return self._subscription_response(200, sub)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _subscription_matches(sub: dict[str, Any], event: dict[str, Any]) -> bool:
    source = str(event.get("source", ""))
    source_filter = sub.get("sourceFilter")
    if source_filter and not (source == source_filter or source.startswith(source_filter.rstrip("/") + "/")):
        return False
    checks = (("typeFilter", "type"), ("resourceFilter", "resource"), ("subjectFilter", "subject"), ("alternativeSubjectFilter", "alternativesubject"))
    return all(not sub.get(f) or sub.get(f) == event.get(attr) for f, attr in checks)


def _post_json(url: str, payload: dict[str, Any], timeout: float) -> int:
    """POST a CloudEvent as Altinn does; the status, or 0 when there was no answer."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except (OSError, ValueError):
        return 0


# --------------------------------------------------------------------------------------------
# By hand


def main(argv: list[str] | None = None) -> int:
    """Run a simulator with a demo instance until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devtools.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client-id", help="Maskinporten client id to register")
    parser.add_argument("--public-key", metavar="PEMFILE", help="the client's public key (or private key, or certificate) PEM")
    parser.add_argument("--kid", help="key id for --public-key (default: the client id)")
    parser.add_argument("--certificate", metavar="PEMFILE", help="the client's certificate (for x5c grants)")
    parser.add_argument("--org", default="ttd")
    parser.add_argument("--app", default="demo-app")
    parser.add_argument("--no-demo", action="store_true", help="do not seed a demo instance")
    parser.add_argument("--quote-exchange-token", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    sim = Simulator(host=args.host, port=args.port, quote_exchange_token=args.quote_exchange_token)
    sim.verbose = args.verbose
    kid = None
    if args.client_id and (args.public_key or args.certificate):
        kid = (args.kid or args.client_id) if args.public_key else None
        public_key = open(args.public_key, "rb").read() if args.public_key else None
        certificate = open(args.certificate, "rb").read() if args.certificate else None
        sim.register_client(args.client_id, public_key_pem=public_key, kid=kid, certificate_pem=certificate, org=args.org)
    elif args.client_id or args.public_key or args.certificate:
        parser.error("--client-id needs --public-key and/or --certificate (and the other way round)")
    stop = threading.Event()

    def interrupt(signum: int, frame: Any) -> None:
        stop.set()

    # Explicit handlers: a parent (a background job, a test runner) may have left SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    if not args.no_demo:
        inst = sim.add_instance(
            args.org,
            args.app,
            [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 3 * _BLOCK + 123, "Søknad – vedlegg.pdf", "Clean")],
        )
    sim.start()
    try:
        print(f"Altinn + Maskinporten simulator at {sim.url}")
        print(f"  ALTINN_PLATFORM_URL={sim.url}")
        print(f"  ALTINN_APPS_URL={sim.url}")
        print(f"  MASKINPORTEN_URL={sim.maskinporten_issuer}")
        print(f"  token endpoint: {sim.token_endpoint}")
        if args.client_id:
            print(f"  MASKINPORTEN_CLIENT_ID={args.client_id}" + (f"  MASKINPORTEN_KID={kid}" if kid else ""))
        else:
            print("  (no Maskinporten client registered: give --client-id and --public-key PEMFILE)")
        if not args.no_demo:
            print(f"  demo instance: {inst.app_url}")
            print(f"  demo event: {json.dumps(sim.cloud_event(inst))}")
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
