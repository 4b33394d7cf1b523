"""Catch-up: find completed instances our org has not confirmed and put them on the queue.

Events can be missed (the webhook down longer than Altinn's ~35 hours of retries, a subscription
not validated yet, a bad deploy). For each app in ``ALTINN_APPS`` this asks Altinn storage for
instances whose process is complete and that our org has not confirmed (``excludeConfirmedBy``),
hard-deleted ones included (storage keeps those for the service owner until it confirms them), page
by page, and enqueues each on ``altinn-events`` with the webhook's message shape
(``via: "catch-up"``). The archive function is idempotent, so an instance that the webhook also
delivers is archived once.

Bounds, so one run never exceeds the function timeout and never floods the queue:

* at most ``CATCHUP_MAX_INSTANCES`` enqueued per run, less the messages already waiting on the
  queue (a backlog is not made bigger; the next run continues where this one stopped);
* at most ``CATCHUP_TIME_BUDGET_SECONDS`` of wall time (checked before every page);
* apps are paged round-robin, so one app with a large backlog does not starve the others.

Per instance, what is stored decides (one listing call): archived and confirmed by us -> skipped
(Altinn's list lags behind); archived, not confirmed, and Altinn refused ``/complete`` less than
``CATCHUP_REFUSED_QUIET_HOURS`` ago -> left alone (the app's policy has to change first; a run
every hour would only park it again); archived but not confirmed -> enqueued so it is confirmed;
nothing -> enqueued. An instance seen twice in one run (pages shift while instances get confirmed)
is enqueued once. The next page is requested by rebuilding the URL from the continuation token: a
``next`` link naming another host never gets the bearer token. A continuation token or a page that
comes back a second time in one run is a cycle: that app's run stops and is reported as failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared import events, telemetry
from shared.errors import MottakError, TransientError
from shared.models import InstanceRef, utc_now
from shared.runtime import Runtime, enqueue

log = logging.getLogger("altinn_mottak.catchup")

VIA = "catch-up"
PAGE_SIZE = 100
WORKERS = 8  # archive look-ups and queue writes in flight per page
MAX_LISTED = 1000  # instances named in one report

# What happened to one instance the query returned.
NEW = "new"  # nothing archived: enqueued
AWAITING = "awaiting-confirmation"  # archive complete, not confirmed: enqueued (once per run)
CONFIRMED = "confirmed"  # archived and confirmed by us: skipped
REFUSED = "confirmation-refused"  # archived, /complete refused recently (403): left alone for the quiet hours
DUPLICATE = "duplicate"  # already handled in this run: skipped
INVALID = "invalid"  # not an instance of this app, or not complete/not ours to take: skipped


@dataclass
class AppReport:
    org: str
    app: str
    found: int = 0
    enqueued: int = 0
    awaiting_confirmation: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {CONFIRMED: 0, REFUSED: 0, DUPLICATE: 0, INVALID: 0})
    pages: int = 0
    complete: bool = False  # the query was followed to its last page
    error: str | None = None
    continuation_token: str | None = field(default=None, repr=False)
    seen_tokens: set[str] = field(default_factory=set, repr=False)
    seen_pages: set[tuple[str, ...]] = field(default_factory=set, repr=False)

    @property
    def app_id(self) -> str:
        return f"{self.org}/{self.app}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app_id,
            "found": self.found,
            "enqueued": self.enqueued,
            "awaitingConfirmation": self.awaiting_confirmation,
            "skipped": dict(self.skipped),
            "pages": self.pages,
            "complete": self.complete,
            "error": self.error,
        }


@dataclass
class CatchupReport:
    apps: list[AppReport]
    dry_run: bool = False
    limit: int = 0
    backlog: int | None = None
    stopped: str | None = None  # max-instances | time-budget | queue-backlog | error
    error: str | None = None
    duration: float = 0.0
    instances: list[dict[str, str]] = field(default_factory=list)
    instances_truncated: bool = False

    @property
    def found(self) -> int:
        return sum(a.found for a in self.apps)

    @property
    def enqueued(self) -> int:
        return sum(a.enqueued for a in self.apps)

    @property
    def skipped(self) -> int:
        return sum(sum(a.skipped.values()) for a in self.apps)

    @property
    def ok(self) -> bool:
        return self.error is None and all(a.error is None for a in self.apps)

    def errors(self) -> list[str]:
        found = [f"{a.app_id}: {a.error}" for a in self.apps if a.error]
        return found + ([self.error] if self.error else [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "found": self.found,
            "enqueued": self.enqueued,
            "awaitingConfirmation": sum(a.awaiting_confirmation for a in self.apps),
            "skipped": self.skipped,
            "limit": self.limit,
            "backlog": self.backlog,
            "stopped": self.stopped,
            "error": self.error,
            "durationSeconds": round(self.duration, 3),
            "apps": [a.to_dict() for a in self.apps],
            "instances": list(self.instances),
            "instancesTruncated": self.instances_truncated,
        }


def _queue_backlog(rt: Runtime) -> int:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        return int(rt.events_queue.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0
    except AzureError as exc:
        raise TransientError(f"catch-up: cannot read the queue ({type(exc).__name__})") from None


def _candidate(org: str, app: str, doc: dict[str, Any]) -> InstanceRef | None:
    """The instance a query result names, if it is one we should take; None otherwise."""
    instance_id = doc.get("id")
    if not isinstance(instance_id, str):
        return None
    try:
        ref = InstanceRef.parse(org, app, instance_id)
    except ValueError:
        return None
    if doc.get("appId") not in (None, ref.app_id) or doc.get("org") not in (None, org):
        return None
    process: dict[str, Any] = doc["process"] if isinstance(doc.get("process"), dict) else {}
    if not process.get("ended"):
        return None  # the query says otherwise; trust the instance, not the filter
    confirmations = doc.get("completeConfirmations") or []
    if isinstance(confirmations, list) and any(isinstance(c, dict) and c.get("stakeholderId") == org for c in confirmations):
        return None
    return ref


def run_catchup(
    rt: Runtime,
    *,
    apps: Iterable[tuple[str, str]] | None = None,
    dry_run: bool = False,
    max_instances: int | None = None,
    time_budget: float | None = None,
    page_size: int = PAGE_SIZE,
    progress: Callable[[CatchupReport], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = utc_now,
) -> CatchupReport:
    """One catch-up run. Errors are recorded in the report (``report.ok``), not raised, so the
    counts of what did happen are never lost; the timer function raises afterwards."""
    settings = rt.settings
    selected = sorted(settings.apps if apps is None else set(apps))
    for org, app in selected:
        if (org, app) not in settings.apps:
            raise ValueError(f"{org}/{app} is not in ALTINN_APPS")
    run = _Run(
        rt,
        CatchupReport(apps=[AppReport(org, app) for org, app in selected], dry_run=dry_run),
        page_size=page_size,
        progress=progress,
        clock=clock,
        now=now,
    )
    return run.execute(
        settings.catchup_max_instances if max_instances is None else max_instances, settings.catchup_time_budget if time_budget is None else time_budget
    )


class _Run:
    """The steps of one run: the backlog check, then pages round-robin until done or bounded."""

    def __init__(
        self,
        rt: Runtime,
        report: CatchupReport,
        *,
        page_size: int,
        progress: Callable[[CatchupReport], None] | None,
        clock: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        self.rt = rt
        self.report = report
        self.page_size = page_size
        self.progress = progress
        self.clock = clock
        self.now = now
        self.quiet = timedelta(hours=rt.settings.catchup_refused_quiet_hours)
        self.seen: set[str] = set()
        self.started = clock()
        self.deadline = self.started
        self.allowance = 0

    def execute(self, limit: int, time_budget: float) -> CatchupReport:
        report = self.report
        report.limit = limit
        self.deadline = self.started + time_budget
        if self._allowance(limit):
            with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="catchup") as pool:
                self._pages(pool)
            if not report.dry_run:
                for entry in report.apps:
                    telemetry.record_catchup(entry.enqueued, org=entry.org, app=entry.app)
        report.duration = self.clock() - self.started
        _log_summary(report)
        return report

    def _allowance(self, limit: int) -> bool:
        """How many this run may enqueue: the limit less the backlog already waiting (False: none)."""
        report = self.report
        try:
            report.backlog = _queue_backlog(self.rt)
        except TransientError as exc:
            report.error, report.stopped = exc.reason, "error"
            return False
        self.allowance = limit if report.dry_run else limit - report.backlog
        if self.allowance <= 0:
            report.stopped = "queue-backlog"
            log.warning(
                "catch-up skipped: %d messages already wait on the queue (CATCHUP_MAX_INSTANCES is %d); the next run continues",
                report.backlog,
                limit,
            )
            return False
        return True

    def _pages(self, pool: ThreadPoolExecutor) -> None:
        """Apps page by page in turn, so that one app's backlog does not starve the others."""
        report = self.report
        active = list(report.apps)
        while active and report.stopped is None:
            for entry in list(active):
                if self.clock() >= self.deadline:
                    report.stopped = "time-budget"
                    break
                room = self.allowance - report.enqueued
                if room <= 0:
                    report.stopped = "max-instances"
                    break
                if not self._one_page(pool, entry, room):
                    active.remove(entry)
                if self.progress is not None:
                    self.progress(report)
                if report.stopped is not None:
                    break

    def _one_page(self, pool: ThreadPoolExecutor, entry: AppReport, room: int) -> bool:
        """Query, take and enqueue one page of ``entry``'s app; False when that app is done."""
        try:
            page = self.rt.altinn.query_instances(entry.org, entry.app, size=self.page_size, continuation_token=entry.continuation_token)
        except MottakError as exc:
            entry.error = str(exc)
            log.error("catch-up: querying Altinn failed: %s", exc, extra={"org": entry.org, "app": entry.app, "outcome": "error"})
            return False
        entry.pages += 1
        batch = self._candidates(entry, page.instances)
        if len(batch) > room:  # the allowance runs out on this page; the next run takes the rest
            batch = batch[:room]
            self.report.stopped = "max-instances"
        try:
            kinds = list(pool.map(self._handle, batch))
        except Exception as exc:  # storage unavailable: stop, keep the counts
            self.report.error = f"catch-up stopped: {_describe(exc)}"
            self.report.stopped = "error"
            log.error("%s", self.report.error, extra={"org": entry.org, "app": entry.app, "outcome": "error"})
            return False
        self._count(entry, batch, kinds)
        return self._advance(entry, page)

    def _candidates(self, entry: AppReport, docs: list[dict[str, Any]]) -> list[InstanceRef]:
        batch: list[InstanceRef] = []
        for doc in docs:
            entry.found += 1
            ref = _candidate(entry.org, entry.app, doc)
            if ref is None:
                entry.skipped[INVALID] += 1
            elif ref.key in self.seen:
                entry.skipped[DUPLICATE] += 1
            else:
                self.seen.add(ref.key)
                batch.append(ref)
        return batch

    def _handle(self, ref: InstanceRef) -> str:
        """What is stored decides: skip, or enqueue (a dry run only says so)."""
        state = self.rt.archive.state(ref)
        if state.manifest and state.confirmed:
            return CONFIRMED
        refused = state.last_refusal
        if state.manifest and refused is not None and self.now() - refused < self.quiet:
            return REFUSED
        kind = AWAITING if state.manifest else NEW
        dry_run = self.report.dry_run
        if not dry_run:
            enqueue(self.rt.events_queue, events.queue_message(None, ref, via=VIA))
        log.info(
            "catch-up: %s (%s)",
            "would enqueue" if dry_run else "enqueued",
            kind,
            extra={"instance": ref.instance_id, "org": ref.org, "app": ref.app, "via": VIA, "outcome": "dry-run" if dry_run else "enqueued"},
        )
        return kind

    def _count(self, entry: AppReport, batch: list[InstanceRef], kinds: list[str]) -> None:
        report = self.report
        for ref, kind in zip(batch, kinds, strict=True):
            if kind in (CONFIRMED, REFUSED):
                entry.skipped[kind] += 1
                continue
            entry.enqueued += 1
            entry.awaiting_confirmation += 1 if kind == AWAITING else 0
            if len(report.instances) < MAX_LISTED:
                report.instances.append({"app": ref.app_id, "instance": ref.instance_id, "state": kind})
            else:
                report.instances_truncated = True

    def _advance(self, entry: AppReport, page: Any) -> bool:
        """Follow the continuation token; a token or page seen before in this run is a cycle."""
        token = page.continuation_token
        signature = tuple(str(doc.get("id")) for doc in page.instances)
        if token is None:
            entry.complete = True
            return False
        if token in entry.seen_tokens or token == entry.continuation_token or (signature and signature in entry.seen_pages):
            entry.error = "the query's continuation came back to a page it had already given (a cycle); stopped this app's run"
            log.error("catch-up: %s", entry.error, extra={"org": entry.org, "app": entry.app, "outcome": "error"})
            return False
        entry.seen_tokens.add(token)
        if signature:
            entry.seen_pages.add(signature)
        entry.continuation_token = token
        return True


