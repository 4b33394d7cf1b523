"""Play the Azure Functions host for this app (``function_app.py``), locally, against Azurite.

Azure Functions Core Tools cannot run here, so ``LocalHost`` runs the app's Python v2
``FunctionApp`` the way the Functions host does, with what it needs read from the ``FunctionApp``
object (``app.get_functions()``: names, triggers, auth levels) and from ``host.json``. It is this
app's host, not a general one: it implements what ``function_app.py`` uses and refuses, at
construction and with a message saying so, an app that uses anything else.

What it reproduces (each point is traced in the code to the Microsoft source it follows):

* HTTP triggers on literal routes under ``/{routePrefix}/`` (``extensions.http.routePrefix``,
  default ``api``), matched case-insensitively, allowed methods (anything else is 404), function
  keys for the ``function`` and ``admin`` levels (``?code=`` or ``x-functions-key``, else 401),
  an exception in the function -> 500 with an empty body, ``None`` -> 204.
* Queue triggers (``extensions.queues``), as the storage extension's queue listener does it:
  batches of ``batchSize`` (default 16, at most 32); a new batch once the messages in flight drop
  to ``newBatchThreshold`` (default ``batchSize / 2`` times the processor count, 1 processor with
  ``WEBSITE_SKU=Dynamic``), so up to ``batchSize + newBatchThreshold`` at once; polling that backs
  off while the queue is empty or missing (randomized exponential from 100 ms up to
  ``maxPollingInterval``, default 1 minute) and starts over when a message is found; the trigger
  queue is never created (it is polled until it exists), ``{queue}-poison`` is created when the
  first message is moved there; a 10 minute lease renewed at half time; ``messageEncoding``
  (``base64`` default, or ``none``); ``maxDequeueCount`` (default 5); ``visibilityTimeout``
  before a retry (default 00:00:00); a message whose dequeue count is already above the maximum,
  or that is not valid base64, goes to poison without an invocation.
* ``functionTimeout`` (default 00:30:00, 00:05:00 with ``WEBSITE_SKU=Dynamic``; ``-1`` for none):
  an invocation still running then (plus the host's 2 s grace) has failed: a queue message is
  released for a retry after ``visibilityTimeout`` (a failed attempt, poisoned at the maximum),
  HTTP gets 500, a timer run is logged as failed.
* Timer triggers: ``%NAME%`` resolved from the environment, six-field NCRONTAB expressions (UTC)
  or a ``hh:mm:ss`` interval, ``runOnStartup``, and with ``useMonitor`` (default true; off for
  schedules more frequent than once a minute) the schedule status (Last/Next/LastUpdated) kept as
  a blob ``azure-webjobs-hosts/timers/{hostId}/Host.Functions.{name}/status``: a host started
  after an occurrence was missed (no host was running) invokes once, at once, with
  ``past_due=True``; an occurrence that runs late for any other reason is not past due. Timers
  are scheduled with ``run_timers=True``; ``run_timer(name, past_due=...)`` invokes one now.

What differs, and why:

* One storage connection string serves every trigger (``connection`` names are not looked up).
* Python cannot stop a thread. At ``functionTimeout`` the real host restarts the language worker
  process, which ends the invocation; LocalHost abandons it instead: it stops renewing the
  message's lease, settles the message as failed and ignores the result, but the thread runs on
  (its side effects still happen) until the function returns. ``stats`` counts these as
  ``timeouts``.
* ``concurrency=`` (``--concurrency``) is a local knob with no host.json equivalent: N runs up to N
  messages of a queue at once (batches of ``min(batchSize, N)``, the next batch when at most
  ``N - batch`` are in flight). Without it, host.json decides, as in Azure.
* Polling errors of any kind are logged once and backed off like an empty queue, so a paused
  Azurite does not stop a listener (the real listener backs off for not-found, a queue being
  deleted and 5xx, and reports other errors to the host).
* Every invocation a listener hands out runs at once, on a thread of its own: the Python worker's
  thread pool (``PYTHON_THREADPOOL_THREAD_COUNT``), which can run fewer at a time, is not modelled.
* No timer singleton lock: two LocalHosts with ``run_timers=True`` both fire (the real host lets
  one instance of the app run a schedule). No dynamic concurrency (``concurrency`` in host.json).
* Not supported, refused at construction because this app does not use them: route templates,
  output bindings (the app writes its queues with azure-storage-queue), ``async def`` functions,
  ``func.Context`` (or any parameter besides the trigger's), triggers other than HTTP, queue and
  timer.

``python -m devtools.localhost --app function_app:app --port 7071`` runs an app until Ctrl-C.
"""

from __future__ import annotations

