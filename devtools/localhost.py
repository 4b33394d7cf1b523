"""Run an ``azure.functions.FunctionApp`` locally, against Azurite, with the host's semantics.

Azure Functions Core Tools cannot run here, so ``LocalHost`` plays the Functions host for the
Python v2 programming model. Everything it needs comes from the ``FunctionApp`` object
(``app.get_functions()``: names, triggers, bindings, auth levels) and from ``host.json``, so no
binding name is written twice.

What it reproduces:

* HTTP triggers on ``/{routePrefix}/{route}`` (``extensions.http.routePrefix``, default ``api``),
  route templates (``{id}``, ``{id?}``, ``{id:int}``, ``{*rest}``), allowed methods (anything else
  is 404, like the host), function keys for the ``function`` and ``admin`` levels (``?code=`` or
  ``x-functions-key``, else 401), an exception in the function -> 500 with an empty body.
  A function returning ``None`` answers 204.
* Queue triggers (``extensions.queues``): ``batchSize`` (default 16) worker threads per function,
  messages received with a 10 minute lease that is renewed at half time while the function runs,
  ``messageEncoding`` (``base64`` default, or ``none``), ``maxDequeueCount`` (default 5),
  ``visibilityTimeout`` between retries (default 00:00:00), the ``{queue}-poison`` queue (same
  content as the original), a message whose dequeue count is already above the maximum or that
  is not valid base64 goes to poison without an invocation. Trigger and poison queues are created
  at start.
* Queue output bindings (``func.Out`` parameters or ``$return``), written with the same message
  encoding after the function returns; a failed write fails the invocation (-> 500 for HTTP).
* Timer triggers: ``run_timer(name)`` invokes one now. With ``run_timers=True`` they are
  scheduled: ``%NAME%`` is resolved from the environment, six-field NCRONTAB expressions
  (``sec min hour day month day-of-week``; ``*``, lists, ranges, steps and month/day names) in
  UTC, or a ``hh:mm:ss`` TimeSpan meaning "every ...". ``runOnStartup`` is honoured.
* A ``context`` parameter gets a ``func.Context``; ``async def`` functions are run to completion.

What differs: one storage connection string serves every binding (``connection`` names are not
looked up); queues are polled every ``poll_interval`` seconds instead of with the host's
exponential back-off; bindings other than HTTP, queue and timer are refused at construction.

``python -m devtools.localhost --app function_app:app --port 7071`` runs an app until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import calendar
import contextlib
import copy
import datetime as dt
import hmac
import importlib
import inspect
import json
import logging
import os
import queue as queue_mod
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import azure.functions as func
import requests
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.functions import _abc as func_abc
from azure.functions.queue import QueueMessage as TriggerQueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = ["HostSettings", "LocalHost", "parse_timespan"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST_JSON = REPO_ROOT / "host.json"

_MAX_RECEIVE = 32  # Storage queues hand out at most 32 messages per request
# The Functions host refuses larger HTTP request bodies with 413 (its default maxRequestBodySize).
MAX_REQUEST_BODY = 100 * 1024 * 1024


# -- host.json ------------------------------------------------------------------------------


def parse_timespan(value: str | int | float) -> float:
    """Seconds in a .NET TimeSpan string: ``hh:mm:ss``, ``hh:mm:ss.fff`` or ``d.hh:mm:ss``."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d+)?)?\s*", str(value))
    if not match:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {value!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0) + float(fraction or 0)


def _get(section: Mapping[str, Any], key: str, default: Any) -> Any:
    """Case-insensitive lookup, as the host's configuration does."""
    for name, value in section.items():
        if name.lower() == key.lower():
            return value
    return default