def _describe(exc: Exception) -> str:
    if isinstance(exc, MottakError):
        return str(exc)
    return f"{type(exc).__name__} talking to storage"


def _log_summary(report: CatchupReport) -> None:
    for entry in report.apps:
        log.info(
            "catch-up %s: found %d, enqueued %d (%d archived awaiting confirmation), skipped %d (%s)%s",
            entry.app_id,
            entry.found,
            entry.enqueued,
            entry.awaiting_confirmation,
            sum(entry.skipped.values()),
            ", ".join(f"{k} {v}" for k, v in entry.skipped.items()),
            "" if entry.complete else " - not finished",
            extra={"org": entry.org, "app": entry.app, "found": entry.found, "enqueued": entry.enqueued, "skipped": sum(entry.skipped.values()), "via": VIA},
        )
    level = logging.INFO if report.ok and report.stopped is None else logging.WARNING
    log.log(
        level,
        "catch-up %s in %.1f s: found %d, %s %d, skipped %d%s%s",
        "dry run finished" if report.dry_run else "finished",
        report.duration,
        report.found,
        "would enqueue" if report.dry_run else "enqueued",
        report.enqueued,
        report.skipped,
        f"; stopped early ({report.stopped}), the next run continues" if report.stopped else "",
        f"; errors: {'; '.join(report.errors())}" if report.errors() else "",
        extra={"found": report.found, "enqueued": report.enqueued, "skipped": report.skipped, "via": VIA, "outcome": "ok" if report.ok else "error"},
    )


def run_timer(*, past_due: bool = False) -> CatchupReport:
    """The timer function: one run with the settings' bounds; raises when something failed."""
    from shared.runtime import get_runtime

    if past_due:
        log.info("catch-up timer is past due; running now")
    report = run_catchup(get_runtime())
    if not report.ok:
        raise TransientError("catch-up did not finish cleanly: " + "; ".join(report.errors()))
    return report
