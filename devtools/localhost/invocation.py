"""Invoking a user function as the host does: logged as the host logs it, bounded by ``functionTimeout``,
and counted per function (``LocalHost.stats``)."""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .bindings import _Function
from .hostjson import _format_timespan

log = logging.getLogger(__package__)

# (Azure/azure-webjobs-sdk, src/Microsoft.Azure.WebJobs/TimeoutAttribute.cs): GracePeriod = 2 s, the time
# the host waits for a timed-out invocation before it gives up on it.
TIMEOUT_GRACE_PERIOD = 2.0


class FunctionTimeoutException(Exception):
    """An invocation ran longer than host.json's ``functionTimeout`` (named as in the host's logs)."""


@dataclass
class _Stats:
    invocations: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    poisoned: int = 0
    exceptions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Outcome:
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class _Invocations:
    """Runs the functions of one host, counts them, and remembers the ones abandoned at functionTimeout."""

    def __init__(self, names: Iterable[str], function_timeout: float | None) -> None:
        self._names = list(names)
        self._function_timeout = function_timeout
        self._lock = threading.Lock()
        self._stats: dict[str, _Stats] = {name: _Stats() for name in self._names}
        self._active = 0
        self._abandoned: list[threading.Thread] = []

    @property
    def active(self) -> int:
        """Invocations running now (abandoned ones not included)."""
        return self._active

    def stats(self) -> dict[str, dict[str, Any]]:
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
            self._stats = {name: _Stats() for name in self._names}

    def count(self, name: str, **deltas: int) -> None:
        with self._lock:
            stats = self._stats[name]
            for key, delta in deltas.items():
                setattr(stats, key, getattr(stats, key) + delta)

    def take_abandoned(self) -> list[threading.Thread]:
        """The abandoned invocations still running; the list starts over."""
        with self._lock:
            still_running = [t for t in self._abandoned if t.is_alive()]
            self._abandoned = []
        return still_running

    def invoke(self, fn: _Function, kwargs: dict[str, Any], reason: str) -> Any:
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
        try:
            result = self._run(fn, kwargs, invocation_id)
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
            self.count(fn.name, successes=1)
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

    def _run(self, fn: _Function, kwargs: dict[str, Any], invocation_id: str) -> Any:
        """The function's result, on a thread of its own; its exception, or FunctionTimeoutException."""
        outcome = _Outcome()

        def run() -> None:
            try:
                outcome.value = fn.user_function(**kwargs)
            except BaseException as exc:  # noqa: B036 (handed to the waiting thread, which raises it)
                outcome.error = exc
            finally:
                outcome.done.set()

        worker = threading.Thread(target=run, name=f"{fn.name}-{invocation_id[:8]}", daemon=True)
        worker.start()
        timeout = self._function_timeout
        if not outcome.done.wait(timeout):
            self._time_out(fn, worker, outcome, invocation_id)
        if outcome.error is not None:
            if not isinstance(outcome.error, Exception):
                raise RuntimeError(f"function raised {type(outcome.error).__name__}") from outcome.error
            raise outcome.error
        return outcome.value

    def _time_out(self, fn: _Function, worker: threading.Thread, outcome: _Outcome, invocation_id: str) -> None:
        """Give up on an invocation past functionTimeout (after the grace period): raise FunctionTimeoutException."""
        timeout = self._function_timeout
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
        self.count(fn.name, timeouts=1)
        raise FunctionTimeoutException(f"Timeout value of {_format_timespan(timeout)} was exceeded by function: Functions.{fn.name}")