@dataclass(frozen=True)
class HostSettings:
    """The parts of host.json that LocalHost honours, with the host's defaults."""

    route_prefix: str = "api"
    batch_size: int = 16
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, path: str | Path | None) -> HostSettings:
        """Read ``path``; a missing file gives Azure's defaults."""
        if path is None or not Path(path).exists():
            return cls()
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        extensions = _get(data, "extensions", {}) or {}
        queues = _get(extensions, "queues", {}) or {}
        http = _get(extensions, "http", {}) or {}
        encoding = str(_get(queues, "messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"{path}: messageEncoding must be base64 or none, not {encoding!r}")
        return cls(
            route_prefix=str(_get(http, "routePrefix", "api")).strip("/"),
            batch_size=int(_get(queues, "batchSize", 16)),
            max_dequeue_count=int(_get(queues, "maxDequeueCount", 5)),
            visibility_timeout=parse_timespan(_get(queues, "visibilityTimeout", "00:00:00")),
            message_encoding=encoding,
        )


# -- function model -------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Enum members (HttpMethod.POST, AuthLevel.FUNCTION) to their plain value."""
    return getattr(value, "value", value)


def _resolve_setting(value: str) -> str:
    """Replace ``%NAME%`` by the environment variable NAME, as the host does."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"app setting {name} is not set (used as %{name}%)")
        return os.environ[name]

    return re.sub(r"%([^%]+)%", lookup, value)


@dataclass
class _Route:
    pattern: re.Pattern[str]
    params: list[str]
    template: str
    specificity: tuple[int, int, int]


def _compile_route(template: str) -> _Route:
    """An ASP.NET-style route template as a regular expression (case-insensitive)."""
    template = template.strip("/")
    params: list[str] = []
    regex = ""
    literal_chars = optional_or_catchall = 0
    position = 0
    for match in re.finditer(r"\{([^{}]+)\}", template):
        literal = template[position : match.start()]
        literal_chars += len(literal)
        spec = match.group(1)
        catch_all = spec.startswith("*")
        spec = spec.lstrip("*")
        optional = spec.endswith("?") or "=" in spec
        spec = spec.rstrip("?").split("=", 1)[0]
        name, _, constraint = spec.partition(":")
        constraint = constraint.split(":")[0].split("(")[0].lower()
        group = f"p{len(params)}"
        params.append(name)
        if catch_all:
            body = ".*"
        else:
            body = {
                "int": r"-?\d+",
                "long": r"-?\d+",
                "bool": r"(?:true|false)",
                "alpha": r"[A-Za-z]+",
                "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
            }.get(constraint, r"[^/]+")
        if (optional or catch_all) and literal.endswith("/"):
            regex += re.escape(literal[:-1]) + f"(?:/(?P<{group}>{body}))?"
        else:
            regex += re.escape(literal) + f"(?P<{group}>{body})" + ("?" if optional else "")
        optional_or_catchall += optional or catch_all
        position = match.end()
    regex += re.escape(template[position:])
    literal_chars += len(template) - position
    return _Route(
        pattern=re.compile(regex, re.IGNORECASE),
        params=params,
        template=template,
        specificity=(optional_or_catchall, len(params), -literal_chars),
    )


@dataclass
class _Function:
    name: str
    user_function: Callable[..., Any]
    trigger: dict[str, Any]
    outputs: list[dict[str, Any]]  # output bindings with a parameter (func.Out)
    return_binding: dict[str, Any] | None  # "$return"
    wants_context: bool
    # HTTP
    route: _Route | None = None
    methods: frozenset[str] | None = None  # None: any
    auth_level: str = "function"
    # queue trigger
    queue_name: str = ""

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def arg_name(self) -> str:
        return str(self.trigger["name"])


_OUTPUT_TYPES = {"queue", "http"}


def _load_functions(app: func.FunctionApp) -> list[_Function]:
    # FunctionApp.get_functions() (azure-functions 1.26) refuses a second call: it remembers
    # the names it validated and reports them as duplicates. Let it validate from scratch and
    # leave the app as we found it, so that several LocalHosts (or the real worker) can index it.
    saved = getattr(app, "functions_bindings", None)
    app.functions_bindings = None
    try:
        functions = app.get_functions()
    finally:
        app.functions_bindings = saved
    default_auth = str(_plain(app.auth_level)).lower()

    loaded: list[_Function] = []
    for f in functions:
        name = f.get_function_name()
        user_function = f.get_user_function()
        trigger = f.get_trigger()
        if name is None or trigger is None:
            raise ValueError(f"function {user_function!r} has no name or no trigger")
        trigger_dict = {k: _plain(v) for k, v in trigger.get_dict_repr().items()}
        outputs: list[dict[str, Any]] = []
        return_binding = None
        for binding in f.get_bindings():
            b = {k: _plain(v) for k, v in binding.get_dict_repr().items()}
            if b["name"] == trigger_dict["name"] and b["type"] == trigger_dict["type"]:
                continue
            if b["type"] not in _OUTPUT_TYPES or _plain(b.get("direction")) != 1:
                raise ValueError(
                    f"function {name}: binding {b['name']!r} of type {b['type']!r} is not "
                    "supported by LocalHost (HTTP, queue and timer triggers; queue outputs)"
                )
            if b["name"] == "$return":
                return_binding = b
            else:
                outputs.append(b)

        parameters = inspect.signature(user_function).parameters
        bound = {trigger_dict["name"], *(b["name"] for b in outputs)}
        missing = bound - set(parameters)
        if missing:
            raise ValueError(f"function {name}: bindings {sorted(missing)} have no parameter")
        for pname, param in parameters.items():
            if pname not in bound and pname != "context" and param.default is param.empty:
                raise ValueError(f"function {name}: parameter {pname!r} is not bound")

        fn = _Function(
            name=name,
            user_function=user_function,
            trigger=trigger_dict,
            outputs=outputs,
            return_binding=return_binding,
            wants_context="context" in parameters,
        )
        kind = trigger_dict["type"]
        if kind == "httpTrigger":
            route = trigger_dict.get("route") or name
            fn.route = _compile_route(route)
            methods = trigger_dict.get("methods")
            fn.methods = frozenset(str(_plain(m)).upper() for m in methods) if methods else None
            fn.auth_level = str(trigger_dict.get("authLevel") or default_auth).lower()
        elif kind == "queueTrigger":
            fn.queue_name = _resolve_setting(str(trigger_dict["queueName"]))
        elif kind != "timerTrigger":
            raise ValueError(f"function {name}: trigger type {kind!r} is not supported")
        loaded.append(fn)
    return loaded


class _Out(func.Out):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _Context(func.Context):
    def __init__(self, invocation_id: str, function_name: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._local = threading.local()
        self._local.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(REPO_ROOT)

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


@dataclass
class _Stats:
    invocations: int = 0
    successes: int = 0
    failures: int = 0
    poisoned: int = 0
    exceptions: list[tuple[str, str]] = field(default_factory=list)


# -- timer schedules ------------------------------------------------------------------------

_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {name.upper(): (i + 1) % 7 for i, name in enumerate(calendar.day_abbr)}  # SUN = 0


class _Schedule:
    """A six-field NCRONTAB expression (UTC) or a ``hh:mm:ss`` interval."""

    _RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.interval: float | None = None
        if ":" in expression:
            self.interval = parse_timespan(expression)
            if self.interval <= 0:
                raise ValueError(f"timer interval must be positive: {expression!r}")
            return
        fields = expression.split()
        if len(fields) == 5:
            fields.insert(0, "0")
        if len(fields) != 6:
            raise ValueError(f"NCRONTAB needs 6 fields (sec min hour day month dow): {expression!r}")
        names: list[dict[str, int]] = [{}, {}, {}, {}, _MONTHS, _DAYS]
        sets = [self._parse(f, lo, hi, n) for f, (lo, hi), n in zip(fields, self._RANGES, names, strict=True)]
        sets[5] = {d % 7 for d in sets[5]}  # 7 is Sunday too
        self.seconds, self.minutes, self.hours, self.days, self.months, self.weekdays = sets

    @staticmethod
    def _parse(text: str, lo: int, hi: int, names: Mapping[str, int]) -> set[int]:
        def number(token: str) -> int:
            token = token.upper()
            value = names[token] if token in names else int(token)
            if not lo <= value <= hi:
                raise ValueError(f"{value} outside {lo}-{hi} in {text!r}")
            return value

        result: set[int] = set()
        for part in text.split(","):
            span, _, step_text = part.partition("/")
            step = int(step_text) if step_text else 1
            if step < 1:
                raise ValueError(f"bad step in {text!r}")
            if span == "*":
                start, end = lo, hi
            elif "-" in span:
                first, last = span.split("-", 1)
                start, end = number(first), number(last)
            else:
                start = number(span)
                end = hi if step_text else start
            result.update(range(start, end + 1, step))
        return result

    def next_after(self, now: dt.datetime) -> dt.datetime:
        if self.interval is not None:
            return now + dt.timedelta(seconds=self.interval)
        t = now.replace(microsecond=0) + dt.timedelta(seconds=1)
        for _ in range(100_000):
            if t.month not in self.months:
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
            elif t.day not in self.days or (t.weekday() + 1) % 7 not in self.weekdays:
                t = t.replace(hour=0, minute=0, second=0) + dt.timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + dt.timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + dt.timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += dt.timedelta(seconds=1)
            else:
                return t
        raise ValueError(f"schedule {self.expression!r} never fires")


# -- queue listener -------------------------------------------------------------------------


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class _QueueListener:
    """Receives messages of one queue and runs one function on them, ``concurrency`` at a time."""

    def __init__(self, host: LocalHost, fn: _Function, concurrency: int) -> None:
        self.host = host
        self.fn = fn
        self.queue_name = fn.queue_name
        self.poison_name = f"{fn.queue_name}-poison"
        self.client = host._queue_client(self.queue_name)
        self.poison_client = host._queue_client(self.poison_name)
        self.concurrency = concurrency
        self._cond = threading.Condition()
        self._free = concurrency
        self._leases: dict[str, _Lease] = {}
        self._work: queue_mod.Queue[QueueMessage | None] = queue_mod.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._poller: threading.Thread | None = None
        self._storage_down = False

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._leases)

    def start(self) -> None:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._work_loop, name=f"{self.fn.name}-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._poller = threading.Thread(target=self._poll_loop, name=f"{self.fn.name}-poller", daemon=True)
        self._poller.start()

    def stop(self, deadline: float) -> bool:
        """Stop receiving, let held messages finish. False if the deadline passed first."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._poller is not None:
            self._poller.join(max(0.0, deadline - time.monotonic()))
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in [*self._threads, self._poller] if t is not None)

    # poller

    def _poll_loop(self) -> None:
        host = self.host
        while not self._stopping.is_set():
            self._renew_leases()
            with self._cond:
                if self._free == 0:
                    self._cond.wait(timeout=min(1.0, host.message_lease / 4))
                    continue
                wanted = min(self._free, _MAX_RECEIVE)
            try:
                messages = list(
                    self.client.receive_messages(
                        messages_per_page=wanted,
                        max_messages=wanted,
                        visibility_timeout=host._lease_seconds,
                    )
                )
            except Exception as exc:  # storage unavailable: log once, keep trying
                if not self._storage_down:
                    log.warning("queue %s: cannot receive messages: %s", self.queue_name, exc)
                    self._storage_down = True
                self._stopping.wait(max(host.poll_interval, 0.5))
                continue
            if self._storage_down:
                log.info("queue %s: receiving messages again", self.queue_name)
                self._storage_down = False
            if not messages:
                self._stopping.wait(host.poll_interval)
                continue
            renew_at = time.monotonic() + host.message_lease / 2
            for message in messages:
                with self._cond:
                    self._free -= 1
                    self._leases[message.id] = _Lease(message.id, message.pop_receipt, renew_at)
                self._work.put(message)

    def _renew_leases(self) -> None:
        now = time.monotonic()
        with self._cond:
            due = [lease for lease in self._leases.values() if lease.renew_at <= now]
        for lease in due:
            with lease.lock:
                if lease.done:
                    continue
                try:
                    receipt = self.client.update_message(
                        lease.message_id,
                        pop_receipt=lease.pop_receipt,
                        visibility_timeout=self.host._lease_seconds,
                    )
                except Exception as exc:
                    log.warning("queue %s: cannot renew lease: %s", self.queue_name, exc)
                    lease.renew_at = now + 1.0
                    continue
                lease.pop_receipt = receipt.pop_receipt
                lease.renew_at = now + self.host.message_lease / 2

    # workers

    def _work_loop(self) -> None:
        while True:
            message = self._work.get()
            if message is None:
                return
            try:
                self._process(message)
            except Exception:
                # A failed delete/update/poison write: the message comes back after its lease,
                # as with the real host (at-least-once).
                log.exception("queue %s: cannot settle message %s", self.queue_name, message.id)
            finally:
                with self._cond:
                    self._leases.pop(message.id, None)
                    self._free += 1
                    self._cond.notify_all()

    def _process(self, message: QueueMessage) -> None:
        host, fn = self.host, self.fn
        settings = host.settings
        with self._cond:
            lease = self._leases[message.id]
        dequeue_count = int(message.dequeue_count or 0)
        if dequeue_count > settings.max_dequeue_count:
            log.warning(
                "queue %s: message %s has dequeue count %d > maxDequeueCount %d; moving it to %s without invoking",
                self.queue_name,
                message.id,
                dequeue_count,
                settings.max_dequeue_count,
                self.poison_name,
            )
            self._poison(message, lease)
            return
        body = host._decode(message.content)
        if body is None:
            log.error(
                "queue %s: message %s is not valid base64 (messageEncoding=base64); moving it to %s without invoking",
                self.queue_name,
                message.id,
                self.poison_name,
            )
            self._poison(message, lease)
            return
        trigger_message = TriggerQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        reason = f"New queue message detected on '{self.queue_name}'."
        try:
            host._invoke(fn, {fn.arg_name: trigger_message}, reason)
        except Exception:
            if dequeue_count >= settings.max_dequeue_count:
                log.warning(
                    "queue %s: message %s has reached maxDequeueCount of %d; moving it to %s",
                    self.queue_name,
                    message.id,
                    settings.max_dequeue_count,
                    self.poison_name,
                )
                self._poison(message, lease)
            else:
                with lease.lock:
                    lease.done = True
                    self.client.update_message(
                        message.id,
                        pop_receipt=lease.pop_receipt,
                        visibility_timeout=int(settings.visibility_timeout),
                    )
            return
        with lease.lock:
            lease.done = True
            self.client.delete_message(message.id, lease.pop_receipt)

    def _poison(self, message: QueueMessage, lease: _Lease) -> None:
        with lease.lock:
            lease.done = True
            self.poison_client.send_message(message.content)  # the original content, as is
            self.client.delete_message(message.id, lease.pop_receipt)
        self.host._count(self.fn.name, poisoned=1)


# -- HTTP -----------------------------------------------------------------------------------


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
        status, headers, payload = self.server.host._handle_http(self.command, self.path, self.headers.items(), body)
        self._send(status, headers, payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
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


# -- the host -------------------------------------------------------------------------------


class LocalHost:
    """Runs a FunctionApp's HTTP, queue and timer functions against Azure Storage (Azurite).

    ``stats`` counts, per function, invocations, successes, failures and messages poisoned,
    with the exceptions raised as ``(type name, message)``.
    """

    def __init__(
        self,
        app: func.FunctionApp,
        *,
        connection_string: str,
        host_json: str | Path | None = DEFAULT_HOST_JSON,
        function_key: str | None = None,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        poll_interval: float = 0.05,
        concurrency: int | None = None,
        run_timers: bool = False,
        message_lease: float = 600.0,
        storage_timeout: float = 10.0,
    ) -> None:
        self.settings = HostSettings.from_host_json(host_json)
        self.connection_string = connection_string
        self.poll_interval = poll_interval
        self.concurrency = concurrency if concurrency is not None else self.settings.batch_size
        if self.concurrency < 1:
            raise ValueError("concurrency (batchSize) must be at least 1")
        self.run_timers = run_timers
        self.message_lease = max(1.0, float(message_lease))
        self.storage_timeout = storage_timeout
        self._function_key = function_key or secrets.token_urlsafe(32)
        self._http_host = http_host
        self._http_port = http_port

        self._functions = {fn.name: fn for fn in _load_functions(app)}
        self._http_functions = sorted(
            (fn for fn in self._functions.values() if fn.route is not None),
            key=lambda fn: fn.route.specificity if fn.route else (0, 0, 0),
        )

        self._lock = threading.Lock()
        self._stats: dict[str, _Stats] = {name: _Stats() for name in self._functions}
        self._active = 0
        self._clients: dict[str, QueueClient] = {}
        self._session: requests.Session | None = None
        self._transport: RequestsTransport | None = None
        self._server: _HttpServer | None = None
        self._server_thread: threading.Thread | None = None
        self._listeners: list[_QueueListener] = []
        self._timer_threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._started = False

    # -- public properties ------------------------------------------------------------------

    @property
    def function_key(self) -> str:
        return self._function_key

    @property
    def url(self) -> str:
        """Base URL of the HTTP server, e.g. ``http://127.0.0.1:7071``."""
        if self._server is None:
            raise RuntimeError("LocalHost is not started")
        return f"http://{self._http_host}:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalHost is not started")
        return int(self._server.server_address[1])

    @property
    def function_names(self) -> list[str]:
        return list(self._functions)

    def function_url(self, name: str) -> str:
        """Full URL of HTTP function ``name``, with ``?code=<key>`` unless it is anonymous.

        Route parameters are left as in the template (``{id}``).
        """
        fn = self._functions.get(name)
        if fn is None or fn.route is None:
            raise ValueError(f"no HTTP function named {name!r}")
        prefix = f"/{self.settings.route_prefix}" if self.settings.route_prefix else ""
        url = f"{self.url}{prefix}/{fn.route.template}"
        if fn.auth_level != "anonymous":
            url += f"?code={quote(self._function_key, safe='')}"
        return url

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per function: invocations, successes, failures, poisoned, exceptions (a copy)."""
        with self._lock:
            return {
                name: {
                    "invocations": s.invocations,
                    "successes": s.successes,
                    "failures": s.failures,
                    "poisoned": s.poisoned,
                    "exceptions": copy.copy(s.exceptions),
                }
                for name, s in self._stats.items()
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {name: _Stats() for name in self._functions}

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> LocalHost:
        """Create the trigger and poison queues, start HTTP, queue listeners and timers."""
        if self._started:
            raise RuntimeError("LocalHost is already started")
        schedules: dict[str, _Schedule] = {}
        if self.run_timers:  # settings and expressions checked before anything starts
            for fn in self._functions.values():
                if fn.trigger_type == "timerTrigger":
                    schedules[fn.name] = _Schedule(_resolve_setting(str(fn.trigger["schedule"])))
        self._stopping.clear()
        self._open_storage()
        queue_functions = [fn for fn in self._functions.values() if fn.queue_name]
        try:
            for fn in queue_functions:
                for name in (fn.queue_name, f"{fn.queue_name}-poison"):
                    with contextlib.suppress(ResourceExistsError):
                        self._queue_client(name).create_queue()
        except Exception as exc:
            self._close_storage()
            raise RuntimeError(f"cannot reach queue storage to create queues: {exc}") from exc

        if self._http_functions:
            try:
                server = _HttpServer((self._http_host, self._http_port), _Handler)
            except OSError:
                self._close_storage()
                raise
            server.host = self
            self._server = server
            self._server_thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="localhost-http",
                daemon=True,
            )
            self._server_thread.start()
            log.info("HTTP listening on %s", self.url)

        for fn in queue_functions:
            listener = _QueueListener(self, fn, self.concurrency)
            listener.start()
            self._listeners.append(listener)
            log.info("%s: listening on queue %s (%d workers)", fn.name, fn.queue_name, self.concurrency)

        for name, schedule in schedules.items():
            thread = threading.Thread(target=self._timer_loop, args=(self._functions[name], schedule), name=f"{name}-timer", daemon=True)
            thread.start()
            self._timer_threads.append(thread)
        self._started = True
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop receiving and serving; wait up to ``timeout`` s for running invocations.

        Returns False if some invocation was still running at the deadline (its message, if
        any, comes back after its lease).
        """
        if not self._started:
            return True
        deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()  # no new requests
        drained = True
        for listener in self._listeners:
            drained &= listener.stop(deadline)
        for thread in self._timer_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            drained &= not thread.is_alive()
        while self._active and time.monotonic() < deadline:  # HTTP requests in flight
            time.sleep(0.02)
        drained &= self._active == 0
        if self._server is not None:
            self._server.server_close()
        if not drained:
            log.warning("LocalHost stopped with invocations still running")
        self._close_storage()
        self._server = None
        self._server_thread = None
        self._listeners = []
        self._timer_threads = []
        self._started = False
        return drained

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- waiting and timers -----------------------------------------------------------------

    def wait_idle(self, timeout: float = 30.0, *, settle: float = 0.2) -> bool:
        """Wait until nothing is left to do; False if ``timeout`` s pass first.

        Idle means: no invocation running, no message held by a worker, and every trigger
        queue empty by its approximate message count, which also counts invisible messages
        (those waiting for a retry after ``visibilityTimeout``, or leased by a dead process),
        observed continuously for ``settle`` seconds.
        """
        if not self._started:
            raise RuntimeError("LocalHost is not started")
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            if self._idle_now():
                if idle_since is None:
                    idle_since = now
                elif now - idle_since >= settle:
                    return True
            else:
                idle_since = None
            if now >= deadline:
                return False
            time.sleep(0.05)

    def _idle_now(self) -> bool:
        if self._active or any(listener.held for listener in self._listeners):
            return False
        try:
            for listener in self._listeners:
                props = listener.client.get_queue_properties()
                if props.approximate_message_count:
                    return False
        except Exception:
            return False
        return not self._active and not any(listener.held for listener in self._listeners)

    def run_timer(self, name: str, *, past_due: bool = False) -> None:
        """Invoke timer function ``name`` once, now. Its exception, if any, is raised here."""
        fn = self._functions.get(name)
        if fn is None or fn.trigger_type != "timerTrigger":
            raise ValueError(f"no timer function named {name!r}")
        request = TimerRequest(past_due=past_due)
        self._invoke(fn, {fn.arg_name: request}, "Timer fired (run_timer)")

    def _timer_loop(self, fn: _Function, schedule: _Schedule) -> None:
        if fn.trigger.get("runOnStartup"):
            with contextlib.suppress(Exception):
                self._invoke(fn, {fn.arg_name: TimerRequest()}, "Timer fired at startup")
        while not self._stopping.is_set():
            now = dt.datetime.now(dt.UTC)
            due = schedule.next_after(now)
            if self._stopping.wait((due - now).total_seconds()):
                return
            late = (dt.datetime.now(dt.UTC) - due).total_seconds() > 1
            with contextlib.suppress(Exception):  # logged by _invoke; the schedule goes on
                self._invoke(fn, {fn.arg_name: TimerRequest(past_due=late)}, f"Timer fired at {due}")

    # -- invocation -------------------------------------------------------------------------

    def _count(self, name: str, **deltas: int) -> None:
        with self._lock:
            stats = self._stats[name]
            for key, delta in deltas.items():
                setattr(stats, key, getattr(stats, key) + delta)

    def _invoke(self, fn: _Function, kwargs: dict[str, Any], reason: str) -> Any:
        """Call the user function as the host would, write its outputs; raise on failure."""
        invocation_id = str(uuid.uuid4())
        with self._lock:
            self._active += 1
            self._stats[fn.name].invocations += 1
        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", fn.name, reason, invocation_id)
        try:
            outs = {b["name"]: _Out() for b in fn.outputs}
            call_kwargs = dict(kwargs, **outs)
            if fn.wants_context:
                call_kwargs["context"] = _Context(invocation_id, fn.name)
            result = fn.user_function(**call_kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            for binding in fn.outputs:
                if binding["type"] == "queue":
                    self._write_queue_output(binding, outs[binding["name"]].get())
            if fn.return_binding is not None and fn.return_binding["type"] == "queue":
                self._write_queue_output(fn.return_binding, result)
            http_out = [outs[b["name"]].get() for b in fn.outputs if b["type"] == "http"]
            if http_out:
                result = http_out[0]
        except Exception as exc:
            with self._lock:
                stats = self._stats[fn.name]
                stats.failures += 1
                stats.exceptions.append((type(exc).__name__, str(exc)))
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)",
                fn.name,
                invocation_id,
                (time.monotonic() - started) * 1000,
                exc_info=True,
            )
            raise
        else:
            self._count(fn.name, successes=1)
            log.info(
                "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
                fn.name,
                invocation_id,
                (time.monotonic() - started) * 1000,
            )
            return result
        finally:
            with self._lock:
                self._active -= 1

    def _handle_http(self, method: str, target: str, header_items: Iterable[tuple[str, str]], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Route, authorise and invoke; returns (status, headers, body)."""
        split = urlsplit(target)
        path = unquote(split.path)
        query = parse_qsl(split.query, keep_blank_values=True)
        log.debug("HTTP %s %s", method, path)  # no query string: it may hold the key
        if self._stopping.is_set():
            return 503, [], b""
        prefix = f"/{self.settings.route_prefix}/" if self.settings.route_prefix else "/"
        if not (path + "/").startswith(prefix):
            return 404, [], b""
        relative = path[len(prefix) :].strip("/")
        for fn in self._http_functions:
            assert fn.route is not None
            match = fn.route.pattern.fullmatch(relative)
            if match and (fn.methods is None or method.upper() in fn.methods):
                break
        else:
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
            if not hmac.compare_digest(given.encode(), self._function_key.encode()):
                return 401, [], b""

        route_params = {name: value for name, value in zip(fn.route.params, match.groups(), strict=True) if value is not None}
        host_header = headers.get("host") or f"{self._http_host}:{self.port}"
        request = func.HttpRequest(
            method=method.upper(),
            url=f"http://{host_header}{target}",
            headers=headers,
            params=params,
            route_params=route_params,
            body=body,
        )
        try:
            result = self._invoke(fn, {fn.arg_name: request}, f"HTTP {method} {path}")
            return _response_parts(result)
        except Exception:
            return 500, [], b""

    # -- storage ----------------------------------------------------------------------------

    @property
    def _lease_seconds(self) -> int:
        return int(self.message_lease)

    def _decode(self, content: Any) -> bytes | None:
        """Message content as the function sees it; None if base64 is expected and absent."""
        if isinstance(content, bytes):
            raw = content
        else:
            raw = str(content or "").encode("utf-8")
        if self.settings.message_encoding == "none":
            return raw
        try:  # .NET's Convert.FromBase64String ignores white space; so do we
            return base64.b64decode(re.sub(rb"\s+", b"", raw), validate=True)
        except (binascii.Error, ValueError):
            return None

    def _encode(self, body: bytes) -> str:
        if self.settings.message_encoding == "none":
            return body.decode("utf-8")
        return base64.b64encode(body).decode("ascii")

    def _write_queue_output(self, binding: Mapping[str, Any], value: Any) -> None:
        if value is None:
            return
        items = value if isinstance(value, list | tuple) else [value]
        client = self._queue_client(_resolve_setting(str(binding["queueName"])))
        created = False
        for item in items:
            if isinstance(item, str):
                body = item.encode("utf-8")
            elif isinstance(item, bytes | bytearray):
                body = bytes(item)
            elif isinstance(item, func_abc.QueueMessage):
                body = item.get_body()
            else:
                raise TypeError(f"cannot write {type(item).__name__} to a queue output")
            if not created:
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                created = True
            client.send_message(self._encode(body))

    def _open_storage(self) -> None:
        session = requests.Session()
        pool = max(10, self.concurrency * (len(self._functions) or 1) + 8)
        adapter = HTTPAdapter(
            pool_connections=8,
            pool_maxsize=pool,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self._transport = RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=self.storage_timeout,
            read_timeout=self.storage_timeout,
        )

    def _close_storage(self) -> None:
        with self._lock:
            self._clients.clear()
        if self._session is not None:
            self._session.close()
        self._session = None
        self._transport = None

    def _queue_client(self, name: str) -> QueueClient:
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                if self._transport is None:
                    raise RuntimeError("LocalHost is not started")
                client = QueueClient.from_connection_string(
                    self.connection_string,
                    name,
                    transport=self._transport,
                    retry_policy=LinearRetry(backoff=1, retry_total=1, random_jitter_range=0),
                )
                self._clients[name] = client
            return client


async def _await(awaitable: Any) -> Any:
    return await awaitable


# -- command line ---------------------------------------------------------------------------


def _load_settings_file(path: Path) -> None:
    """Values of local.settings.json into the environment, without overriding (like func)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for name, value in (data.get("Values") or {}).items():
        os.environ.setdefault(name, str(value))


def _import_app(spec: str) -> func.FunctionApp:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--app must look like module:attribute, not {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {spec}: {exc}") from exc
    if not isinstance(obj, func.FunctionApp):
        raise SystemExit(f"{spec} is a {type(obj).__name__}, not an azure.functions.FunctionApp")
    return obj


def _describe(host: LocalHost, fn: _Function) -> str:
    if fn.route is not None:
        methods = ",".join(sorted(fn.methods)) if fn.methods else "ANY"
        return f"{fn.name}: [{methods}] {host.function_url(fn.name)}"
    if fn.queue_name:
        return f"{fn.name}: queueTrigger {fn.queue_name}"
    return f"{fn.name}: timerTrigger {fn.trigger.get('schedule')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localhost",
        description="Run a FunctionApp locally against Azure Storage (Azurite) until Ctrl-C.",
    )
    parser.add_argument("--app", default="function_app:app", help="module:attribute")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host-json", default="host.json")
    parser.add_argument("--settings", default="local.settings.json", help="Values are loaded into the environment if the file exists")
    parser.add_argument("--key", default=None, help="function key (default: random)")
    parser.add_argument("--concurrency", type=int, default=None, help="default: batchSize")
    parser.add_argument("--run-timers", action="store_true", help="schedule timer triggers")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    settings = Path(args.settings)
    if settings.exists():
        _load_settings_file(settings)
    sys.path.insert(0, os.getcwd())
    app = _import_app(args.app)
    connection = os.environ.get("AzureWebJobsStorage") or "UseDevelopmentStorage=true"
    host = LocalHost(
        app,
        connection_string=connection,
        host_json=args.host_json,
        function_key=args.key,
        http_host=args.host,
        http_port=args.port,
        concurrency=args.concurrency,
        run_timers=args.run_timers,
    )
    try:
        host.start()
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("Is Azurite running? `python -m devtools.azurite` starts one and prints AzureWebJobsStorage.", file=sys.stderr)
        return 1
    try:
        print("\nFunctions:\n")
        for fn in host._functions.values():
            print(f"    {_describe(host, fn)}")
        print("\nCtrl-C stops.\n", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        host.stop()


if __name__ == "__main__":
    raise SystemExit(main())