import argparse
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
import random
import re
import secrets
import socket
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
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.functions import _abc as func_abc
from azure.functions.queue import QueueMessage as TriggerQueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = ["FunctionTimeoutException", "HostSettings", "LocalHost", "parse_timespan"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST_JSON = REPO_ROOT / "host.json"

# The Functions host refuses larger HTTP request bodies with 413 (its default maxRequestBodySize).
MAX_REQUEST_BODY = 100 * 1024 * 1024

# The queue trigger. Sources: (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
# src/Shared/...), compiled into the Microsoft.Azure.WebJobs.Extensions.Storage.Queues extension.
DEFAULT_BATCH_SIZE = 16  # Queues/QueuesOptions.cs: DefaultBatchSize
MAX_BATCH_SIZE = 32  # Queues/QueuesOptions.cs: MaxBatchSize (the storage service hands out at most 32)
DEFAULT_MAX_DEQUEUE_COUNT = 5  # Queues/QueuesOptions.cs: DefaultMaxDequeueCount
POLL_MINIMUM = 0.1  # Queues/QueuePollingIntervals.cs: Minimum, 100 ms
DEFAULT_MAX_POLLING_INTERVAL = 60.0  # Queues/QueuePollingIntervals.cs: DefaultMaximum, 1 minute
BACKOFF_RANDOMIZATION = 0.2  # Timers/RandomizedExponentialBackoffStrategy.cs: RandomizationFactor
MESSAGE_LEASE = 600.0  # Queues/QueueListener.cs: _visibilityTimeout = TimeSpan.FromMinutes(10), renewed at half time

# functionTimeout. Source: (Azure/azure-functions-host, src/WebJobs.Script/Config/ScriptJobHostOptionsSetup.cs).
DEFAULT_FUNCTION_TIMEOUT = 30 * 60.0  # DefaultFunctionTimeout
DEFAULT_CONSUMPTION_FUNCTION_TIMEOUT = 5 * 60.0  # DefaultConsumptionFunctionTimeout
MAX_CONSUMPTION_FUNCTION_TIMEOUT = 10 * 60.0  # MaxFunctionTimeoutDynamic
MIN_FUNCTION_TIMEOUT = 1.0  # MinFunctionTimeout
# (Azure/azure-webjobs-sdk, src/Microsoft.Azure.WebJobs/TimeoutAttribute.cs): GracePeriod = 2 s, the time
# the host waits for a timed-out invocation before it gives up on it.
TIMEOUT_GRACE_PERIOD = 2.0

# Timer schedule status. Sources: (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions.Timers.Storage/
# StorageScheduleMonitor.cs): blob "timers/{hostId}/{timerName}/status" in the hosting container, which is
# (Azure/azure-functions-host, src/WebJobs.Script/ScriptConstants.cs) AzureWebJobsHostsContainerName.
HOSTS_CONTAINER = "azure-webjobs-hosts"
# The timer name is "{declaring type}.{method}" (Azure/azure-webjobs-sdk-extensions,
# src/WebJobs.Extensions/Extensions/Timers/Bindings/TimerTriggerBinding.cs); the Functions host's
# generated type is Host.Functions (Azure/azure-functions-host, src/WebJobs.Script/Host/ScriptHost.cs).
TIMER_NAME_PREFIX = "Host.Functions."
MAX_HOST_ID_LENGTH = 32  # (Azure/azure-functions-host, src/WebJobs.Script/ScriptConstants.cs): MaximumHostIdLength


class FunctionTimeoutException(Exception):
    """An invocation ran longer than host.json's ``functionTimeout`` (named as in the host's logs)."""


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


def _is_dynamic_sku() -> bool:
    """The Consumption plan (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
    src/Shared/SkuUtility.cs): WEBSITE_SKU is "Dynamic"."""
    return os.environ.get("WEBSITE_SKU", "").lower() == "dynamic"


def processor_count() -> int:
    """SkuUtility.ProcessorCount (same source): 1 on the Consumption plan, else the processors."""
    if _is_dynamic_sku():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _function_timeout(value: Any) -> float | None:
    """host.json's ``functionTimeout`` in seconds, None for unbounded, checked like the host does
    (Azure/azure-functions-host, src/WebJobs.Script/Config/ScriptJobHostOptionsSetup.cs)."""
    dynamic = _is_dynamic_sku()
    if value is None:
        return DEFAULT_CONSUMPTION_FUNCTION_TIMEOUT if dynamic else DEFAULT_FUNCTION_TIMEOUT
    if str(value).strip() in ("-1", "-1.00:00:00") and not dynamic:
        return None  # "-1" is an infinite timeout where the plan allows it
    seconds = parse_timespan(value)
    maximum = MAX_CONSUMPTION_FUNCTION_TIMEOUT if dynamic else float("inf")
    if not MIN_FUNCTION_TIMEOUT <= seconds <= maximum:
        raise ValueError(f"functionTimeout must be between 00:00:01 and {'00:10:00' if dynamic else 'unbounded'}, not {value!r}")
    return seconds


@dataclass(frozen=True)
class HostSettings:
    """The parts of host.json that LocalHost honours, with the host's defaults."""

    route_prefix: str = "api"
    batch_size: int = DEFAULT_BATCH_SIZE
    new_batch_threshold: int | None = None  # None: not set; see effective_new_batch_threshold
    max_polling_interval: float = DEFAULT_MAX_POLLING_INTERVAL
    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    visibility_timeout: float = 0.0
    message_encoding: str = "base64"
    function_timeout: float | None = DEFAULT_FUNCTION_TIMEOUT

    @property
    def effective_new_batch_threshold(self) -> int:
        """newBatchThreshold, or when unset (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.
        Storage.Common/src/Shared/Queues/QueuesOptions.cs, NewBatchThreshold) ``(batchSize / 2) * processorCount``."""
        if self.new_batch_threshold is not None:
            return self.new_batch_threshold
        return (self.batch_size // 2) * processor_count()

    @classmethod
    def from_host_json(cls, path: str | Path | None) -> HostSettings:
        """Read ``path``; a missing file gives Azure's defaults. Values are checked as QueuesOptions does."""
        if path is None or not Path(path).exists():
            return cls(function_timeout=_function_timeout(None))
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        extensions = _get(data, "extensions", {}) or {}
        queues = _get(extensions, "queues", {}) or {}
        http = _get(extensions, "http", {}) or {}
        encoding = str(_get(queues, "messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"{path}: messageEncoding must be base64 or none, not {encoding!r}")
        batch_size = int(_get(queues, "batchSize", DEFAULT_BATCH_SIZE))
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"{path}: batchSize must be from 1 to {MAX_BATCH_SIZE}, not {batch_size}")
        threshold = _get(queues, "newBatchThreshold", None)
        if threshold is not None and int(threshold) < 0:
            raise ValueError(f"{path}: newBatchThreshold must not be negative")
        max_polling = parse_timespan(_get(queues, "maxPollingInterval", "00:01:00"))
        if max_polling < POLL_MINIMUM:
            raise ValueError(f"{path}: maxPollingInterval must not be less than 00:00:00.1")
        max_dequeue = int(_get(queues, "maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT))
        if max_dequeue < 1:
            raise ValueError(f"{path}: maxDequeueCount must not be less than 1")
        return cls(
            route_prefix=str(_get(http, "routePrefix", "api")).strip("/"),
            batch_size=batch_size,
            new_batch_threshold=None if threshold is None else int(threshold),
            max_polling_interval=max_polling,
            max_dequeue_count=max_dequeue,
            visibility_timeout=parse_timespan(_get(queues, "visibilityTimeout", "00:00:00")),
            message_encoding=encoding,
            function_timeout=_function_timeout(_get(data, "functionTimeout", None)),
        )


def default_host_id(script_path: str | Path) -> str:
    """The host ID the Functions host uses when it runs locally (Azure/azure-functions-host,
    src/WebJobs.Script/Host/ScriptHostIdProvider.cs, GetDefaultHostId): the machine name's letters and
    digits, ``-``, the absolute value of Utility.GetStableHash of the app's path (src/WebJobs.Script/
    Utility.cs), cut to 32 characters, lower case, no trailing ``-`` (nor, here, a leading one: ASCII letters
    and digits only). ``AzureFunctionsWebHost__hostid`` overrides it, as the host's configuration does."""
    configured = os.environ.get("AzureFunctionsWebHost__hostid")
    if configured:
        return configured
    machine = "".join(c for c in socket.gethostname().split(".")[0] if c.isascii() and c.isalnum())
    stable = 23
    for char in str(script_path):
        stable = (stable * 31 + ord(char)) & 0xFFFFFFFF  # C#'s unchecked int arithmetic
    if stable >= 0x80000000:
        stable -= 0x100000000
    host_id = f"{machine}-{abs(stable)}"[:MAX_HOST_ID_LENGTH]
    return host_id.lower().strip("-")


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
class _Function:
    name: str
    user_function: Callable[..., Any]
    trigger: dict[str, Any]
    # HTTP
    route: str | None = None  # a literal path below the route prefix, no leading or trailing "/"
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


_SUPPORTED = (
    "LocalHost plays the Functions host for this app only: HTTP triggers on literal routes, queue triggers and "
    "timer triggers, each a plain `def` whose only parameter is its trigger's"
)


def _refuse(name: str, what: str) -> ValueError:
    return ValueError(f"function {name}: {what} is not supported. {_SUPPORTED}.")


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
        kind = trigger_dict["type"]
        if kind not in ("httpTrigger", "queueTrigger", "timerTrigger"):
            raise _refuse(name, f"a {kind!r} trigger")
        for binding in f.get_bindings():
            b = {k: _plain(v) for k, v in binding.get_dict_repr().items()}
            if b["name"] == trigger_dict["name"] and b["type"] == kind:
                continue
            if kind == "httpTrigger" and b["type"] == "http" and b["name"] == "$return":
                continue  # the HTTP response: what the function returns
            raise _refuse(name, f"binding {b['name']!r} ({b['type']}, an output binding)")
        if inspect.iscoroutinefunction(user_function) or inspect.isasyncgenfunction(user_function):
            raise _refuse(name, "an `async def` function")
        for pname in inspect.signature(user_function).parameters:
            if pname == "context":
                raise _refuse(name, "func.Context injection (parameter 'context')")
            if pname != trigger_dict["name"]:
                raise _refuse(name, f"parameter {pname!r}, which no trigger binds")
        if trigger_dict["name"] not in inspect.signature(user_function).parameters:
            raise ValueError(f"function {name}: the trigger's parameter {trigger_dict['name']!r} is missing")

        fn = _Function(name=name, user_function=user_function, trigger=trigger_dict)
        if kind == "httpTrigger":
            route = str(trigger_dict.get("route") or name).strip("/")
            if "{" in route or "}" in route:
                raise _refuse(name, f"route template {route!r}")
            fn.route = route
            methods = trigger_dict.get("methods")
            fn.methods = frozenset(str(_plain(m)).upper() for m in methods) if methods else None
            fn.auth_level = str(trigger_dict.get("authLevel") or default_auth).lower()
        elif kind == "queueTrigger":
            fn.queue_name = _resolve_setting(str(trigger_dict["queueName"]))
        loaded.append(fn)
    return loaded


@dataclass
class _Stats:
    invocations: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
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
        self.fields: list[str] = []
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
        self.fields = fields
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

    def too_frequent_for_monitor(self, now: dt.datetime) -> bool:
        """True if the host turns ``useMonitor`` off for this schedule: an interval under a minute, or
        a cron expression with only ``*`` above the seconds field that fires more than once in the
        next minute (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/Timers/
        Scheduling/TimerSchedule.cs, Create and ShouldDisableScheduleMonitor)."""
        if self.interval is not None:
            return self.interval < 60
        if any(part != "*" for part in self.fields[1:]):
            return False
        first = self.next_after(now)
        return self.next_after(first) < now + dt.timedelta(minutes=1)


# -- timer schedule status ------------------------------------------------------------------

_NEVER = dt.datetime(1, 1, 1, tzinfo=dt.UTC)  # .NET's default(DateTime): "not recorded"


@dataclass(frozen=True)
class _ScheduleStatus:
    """ScheduleStatus (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/Timers/Scheduling/
    ScheduleStatus.cs): the last occurrence, the next expected one, and when the record was made."""

    last: dt.datetime
    next: dt.datetime
    last_updated: dt.datetime

    def to_json(self) -> str:
        return json.dumps({"Last": self.last.isoformat(), "Next": self.next.isoformat(), "LastUpdated": self.last_updated.isoformat()})

    def as_timer_status(self) -> dict[str, str]:
        """What the worker gets as TimerRequest.schedule_status."""
        return json.loads(self.to_json())

    @classmethod
    def from_json(cls, text: str | bytes) -> _ScheduleStatus:
        data = json.loads(text)
        return cls(_parse_time(data["Last"]), _parse_time(data["Next"]), _parse_time(data["LastUpdated"]))


def _parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time as Newtonsoft.Json writes it (up to 7 fractional digits; no offset means UTC)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text.strip())
    if not match:
        raise ValueError(f"not a timestamp: {text!r}")
    base, fraction, offset = match.groups()
    value = dt.datetime.fromisoformat(base).replace(microsecond=int((fraction or "0")[:6].ljust(6, "0")))
    if offset in (None, "Z"):
        return value.replace(tzinfo=dt.UTC)
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    return value.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))).astimezone(dt.UTC)


class _StatusBlob:
    """StorageScheduleMonitor (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions.Timers.Storage/
    StorageScheduleMonitor.cs): the status of one timer in blob ``timers/{hostId}/{timerName}/status`` of
    the azure-webjobs-hosts container. Reading a missing blob gives None; writing is best effort."""

    def __init__(self, host: LocalHost, timer_name: str) -> None:
        from azure.storage.blob import BlobClient, ContainerClient

        options: dict[str, Any] = {"transport": host._transport, "retry_total": 1}
        self.name = f"timers/{host.host_id}/{timer_name}/status"
        self.container = ContainerClient.from_connection_string(host.connection_string, HOSTS_CONTAINER, **options)
        self.blob = BlobClient.from_connection_string(host.connection_string, HOSTS_CONTAINER, self.name, **options)

    def get(self) -> _ScheduleStatus | None:
        try:
            return _ScheduleStatus.from_json(self.blob.download_blob().readall())
        except ResourceNotFoundError:
            return None  # never recorded (the container may not exist either)

    def update(self, status: _ScheduleStatus) -> None:
        try:
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
            self.blob.upload_blob(status.to_json().encode("utf-8"), overwrite=True)
        except Exception as exc:  # best effort, as in StorageScheduleMonitor.UpdateStatusAsync
            log.error("timer status %s/%s: cannot update it: %s", HOSTS_CONTAINER, self.name, exc)


def _check_past_due(monitor: _StatusBlob, now: dt.datetime, schedule: _Schedule, status: _ScheduleStatus | None) -> tuple[_ScheduleStatus, bool]:
    """ScheduleMonitor.CheckPastDueAsync (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/
    Timers/Scheduling/ScheduleMonitor.cs): the status to start from, and whether an occurrence was missed
    while no host ran (the recorded next occurrence is in the past)."""
    if status is None:
        # A new timer: record its next occurrence now, so that one missed later is noticed.
        status = _ScheduleStatus(last=_NEVER, next=schedule.next_after(now), last_updated=now)
        monitor.update(status)
    else:
        if status.last != _NEVER:
            expected, last_updated = schedule.next_after(status.last), status.last
        elif status.last_updated != _NEVER:
            expected, last_updated = schedule.next_after(status.last_updated), status.last_updated
        else:
            expected, last_updated = schedule.next_after(now), now
        if status.next != expected:
            # The schedule changed since the record was made: not past due because of that.
            if now > expected:
                expected, last_updated = schedule.next_after(now), now
            status = _ScheduleStatus(last=_NEVER, next=expected, last_updated=last_updated)
            monitor.update(status)
    return status, now > status.next


# -- queue listener -------------------------------------------------------------------------
#
# Follows QueueListener (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
# src/Shared/Queues/QueueListener.cs) and QueueProcessor (same folder, QueueProcessor.cs), the code of the
# queue trigger in Microsoft.Azure.WebJobs.Extensions.Storage.Queues.


class _Backoff:
    """RandomizedExponentialBackoffStrategy (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.
    Storage.Common/src/Shared/Timers/RandomizedExponentialBackoffStrategy.cs), as QueueListener builds it: from
    QueuePollingIntervals.Minimum (100 ms) to maxPollingInterval, with that minimum as the delta. Each empty
    poll waits ``minimum + U(0.8, 1.2) * 2**(n-1) * minimum`` (n = 1, 2, ...; the first wait is the minimum
    itself) until that reaches the maximum, then the maximum; a poll that found messages starts it over."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError("the minimum interval must not be greater than the maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.delta = minimum
        self.current = 0.0
        self.exponent = 0
        self.rng = rng or random.Random()

    def next_delay(self, succeeded: bool) -> float:
        if succeeded:
            self.current = self.minimum
            self.exponent = 1
        elif self.current != self.maximum:
            interval = self.minimum
            if self.exponent > 0:
                factor = self.rng.uniform(1.0 - BACKOFF_RANDOMIZATION, 1.0 + BACKOFF_RANDOMIZATION)
                interval += factor * 2.0 ** (self.exponent - 1) * self.delta
            if interval < self.maximum:
                self.current = interval
                self.exponent += 1
            else:
                self.current = self.maximum
        return self.current


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # settled (deleted, released or poisoned), or ownership lost: no more renewals


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None


class _QueueListener:
    """Receives the messages of one queue and runs one function on each, in batches."""

    def __init__(self, host: LocalHost, fn: _Function) -> None:
        self.host = host
        self.fn = fn
        self.queue_name = fn.queue_name
        self.poison_name = f"{fn.queue_name}-poison"
        self.client = host._queue_client(self.queue_name)
        self.poison_client = host._queue_client(self.poison_name)
        self.batch_size, self.new_batch_threshold = host.batching
        self._backoff = _Backoff(POLL_MINIMUM, host.settings.max_polling_interval)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._leases: dict[str, _Lease] = {}
        self._stopping = threading.Event()
        self._renewer_stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        self._queue_exists: bool | None = None
        self._told_missing = False
        self._storage_down = False
        self._serial = 0

    @property
    def held(self) -> int:
        """Messages received and not settled yet (QueueListener's _processing)."""
        with self._cond:
            return self._in_flight

    def start(self) -> None:
        self._poller = threading.Thread(target=self._poll_loop, name=f"{self.fn.name}-poller", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name=f"{self.fn.name}-lease-renewer", daemon=True)
        self._poller.start()
        self._renewer.start()

    def stop(self, deadline: float) -> bool:
        """Stop receiving, let held messages finish (StopAsync waits for _processing). False if the
        deadline passed first; those messages come back when their lease ends."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._poller is not None:
            self._poller.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            while self._in_flight and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            drained = self._in_flight == 0
        self._renewer_stop.set()
        if self._renewer is not None:
            self._renewer.join(max(0.0, deadline - time.monotonic()))
        return drained and not (self._poller is not None and self._poller.is_alive())

    # polling: QueueListener.ExecuteAsync and the TaskSeriesTimer that repeats it

    def _poll_loop(self) -> None:
        found_since_last_delay = False
        while not self._stopping.is_set():
            messages = self._receive()
            if not messages:
                # CreateBackoffResult: the queue is empty, missing or failing.
                delay = self._backoff.next_delay(succeeded=found_since_last_delay)
                found_since_last_delay = False
                log.debug("queue %s: backing off for %.0f ms", self.queue_name, delay * 1000)
                self._stopping.wait(delay)
                continue
            for message in messages:
                self._dispatch(message)
            found_since_last_delay = True
            # CreateSucceededResult -> WaitForNewBatchThreshold: the next batch as soon as at most
            # newBatchThreshold messages are in flight, so at most batchSize + newBatchThreshold at once.
            with self._cond:
                while self._in_flight > self.new_batch_threshold and not self._stopping.is_set():
                    self._cond.wait()

    def _receive(self) -> list[QueueMessage]:
        """One batch, or [] when there is none. The queue's existence is checked first (and again after any
        error), and a missing queue is not created: it is polled, with back-off, until it exists."""
        try:
            if not self._queue_exists:
                self._queue_exists = self._exists()
                if not self._queue_exists:
                    if not self._told_missing:
                        log.info("queue %s does not exist; polling until it does (the host does not create it)", self.queue_name)
                        self._told_missing = True
                    return []
            # One Get Messages request for up to batchSize (ReceiveMessagesAsync(batchSize, ...)): the first
            # page only, since the SDK's pager asks again whenever a page is not full.
            pages = self.client.receive_messages(messages_per_page=self.batch_size, visibility_timeout=self.host._lease_seconds).by_page()
            messages = list(next(pages, []))
        except Exception as exc:  # storage unavailable: log once, back off, keep trying
            self._queue_exists = None
            if not self._storage_down:
                log.warning("queue %s: cannot receive messages: %s", self.queue_name, exc)
                self._storage_down = True
            return []
        if self._storage_down:
            log.info("queue %s: receiving messages again", self.queue_name)
            self._storage_down = False
        self._told_missing = False
        return messages

    def _exists(self) -> bool:
        try:
            self.client.get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    def _dispatch(self, message: QueueMessage) -> None:
        """ProcessMessageAsync, run concurrently with the other messages and the next poll."""
        lease = _Lease(message.id, message.pop_receipt, time.monotonic() + self.host.message_lease / 2)
        with self._cond:
            self._in_flight += 1
            self._leases[message.id] = lease
            self._serial += 1
            serial = self._serial
        thread = threading.Thread(target=self._run, args=(message, lease), name=f"{self.fn.name}-message-{serial}", daemon=True)
        thread.start()

    def _run(self, message: QueueMessage, lease: _Lease) -> None:
        try:
            self._process(message, lease)
        except Exception:
            # A failed delete/update/poison write: the message comes back after its lease,
            # as with the real host (at-least-once).
            log.exception("queue %s: cannot settle message %s", self.queue_name, message.id)
        finally:
            with lease.lock:
                lease.done = True
            with self._cond:
                self._leases.pop(message.id, None)
                self._in_flight -= 1
                self._cond.notify_all()

    # lease renewal: the UpdateQueueMessageVisibilityCommand timer of each message

    def _renew_loop(self) -> None:
        tick = min(1.0, self.host.message_lease / 4)
        while not self._renewer_stop.wait(tick):
            self._renew_due()

    def _renew_due(self) -> None:
        now = time.monotonic()
        with self._cond:
            due = [lease for lease in self._leases.values() if lease.renew_at <= now]
        for lease in due:
            with lease.lock:
                if lease.done:
                    continue
                try:
                    receipt = self.client.update_message(lease.message_id, pop_receipt=lease.pop_receipt, visibility_timeout=self.host._lease_seconds)
                except Exception as exc:
                    if _status(exc) in (400, 404):  # pop receipt mismatch, message or queue gone: ownership lost
                        log.warning("queue %s: lost the lease of message %s: %s", self.queue_name, lease.message_id, exc)
                        lease.done = True
                    else:  # try again sooner, before the lease ends
                        log.warning("queue %s: cannot renew lease: %s", self.queue_name, exc)
                        lease.renew_at = now + 1.0
                    continue
                lease.pop_receipt = receipt.pop_receipt
                lease.renew_at = now + self.host.message_lease / 2

    # one message: QueueProcessor.BeginProcessingMessageAsync, the invocation, CompleteProcessingMessageAsync

    def _process(self, message: QueueMessage, lease: _Lease) -> None:
        host, fn = self.host, self.fn
        settings = host.settings
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
        except Exception:  # the function raised, or ran past functionTimeout: a failed attempt
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
                self._release(message, lease)
            return
        with lease.lock:
            lease.done = True
            self._delete(message, lease)

    def _release(self, message: QueueMessage, lease: _Lease) -> None:
        """QueueProcessor.ReleaseMessageAsync: visible again after visibilityTimeout, for another attempt."""
        with lease.lock:
            lease.done = True
            try:
                self.client.update_message(message.id, pop_receipt=lease.pop_receipt, visibility_timeout=int(self.host.settings.visibility_timeout))
            except HttpResponseError as exc:
                if _status(exc) not in (400, 404):  # someone else took it over, or it is gone
                    raise

    def _delete(self, message: QueueMessage, lease: _Lease) -> None:
        """QueueProcessor.DeleteMessageAsync (under the lease's lock)."""
        try:
            self.client.delete_message(message.id, lease.pop_receipt)
        except HttpResponseError as exc:
            if _status(exc) not in (400, 404):  # pop receipt mismatch, or message or queue gone
                raise

    def _poison(self, message: QueueMessage, lease: _Lease) -> None:
        """QueueProcessor.HandlePoisonMessageAsync: copy the original content to ``{queue}-poison``,
        creating that queue if it does not exist (AddMessageAndCreateIfNotExistsAsync, in
        sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/StorageQueueExtensions.cs),
        then delete the message."""
        with lease.lock:
            lease.done = True
            try:
                self.poison_client.send_message(message.content)  # the original content, as is
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self.poison_client.create_queue()
                self.poison_client.send_message(message.content)
            self._delete(message, lease)
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


@dataclass
class _Outcome:
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class LocalHost:
    """Runs this app's HTTP, queue and timer functions against Azure Storage (Azurite), as the host does.

    ``stats`` counts, per function, invocations, successes, failures (timeouts included),
    timeouts and messages poisoned, with the exceptions raised as ``(type name, message)``.
    ``host_id`` names the timers' status blobs (default: the one the host uses locally).
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
        concurrency: int | None = None,
        run_timers: bool = False,
        message_lease: float = MESSAGE_LEASE,
        storage_timeout: float = 10.0,
        host_id: str | None = None,
    ) -> None:
        self.settings = HostSettings.from_host_json(host_json)
        self.connection_string = connection_string
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.run_timers = run_timers
        self.message_lease = max(1.0, float(message_lease))
        self.storage_timeout = storage_timeout
        app_root = Path(host_json).resolve().parent if host_json is not None else Path.cwd()
        self.host_id = host_id or default_host_id(app_root)
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", self.host_id):  # it names blobs
            raise ValueError(f"host ID {self.host_id!r}: 1-32 lower-case letters, digits and '-', not at either end")
        self._function_key = function_key or secrets.token_urlsafe(32)
        self._http_host = http_host
        self._http_port = http_port

        self._functions = {fn.name: fn for fn in _load_functions(app)}
        self._http_functions = [fn for fn in self._functions.values() if fn.route is not None]

        self._lock = threading.Lock()
        self._stats: dict[str, _Stats] = {name: _Stats() for name in self._functions}
        self._active = 0
        self._abandoned: list[threading.Thread] = []
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

    @property
    def batching(self) -> tuple[int, int]:
        """(messages per receive, new batch threshold) of each queue listener: host.json's batchSize and
        newBatchThreshold, or what ``concurrency`` makes of them."""
        if self.concurrency is None:
            return self.settings.batch_size, self.settings.effective_new_batch_threshold
        batch = min(self.settings.batch_size, self.concurrency)
        return batch, self.concurrency - batch

    @property
    def max_in_flight(self) -> int:
        """Messages of one queue run at once at most: batchSize + newBatchThreshold, as in Azure."""
        batch, threshold = self.batching
        return batch + threshold

    def function_url(self, name: str) -> str:
        """Full URL of HTTP function ``name``, with ``?code=<key>`` unless it is anonymous."""
        fn = self._functions.get(name)
        if fn is None or fn.route is None:
            raise ValueError(f"no HTTP function named {name!r}")
        prefix = f"/{self.settings.route_prefix}" if self.settings.route_prefix else ""
        url = f"{self.url}{prefix}/{fn.route}"
        if fn.auth_level != "anonymous":
            url += f"?code={quote(self._function_key, safe='')}"
        return url

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per function: invocations, successes, failures, timeouts, poisoned, exceptions (a copy)."""
        with self._lock:
            return {
                name: {
                    "invocations": s.invocations,
                    "successes": s.successes,
                    "failures": s.failures,
                    "timeouts": s.timeouts,
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
        """Start HTTP, queue listeners and (with ``run_timers``) timers. No queue is created."""
        if self._started:
            raise RuntimeError("LocalHost is already started")
        schedules: dict[str, _Schedule] = {}
        if self.run_timers:  # settings and expressions checked before anything starts
            for fn in self._functions.values():
                if fn.trigger_type == "timerTrigger":
                    schedules[fn.name] = _Schedule(_resolve_setting(str(fn.trigger["schedule"])))
        self._stopping.clear()
        self._open_storage()

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

        for fn in self._functions.values():
            if fn.queue_name:
                listener = _QueueListener(self, fn)
                listener.start()
                self._listeners.append(listener)
                log.info("%s: listening on queue %s (batches of %d, up to %d at once)", fn.name, fn.queue_name, listener.batch_size, self.max_in_flight)

        for name, schedule in schedules.items():
            thread = threading.Thread(target=self._timer_loop, args=(self._functions[name], schedule), name=f"{name}-timer", daemon=True)
            thread.start()
            self._timer_threads.append(thread)
        self._started = True
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop receiving and serving; wait up to ``timeout`` s for running invocations.

        Returns False if some invocation was still running at the deadline (its message, if
        any, comes back after its lease). Invocations abandoned at functionTimeout are not waited for.
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
        with self._lock:
            still_running = [t for t in self._abandoned if t.is_alive()]
            self._abandoned = []
        if still_running:
            log.warning("%d invocation(s) abandoned at functionTimeout are still running (a real host would have restarted the worker)", len(still_running))
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

        Idle means: no invocation running, no message held by a listener, and every trigger
        queue empty by its approximate message count, which also counts invisible messages
        (those waiting for a retry after ``visibilityTimeout``, or leased by a dead process),
        observed continuously for ``settle`` seconds. A trigger queue that does not exist is empty.
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
        for listener in self._listeners:
            try:
                props = listener.client.get_queue_properties()
            except ResourceNotFoundError:
                continue
            except Exception:
                return False
            if props.approximate_message_count:
                return False
        return not self._active and not any(listener.held for listener in self._listeners)

    def run_timer(self, name: str, *, past_due: bool = False) -> None:
        """Invoke timer function ``name`` once, now (like the admin API; the schedule status is not
        touched). Its exception, if any, is raised here."""
        fn = self._functions.get(name)
        if fn is None or fn.trigger_type != "timerTrigger":
            raise ValueError(f"no timer function named {name!r}")
        self._invoke(fn, {fn.arg_name: TimerRequest(past_due=past_due)}, "Timer fired (run_timer)")

    def _timer_loop(self, fn: _Function, schedule: _Schedule) -> None:
        """TimerListener (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/Timers/Listener/
        TimerListener.cs): StartAsync, then HandleTimerEvent and InvokeJobFunction in turn."""
        now = dt.datetime.now(dt.UTC)
        # useMonitor defaults to true (src/WebJobs.Extensions/Extensions/Timers/TimerTriggerAttribute.cs; the
        # Functions host reads it with that default, Azure/azure-functions-host,
        # src/WebJobs.Script/Binding/CoreExtensionsScriptBindingProvider.cs), and is turned off for frequent schedules.
        monitor: _StatusBlob | None = None
        if fn.trigger.get("useMonitor", True) and not schedule.too_frequent_for_monitor(now):
            monitor = _StatusBlob(self, TIMER_NAME_PREFIX + fn.name)
        status: _ScheduleStatus | None = None
        past_due = False
        if monitor is not None:
            try:
                status, past_due = _check_past_due(monitor, now, schedule, monitor.get())
            except Exception as exc:
                log.error("%s: cannot read the timer status %s/%s: %s; running on schedule", fn.name, HOSTS_CONTAINER, monitor.name, exc)
        if status is None:
            status = _ScheduleStatus(last=_NEVER, next=schedule.next_after(now), last_updated=_NEVER)
        # An occurrence missed while no host ran is invoked at once, as past due; else runOnStartup; else the schedule.
        startup: str | None = "past due" if past_due else ("run on startup" if fn.trigger.get("runOnStartup") else None)
        while not self._stopping.is_set():
            if startup is None:
                wait = (status.next - dt.datetime.now(dt.UTC)).total_seconds()
                if self._stopping.wait(max(0.0, wait)):
                    return
            invoked_at = dt.datetime.now(dt.UTC)
            is_past_due, on_startup = startup == "past due", startup == "run on startup"
            reason = f"Timer fired at {invoked_at.isoformat()}" + (f" ({startup}, scheduled for {status.next.isoformat()})" if startup else "")
            startup = None
            request = TimerRequest(past_due=is_past_due, schedule_status=status.as_timer_status() if monitor is not None else None)
            with contextlib.suppress(Exception):  # logged by _invoke; the schedule goes on
                self._invoke(fn, {fn.arg_name: request}, reason)
            # A timer that fired a little early counts from the occurrence it stood for, so that Next never
            # repeats; a late one counts from when it ran: however late, it is one invocation, not past due.
            adjusted = invoked_at
            if not is_past_due and not on_startup and status.next > invoked_at:
                adjusted = status.next
            status = _ScheduleStatus(last=adjusted, next=schedule.next_after(adjusted), last_updated=adjusted)
            if monitor is not None:
                monitor.update(status)

    # -- invocation -------------------------------------------------------------------------

    def _count(self, name: str, **deltas: int) -> None:
        with self._lock:
            stats = self._stats[name]
            for key, delta in deltas.items():
                setattr(stats, key, getattr(stats, key) + delta)

    def _invoke(self, fn: _Function, kwargs: dict[str, Any], reason: str) -> Any:
        """Call the user function as the host would, with functionTimeout; raise on failure.

        The function runs on a thread of its own while this one waits, so that an invocation that
        outlives functionTimeout can be given up on. The real host then (Azure/azure-webjobs-sdk,
        src/Microsoft.Azure.WebJobs.Host/Executors/FunctionExecutor.cs, TryHandleTimeoutAsync) fails the
        invocation with a FunctionTimeoutException and, after the timeout's grace period, restarts the
        worker process (Azure/azure-functions-host, src/WebJobs.Script.WebHost/WebScriptHostExceptionHandler.cs,
        OnTimeoutExceptionAsync). A Python thread cannot be stopped, so LocalHost fails the invocation the
        same way but leaves the thread to run on, abandoned: its result, when it comes, is ignored.
        """
        invocation_id = str(uuid.uuid4())
        with self._lock:
            self._active += 1
            self._stats[fn.name].invocations += 1
        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", fn.name, reason, invocation_id)
        outcome = _Outcome()

        def run() -> None:
            try:
                outcome.value = fn.user_function(**kwargs)
            except BaseException as exc:  # noqa: B036 (handed to the waiting thread, which raises it)
                outcome.error = exc
            finally:
                outcome.done.set()

        worker = threading.Thread(target=run, name=f"{fn.name}-{invocation_id[:8]}", daemon=True)
        try:
            worker.start()
            timeout = self.settings.function_timeout
            if not outcome.done.wait(timeout):
                log.error(
                    "Timeout value of %s exceeded by function 'Functions.%s' (Id: '%s'). Initiating cancellation.",
                    _format_timespan(timeout),
                    fn.name,
                    invocation_id,
                )
                outcome.done.wait(TIMEOUT_GRACE_PERIOD)
                if not outcome.done.is_set():
                    with self._lock:
                        self._abandoned.append(worker)
                    log.warning(
                        "A function timeout has occurred. Invocation %s is abandoned: its thread runs on (the real host restarts the worker process).",
                        invocation_id,
                    )
                self._count(fn.name, timeouts=1)
                raise FunctionTimeoutException(f"Timeout value of {_format_timespan(timeout)} was exceeded by function: Functions.{fn.name}")
            if outcome.error is not None:
                if not isinstance(outcome.error, Exception):
                    raise RuntimeError(f"function raised {type(outcome.error).__name__}") from outcome.error
                raise outcome.error
            result = outcome.value
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
                exc_info=not isinstance(exc, FunctionTimeoutException),
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
        relative = path[len(prefix) :].strip("/").lower()  # routes match case-insensitively
        for fn in self._http_functions:
            assert fn.route is not None
            if fn.route.lower() == relative and (fn.methods is None or method.upper() in fn.methods):
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

        host_header = headers.get("host") or f"{self._http_host}:{self.port}"
        request = func.HttpRequest(
            method=method.upper(),
            url=f"http://{host_header}{target}",
            headers=headers,
            params=params,
            route_params={},
            body=body,
        )
        try:
            result = self._invoke(fn, {fn.arg_name: request}, f"HTTP {method} {path}")
            return _response_parts(result)
        except Exception:  # the function failed or timed out
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

    def _open_storage(self) -> None:
        session = requests.Session()
        queues = sum(1 for fn in self._functions.values() if fn.queue_name)
        pool = max(10, self.max_in_flight * (queues or 1) + 8)
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


def _format_timespan(seconds: float | None) -> str:
    """Seconds as .NET writes a TimeSpan (``00:30:00``)."""
    if seconds is None:
        return "infinite"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    if seconds != whole:
        text += f".{round((seconds - whole) * 1e7):07d}"
    return f"{days}.{text}" if days else text


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
    parser.add_argument("--concurrency", type=int, default=None, help="messages of a queue at once (default: batchSize + newBatchThreshold)")
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
