"""Logging and telemetry: correlation fields on every record about an instance, OpenTelemetry to
Application Insights, and the service's custom metrics.

Correlation fields (``event_id``, ``instance``, ``org``, ``app``, ``dequeue_count``, ``outcome``):

* the pipeline passes them as ``extra`` on the records it writes;
* :func:`log_context` / :func:`message_context` bind them for a block of code, and
  :class:`CorrelationFilter` (installed on every root handler by :func:`configure`) copies them onto
  every record written inside that block, whichever logger wrote it (the Altinn client, the archive);
* with OpenTelemetry, record attributes become ``customDimensions`` in Application Insights; on a
  console, :class:`ConsoleFormatter` appends them as ``key=value``.

OpenTelemetry is used only when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set and
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` is ``true``: the Azure Functions Python worker then
calls ``configure_azure_monitor`` itself at start-up, and :func:`configure` only picks up the global
providers it made. Outside the worker (the CLI, the local host) :func:`configure` calls
``configure_azure_monitor`` once. Without those settings nothing from OpenTelemetry is imported and
every ``record_*`` function returns at its first line: it costs nothing and raises nothing.

Custom metrics (OpenTelemetry metrics API; the ``customMetrics`` table in Application Insights):

==========================================  ======  ===========================================
``altinn_mottak.instances.archived``        count   instances archived and confirmed (outcome)
``altinn_mottak.archived.bytes``            bytes   bytes of data elements archived
``altinn_mottak.confirmation.latency``      s       event ``time`` -> confirmation (histogram)
``altinn_mottak.failures``                  count   failed attempts, by ``failure_class``:
                                                    transient, config, permanent, unreadable,
                                                    confirmation-refused
``altinn_mottak.catchup.enqueued``          count   instances enqueued by catch-up
``altinn_mottak.parked``                    count   messages the app parked in the poison queue,
                                                    by ``failure_class``: permanent, unreadable,
                                                    retries-exhausted, confirmation-refused
``altinn_mottak.deferred``                  count   attempts deferred to the retry schedule
==========================================  ======  ===========================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from shared.models import parse_time

log = logging.getLogger(__name__)

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
ENABLE_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
METER_NAME = "altinn_mottak"

# On every record that concerns an instance (when known).
CORRELATION_FIELDS: tuple[str, ...] = ("event_id", "instance", "org", "app", "dequeue_count", "outcome")
# Shown on the console too when a record carries them.
DETAIL_FIELDS: tuple[str, ...] = (
    "via",
    "status",
    "reason",
    "failure_class",
    "attempt",
    "elements",
    "bytes",
    "data_element_id",
    "found",
    "enqueued",
    "skipped",
)
_ALL_FIELDS = CORRELATION_FIELDS + DETAIL_FIELDS

_context: ContextVar[Mapping[str, Any] | None] = ContextVar("altinn_mottak_log_context", default=None)


# -- correlation ------------------------------------------------------------------------------


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind correlation fields for the records written inside the block (nested blocks add to them)."""
    outer = _context.get() or {}
    merged = dict(outer)
    merged.update((k, v) for k, v in fields.items() if v is not None)
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields bound now (a copy)."""
    return dict(_context.get() or {})


def message_fields(body: bytes | str | None, dequeue_count: int | None = None) -> dict[str, Any]:
    """Correlation fields of a queue message, best effort (an unreadable message gives only the count)."""
    fields: dict[str, Any] = {"dequeue_count": dequeue_count}
    if body is None:
        return fields
    try:
        from shared.models import parse_message

        message = parse_message(body)
    except Exception:
        return fields
    ref = message.ref
    fields.update(instance=ref.instance_id, org=ref.org, app=ref.app, event_id=message.event_id, via=message.via, attempt=message.attempt or None)
    return fields


@contextlib.contextmanager
def message_context(body: bytes | str | None, dequeue_count: int | None = None) -> Iterator[None]:
    """:func:`log_context` with the fields of a queue message."""
    with log_context(**message_fields(body, dequeue_count)):
        yield


class CorrelationFilter(logging.Filter):
    """Adds the bound correlation fields to a record that lacks them, and drops fields set to None
    (OpenTelemetry attributes cannot be None). Never rejects a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        bound = _context.get()
        if bound:
            for name, value in bound.items():
                if fields.get(name) is None:
                    fields[name] = value
        for name in _ALL_FIELDS:
            if name in fields and fields[name] is None:
                del fields[name]
        return True


_FILTER = CorrelationFilter()

# Never export these loggers' records to Application Insights: the exporter's own warnings about a
# failed export would be exported too, fail again, and so on; the SDKs' HTTP chatter is noise.
_NOT_EXPORTED = ("azure.monitor", "azure.core", "azure.identity", "opentelemetry", "urllib3")


