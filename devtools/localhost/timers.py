"""Timer triggers: NCRONTAB schedules and intervals, the schedule status blob (``useMonitor``) that tells a
past-due occurrence, and the loop that runs one timer function on its schedule."""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest

from .bindings import _Function
from .hostjson import parse_timespan

if TYPE_CHECKING:
    from .host import LocalHost

log = logging.getLogger(__package__)

# Timer schedule status. Sources: (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions.Timers.Storage/
# StorageScheduleMonitor.cs): blob "timers/{hostId}/{timerName}/status" in the hosting container, which is
# (Azure/azure-functions-host, src/WebJobs.Script/ScriptConstants.cs) AzureWebJobsHostsContainerName.
HOSTS_CONTAINER = "azure-webjobs-hosts"
# The timer name is "{declaring type}.{method}" (Azure/azure-webjobs-sdk-extensions,
# src/WebJobs.Extensions/Extensions/Timers/Bindings/TimerTriggerBinding.cs); the Functions host's
# generated type is Host.Functions (Azure/azure-functions-host, src/WebJobs.Script/Host/ScriptHost.cs).
TIMER_NAME_PREFIX = "Host.Functions."

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


# -- the timer listener ---------------------------------------------------------------------


def _timer_loop(host: LocalHost, fn: _Function, schedule: _Schedule) -> None:
    """TimerListener (Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/Timers/Listener/
    TimerListener.cs): StartAsync, then HandleTimerEvent and InvokeJobFunction in turn."""
    monitor, status, past_due = _start_timer(host, fn, schedule)
    # An occurrence missed while no host ran is invoked at once, as past due; else runOnStartup; else the schedule.
    startup: str | None = "past due" if past_due else ("run on startup" if fn.trigger.get("runOnStartup") else None)
    while not host._stopping.is_set():
        if startup is None:
            wait = (status.next - dt.datetime.now(dt.UTC)).total_seconds()
            if host._stopping.wait(max(0.0, wait)):
                return
        invoked_at = dt.datetime.now(dt.UTC)
        is_past_due, on_startup = startup == "past due", startup == "run on startup"
        reason = f"Timer fired at {invoked_at.isoformat()}" + (f" ({startup}, scheduled for {status.next.isoformat()})" if startup else "")
        startup = None
        request = TimerRequest(past_due=is_past_due, schedule_status=status.as_timer_status() if monitor is not None else None)
        with contextlib.suppress(Exception):  # logged by invoke; the schedule goes on
            host._invocations.invoke(fn, {fn.arg_name: request}, reason)
        # A timer that fired a little early counts from the occurrence it stood for, so that Next never
        # repeats; a late one counts from when it ran: however late, it is one invocation, not past due.
        adjusted = invoked_at
        if not is_past_due and not on_startup and status.next > invoked_at:
            adjusted = status.next
        status = _ScheduleStatus(last=adjusted, next=schedule.next_after(adjusted), last_updated=adjusted)
        if monitor is not None:
            monitor.update(status)


def _start_timer(host: LocalHost, fn: _Function, schedule: _Schedule) -> tuple[_StatusBlob | None, _ScheduleStatus, bool]:
    """The timer's status monitor (None without one), the status to start from, and whether it is past due."""
    now = dt.datetime.now(dt.UTC)
    # useMonitor defaults to true (src/WebJobs.Extensions/Extensions/Timers/TimerTriggerAttribute.cs; the
    # Functions host reads it with that default, Azure/azure-functions-host,
    # src/WebJobs.Script/Binding/CoreExtensionsScriptBindingProvider.cs), and is turned off for frequent schedules.
    monitor: _StatusBlob | None = None
    if fn.trigger.get("useMonitor", True) and not schedule.too_frequent_for_monitor(now):
        monitor = _StatusBlob(host, TIMER_NAME_PREFIX + fn.name)
    status: _ScheduleStatus | None = None
    past_due = False
    if monitor is not None:
        try:
            status, past_due = _check_past_due(monitor, now, schedule, monitor.get())
        except Exception as exc:
            log.error("%s: cannot read the timer status %s/%s: %s; running on schedule", fn.name, HOSTS_CONTAINER, monitor.name, exc)
    if status is None:
        status = _ScheduleStatus(last=_NEVER, next=schedule.next_after(now), last_updated=_NEVER)
    return monitor, status, past_due
