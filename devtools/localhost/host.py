"""``LocalHost``: loads the app's functions and host.json, starts and stops the HTTP server, the queue
listeners and the timers, and holds the storage connection they share."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import azure.functions as func
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.functions.timer import TimerRequest
from azure.storage.queue import LinearRetry, QueueClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .bindings import _load_functions, _resolve_setting
from .hostjson import DEFAULT_HOST_JSON, HostSettings, default_host_id
from .http import _Handler, _HttpServer
from .invocation import _Invocations
from .queues import MESSAGE_LEASE, _QueueListener
from .timers import _Schedule, _timer_loop

log = logging.getLogger(__package__)


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
        self._invocations = _Invocations(self._functions, self.settings.function_timeout)
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
        return self._invocations.stats()

    def reset_stats(self) -> None:
        self._invocations.reset_stats()

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
            self._start_http()
        for fn in self._functions.values():
            if fn.queue_name:
                listener = _QueueListener(self, fn)
                listener.start()
                self._listeners.append(listener)
                log.info("%s: listening on queue %s (batches of %d, up to %d at once)", fn.name, fn.queue_name, listener.batch_size, self.max_in_flight)
        for name, schedule in schedules.items():
            thread = threading.Thread(target=_timer_loop, args=(self, self._functions[name], schedule), name=f"{name}-timer", daemon=True)
            thread.start()
            self._timer_threads.append(thread)
        self._started = True
        return self

    def _start_http(self) -> None:
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
        while self._invocations.active and time.monotonic() < deadline:  # HTTP requests in flight
            time.sleep(0.02)
        drained &= self._invocations.active == 0
        if self._server is not None:
            self._server.server_close()
        if not drained:
            log.warning("LocalHost stopped with invocations still running")
        still_running = self._invocations.take_abandoned()
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
        if self._invocations.active or any(listener.held for listener in self._listeners):
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
        return not self._invocations.active and not any(listener.held for listener in self._listeners)

    def run_timer(self, name: str, *, past_due: bool = False) -> None:
        """Invoke timer function ``name`` once, now (like the admin API; the schedule status is not
        touched). Its exception, if any, is raised here."""
        fn = self._functions.get(name)
        if fn is None or fn.trigger_type != "timerTrigger":
            raise ValueError(f"no timer function named {name!r}")
        self._invocations.invoke(fn, {fn.arg_name: TimerRequest(past_due=past_due)}, "Timer fired (run_timer)")

    # -- storage ----------------------------------------------------------------------------

    @property
    def _lease_seconds(self) -> int:
        return int(self.message_lease)

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