class ExportFilter(logging.Filter):
    """On the OpenTelemetry log handler only: keeps telemetry plumbing out of telemetry."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_NOT_EXPORTED)


_EXPORT_FILTER = ExportFilter()


def _scalar(value: Any) -> str:
    from shared.http import safe_text

    text = safe_text(value, 1000)
    return json.dumps(text, ensure_ascii=False) if (not text or re.search(r"[\s\"=]", text)) else text


class ConsoleFormatter(logging.Formatter):
    """A formatter (or a wrapper around another) that appends the correlation fields as ``key=value``.

    The message and the fields may carry text from upstream (an error body, a reason): control
    characters are shown escaped, so nothing can move the cursor, clear the screen or forge a line."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, *, base: logging.Formatter | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt)
        self.base = base

    def format(self, record: logging.LogRecord) -> str:
        from shared.http import safe_text

        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = safe_text(record.getMessage(), 20_000), None
        text = self.base.format(clean) if self.base is not None else super().format(clean)
        pairs = [f"{name}={_scalar(record.__dict__[name])}" for name in _ALL_FIELDS if record.__dict__.get(name) is not None]
        if not pairs:
            return text
        first, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{first} [{' '.join(pairs)}]{newline}{rest}"


def install_log_correlation(logger: logging.Logger | None = None) -> None:
    """Put the correlation filter on every handler of ``logger`` (root by default), and show the
    fields on console handlers. Idempotent and cheap: safe to call on every invocation."""
    target = logger or logging.getLogger()
    for handler in list(target.handlers):
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
        if type(handler).__module__.startswith("opentelemetry") and _EXPORT_FILTER not in handler.filters:
            handler.addFilter(_EXPORT_FILTER)
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter, ConsoleFormatter):
            handler.setFormatter(ConsoleFormatter(base=handler.formatter or logging.Formatter()))


def setup_console_logging(level: int = logging.WARNING, stream: TextIO | None = None) -> logging.Handler:
    """Logging for command-line use: one stderr handler with the correlation fields, quiet SDKs."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_FILTER)
    root.addHandler(handler)
    root.setLevel(level)
    _quiet_sdks(max(level, logging.WARNING))
    return handler


def _quiet_sdks(level: int = logging.WARNING) -> None:
    # The Azure SDK logs every HTTP request at INFO (headers included); urllib3 every connection.
    for name in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity", "azure.monitor", "urllib3"):
        logging.getLogger(name).setLevel(level)


# -- OpenTelemetry ----------------------------------------------------------------------------


def telemetry_enabled(env: Mapping[str, str] | None = None) -> bool:
    """True when both Application Insights settings ask for OpenTelemetry."""
    env = os.environ if env is None else env
    return bool((env.get(CONNECTION_STRING) or "").strip()) and (env.get(ENABLE_TELEMETRY) or "").strip().lower() == "true"


class _Instruments:
    def __init__(self, meter: Any) -> None:
        self.archived = meter.create_counter("altinn_mottak.instances.archived", unit="{instance}", description="Instances archived and confirmed")
        self.bytes = meter.create_counter("altinn_mottak.archived.bytes", unit="By", description="Bytes of data elements archived")
        self.latency = meter.create_histogram(
            "altinn_mottak.confirmation.latency", unit="s", description="Time from the event's time to the confirmation to Altinn"
        )
        self.failures = meter.create_counter("altinn_mottak.failures", unit="{failure}", description="Archive failures by class")
        self.catchup = meter.create_counter("altinn_mottak.catchup.enqueued", unit="{instance}", description="Instances enqueued by catch-up")
        self.parked = meter.create_counter("altinn_mottak.parked", unit="{message}", description="Messages the app parked in the poison queue, by class")
        self.deferred = meter.create_counter("altinn_mottak.deferred", unit="{attempt}", description="Attempts deferred to the retry schedule")
        self.handoffs = meter.create_counter("altinn_mottak.handoffs", unit="{message}", description="Hand-off messages sent to case systems")
        self.substatus = meter.create_counter(
            "altinn_mottak.substatus", unit="{instance}", description="Substatus updates to submitters, by result (set, unchanged, failed)"
        )


_lock = threading.Lock()
_configured = False
_we_configured_sdk = False
_instruments: _Instruments | None = None


def _sdk_providers_set() -> bool:
    """Whether someone (the Functions worker) already installed SDK providers."""
    from opentelemetry import metrics

    return type(metrics.get_meter_provider()).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider")


def configure(service_name: str = "altinn-mottak") -> bool:
    """Set up correlation on the log handlers and, when enabled, OpenTelemetry. True when metrics flow.

    ``service_name`` is the cloud role when we set OpenTelemetry up ourselves (``OTEL_SERVICE_NAME``
    wins); in the Functions worker the worker's own resource (the function app's name) is used.
    Cheap after the first call (the Functions call it on every invocation); never raises.
    """
    global _configured, _we_configured_sdk, _instruments
    try:
        install_log_correlation()
    except Exception:  # a foreign handler that refuses filters must not stop an invocation
        pass
    if _configured:
        return _instruments is not None
    with _lock:
        if _configured:
            return _instruments is not None
        _configured = True
        _quiet_sdks()
        if not telemetry_enabled():
            return False
        try:
            from opentelemetry import metrics

            if not _sdk_providers_set():
                from azure.monitor.opentelemetry import configure_azure_monitor
                from opentelemetry.sdk.resources import Resource

                resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
                # Short-lived processes (the CLI) must not leave retry files behind in the temp directory.
                configure_azure_monitor(logger_name="", enable_live_metrics=False, disable_offline_storage=True, resource=resource)
                _we_configured_sdk = True
                install_log_correlation()  # the handler it added
            _instruments = _Instruments(metrics.get_meter(METER_NAME))
        except Exception as exc:  # telemetry must never take the service down
            log.warning("OpenTelemetry could not be set up (%s); continuing without it", type(exc).__name__)
            _instruments = None
        return _instruments is not None


def flush(timeout_ms: int = 10_000) -> None:
    """Export what is buffered (short-lived processes such as the CLI call this before exiting)."""
    if _instruments is None:
        return
    try:
        from opentelemetry import _logs, metrics, trace

        for provider in (metrics.get_meter_provider(), trace.get_tracer_provider(), _logs.get_logger_provider()):
            force_flush = getattr(provider, "force_flush", None)
            if callable(force_flush):
                force_flush(timeout_ms)
    except Exception:
        pass


def _reset_for_tests() -> None:
    global _configured, _we_configured_sdk, _instruments
    with _lock:
        _configured = False
        _we_configured_sdk = False
        _instruments = None


# -- metrics ----------------------------------------------------------------------------------


def record_result(outcome: str, *, org: str | None, app: str | None, via: str | None = None, nbytes: int = 0, event_time: Any = None) -> None:
    """An instance handled: counts archives and bytes, and the event -> confirmation latency."""
    instruments = _instruments
    if instruments is None:
        return
    try:
        attrs = {"org": org or "", "app": app or "", "outcome": outcome, "via": via or ""}
        if outcome in ("archived", "confirmed-only"):
            instruments.archived.add(1, attrs)
            started = parse_time(event_time)
            if started is not None:
                instruments.latency.record(max(0.0, (datetime.now(UTC) - started).total_seconds()), attrs)
        if nbytes:
            instruments.bytes.add(int(nbytes), attrs)
    except Exception:
        pass


def record_failure(failure_class: str, *, org: str | None = None, app: str | None = None, status: int | None = None) -> None:
    """An archive attempt failed: ``failure_class`` is transient, config, permanent, unreadable or
    confirmation-refused (a :class:`~shared.models.FailureClass` value)."""
    instruments = _instruments
    if instruments is None:
        return
    try:
        instruments.failures.add(1, {"failure_class": failure_class, "org": org or "", "app": app or "", "status": str(status or "")})
    except Exception:
        pass


def record_parked(failure_class: str, *, org: str | None = None, app: str | None = None) -> None:
    """A message parked in the poison queue by the app (``failure_class``: permanent, unreadable,
    retries-exhausted, confirmation-refused). The poison alert keys on this and on the log line."""
    instruments = _instruments
    if instruments is None:
        return
    try:
        instruments.parked.add(1, {"failure_class": failure_class, "org": org or "", "app": app or ""})
    except Exception:
        pass


def record_deferred(*, org: str | None = None, app: str | None = None) -> None:
    """An attempt failed transiently and the next one is scheduled (``outcome=deferred``)."""
    instruments = _instruments
    if instruments is None:
        return
    try:
        instruments.deferred.add(1, {"org": org or "", "app": app or ""})
    except Exception:
        pass


def record_handoff(*, org: str, app: str, via: str | None) -> None:
    """A hand-off message sent for an archived and confirmed instance."""
    _add("handoffs", 1, {"org": org, "app": app, "via": via or ""})


def record_substatus(result: str, *, org: str, app: str) -> None:
    """The submitter's substatus after a confirmation: ``set``, ``unchanged`` or ``failed``."""
    _add("substatus", 1, {"org": org, "app": app, "result": result})


def _add(name: str, value: int, attrs: dict[str, str]) -> None:
    instruments = _instruments
    if instruments is None:
        return
    try:
        getattr(instruments, name).add(value, attrs)
    except Exception:
        pass


def record_catchup(enqueued: int, *, org: str, app: str) -> None:
    instruments = _instruments
    if instruments is None or not enqueued:
        return
    try:
        instruments.catchup.add(int(enqueued), {"org": org, "app": app})
    except Exception:
        pass
