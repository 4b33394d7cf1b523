"""Archive one instance: the order of steps, idempotency, confirmation, retries, and the webhook's enqueue.

Order for one instance (each step only after the one before succeeded):

1. list what is stored; a manifest means the archive is complete:
   confirmed -> nothing to do; not confirmed -> confirm only;
2. GET the instance from Altinn **storage** (never the app API, never the event's ``source``),
   parsed into :class:`~shared.models.Instance` (fail closed: a document that does not fit is a
   permanent failure naming the member, and nothing is written or confirmed);
3. refuse to archive while a file scan is ``Pending`` (transient: the retry schedule waits for it);
4. stream every data element (bounded parallelism), skipping elements an earlier attempt already
   stored with a matching size and sha256;
5. write the instance document (``instance.json``: this attempt's view, so that it and the
   manifest agree), then ``manifest.json`` (only if absent);
6. POST ``/complete``; then write the ``confirmed.json`` marker (write-once). A 403 there means the
   archive is whole but the app's policy refuses the confirmation: recorded next to the archive,
   parked once;
7. close the loop (:mod:`shared.closing`): the hand-off message to case systems, then the
   submitter's substatus; a failure there is retried on the schedule and never undoes the archive.

Hard-deleted instances are archived and confirmed like any other (storage keeps them for the
service owner until it has confirmed them); the manifest says ``hardDeleted``.

Failures (:func:`handle_message`): a transient one schedules the next attempt on the queue
(:mod:`shared.retries`, ``outcome=deferred``) and parks after ``ARCHIVE_RETRY_MAX_HOURS``; a
permanent one parks at once with its reason (``outcome=parked``), so it is not retried for nothing
and an operator sees it next to the others. Every parking writes one ERROR line starting
``parked in poison:`` with ``failure_class``; the poison alert keys on it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shared import closing as closing_steps
from shared import events, retries, telemetry
from shared.altinn import NotFound
from shared.archive import ArchiveState, ElementResult, build_manifest, data_blob_name
from shared.closing import Closing
from shared.config import INVOCATION_BUDGET_SECONDS
from shared.errors import ConfigError, ConfirmationRefused, InvalidEvent, PermanentError, TransientError
from shared.http import safe_text
from shared.models import DataElement, FailureClass, Instance, InstanceRef, Outcome, QueueMessage, iso, parse_message, utc_now
from shared.runtime import Runtime, enqueue, get_runtime

log = logging.getLogger("altinn_mottak")

# A 404 from storage is weak evidence (it answers 404 for any internal error on the instance GET):
# parked as gone only after this many attempts in a row got it, on the retry schedule's delays.
NOT_FOUND_ATTEMPTS = 4
# Azure Storage refuses a message over 64 KiB; base64 grows text by 4/3. What we park stays below.
MAX_MESSAGE_TEXT = 48 * 1024


@dataclass
class Result:
    outcome: Outcome
    ref: InstanceRef | None = None
    elements: int = 0
    bytes: int = 0
    reason: str | None = None
    failure_class: FailureClass | None = None


def _context(ref: InstanceRef | None, event_id: str | None, dequeue_count: int | None, **more: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {"event_id": event_id, "dequeue_count": dequeue_count}
    if ref is not None:
        ctx.update(instance=ref.instance_id, org=ref.org, app=ref.app)
    ctx.update(more)
    return ctx


def _reuse(ref: InstanceRef, element: DataElement, stored: dict[str, Any] | None) -> ElementResult | None:
    """An element stored whole by an earlier attempt (same size, sha256 recorded at commit)."""
    if not stored:
        return None
    sha = stored["metadata"].get("sha256")
    if not sha or stored["size"] != element.size:
        return None
    return ElementResult(
        data_element_id=element.id,
        data_type=element.data_type,
        content_type=element.content_type or stored.get("content_type"),
        filename=element.filename,
        size=stored["size"],
        sha256=sha,
        blob=data_blob_name(ref, element.id),
        file_scan_result=element.file_scan_result.value,
        reused=True,
    )


def _confirm(rt: Runtime, ref: InstanceRef, until: float | None) -> bool:
    """``/complete``, then the write-once ``confirmed.json`` marker: True when this call created it
    (and so hands the archive off). A 403 is recorded next to the archive."""
    try:
        rt.altinn.complete(ref, until=until)
    except PermanentError as exc:
        if exc.status != 403:
            raise
        reason = (
            "Altinn refused /complete (HTTP 403) although the archive is whole: the app's policy does not grant the "
            "'complete' action to the org at the instance's end event (the standard policy grants it at EndEvent_1 only)"
        )
        rt.archive.write_refusal(ref, reason, 403)
        raise ConfirmationRefused(reason, status=403) from None
    return rt.archive.mark_confirmed(ref)


def _close_loop(rt: Runtime, closing: Closing, state: ArchiveState, instance: Instance | None, until: float | None) -> None:
    """After the confirmation: hand off, then the substatus (shared/closing.py). Never undoes it."""
    closing_steps.hand_off(rt, closing, state)
    closing_steps.set_substatus(rt, closing.ref, instance, state, until=until)


def _download_all(rt: Runtime, ref: InstanceRef, instance: Instance, stored: dict[str, dict[str, Any]], until: float | None) -> list[ElementResult]:
    def one(element: DataElement) -> ElementResult:
        reused = _reuse(ref, element, stored.get(element.id))
        if reused is not None:
            return reused
        if element.id in stored:
            found = stored[element.id]
            raise PermanentError(
                f"data element {element.id} is stored already with other content ({found['size']} bytes, sha256 "
                f"{found['metadata'].get('sha256')}; Altinn says {element.size} bytes); the archive is write-once, so it is not overwritten"
            )
        return rt.archive.write_element(ref, element, rt.altinn.open_data(ref, element, until=until))

    workers = min(rt.settings.parallel_downloads, max(1, len(instance.data)))
    if workers <= 1:
        return [one(e) for e in instance.data]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="element") as pool:
        return list(pool.map(one, instance.data))


def archive_instance(
    rt: Runtime,
    ref: InstanceRef,
    *,
    event_id: str | None = None,
    dequeue_count: int | None = None,
    until: float | None = None,
    via: str = "unknown",
    replayed: bool = False,
) -> Result:
    """Archive and confirm one instance, then close the loop. Raises TransientError, PermanentError or
    ConfigError.

    ``until`` (monotonic seconds) bounds every call to Altinn: past it the attempt stops (transient)."""
    if (ref.org, ref.app) not in rt.settings.apps:
        raise PermanentError(f"the app {ref.app_id} is not in ALTINN_APPS")
    ctx = _context(ref, event_id, dequeue_count)
    state = rt.archive.state(ref)
    closing = Closing(ref, via, replayed, event_id, created_marker=False, confirmed_at=state.confirmed)
    if state.manifest:
        if state.confirmed:
            log.info("already archived and confirmed", extra=ctx | {"outcome": Outcome.ALREADY_ARCHIVED.value})
            _close_loop(rt, closing, state, None, until)
            return Result(Outcome.ALREADY_ARCHIVED, ref)
        created = _confirm(rt, ref, until)
        log.info("archived earlier; confirmed now", extra=ctx | {"outcome": Outcome.CONFIRMED_ONLY.value})
        _close_loop(rt, replace(closing, created_marker=created), state, None, until)
        return Result(Outcome.CONFIRMED_ONLY, ref)
    instance, results, manifest = _store(rt, ref, state, ctx, event_id, until)
    created = _confirm(rt, ref, until)
    total = sum(r.size for r in results)
    extra = ctx | {"outcome": Outcome.ARCHIVED.value, "elements": len(results), "bytes": total}
    log.info("archived and confirmed%s", " (hard deleted in Altinn)" if instance.hard_deleted else "", extra=extra)
    _close_loop(rt, replace(closing, created_marker=created, manifest=manifest), state, instance, until)
    return Result(Outcome.ARCHIVED, ref, elements=len(results), bytes=total)


def _store(
    rt: Runtime, ref: InstanceRef, state: ArchiveState, ctx: dict[str, Any], event_id: str | None, until: float | None
) -> tuple[Instance, list[ElementResult], bytes | None]:
    """Steps 2 to 5: the instance, every element, ``instance.json``, then the manifest (its bytes
    when this attempt wrote it, for the hand-off)."""
    archive = rt.archive
    instance = rt.altinn.get_instance(ref, until=until)
    if instance.pending:
        raise TransientError(f"file scan pending for {len(instance.pending)} data element(s); retrying later")
    archive.ensure_container()
    results = _download_all(rt, ref, instance, state.data, until)
    for r in results:
        if r.infected:
            log.warning("data element is flagged infected by Altinn's file scan; archived and flagged", extra=ctx | {"data_element_id": r.data_element_id})
    # Write-once, like the manifest: a worker that lost a race to another must not rewrite a finished
    # archive with Altinn's later view (which then shows our confirmation).
    instance_blob, instance_sha = archive.write_instance(ref, instance.document, state)
    manifest = build_manifest(ref, results, event_id=event_id, instance=instance, instance_blob=instance_blob, instance_sha256=instance_sha)
    written = archive.write_manifest(ref, manifest)
    if written is None:
        log.info("another worker wrote the manifest first", extra=ctx)
    return instance, results, written


def _encoded_size(doc: dict[str, Any]) -> int:
    return len(base64.b64encode(json.dumps(doc, ensure_ascii=False).encode("utf-8")))


def _bounded_raw(raw: str, failure: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``{"raw": ..., "failure": ...}`` with as much of ``raw`` as fits the queue's limit once
    escaped and base64-encoded; and how many characters were kept."""
    keep = len(raw)
    doc = {"raw": raw, "failure": failure}
    while _encoded_size(doc) > MAX_MESSAGE_TEXT and keep > 0:
        keep = keep // 2 if keep > 64 else 0
        doc = {"raw": raw[:keep], "failure": failure}
    return doc, keep


def park(
    rt: Runtime,
    message: QueueMessage | str,
    failure_class: FailureClass,
    reason: str,
    *,
    status: int | None,
    dequeue_count: int | None,
) -> None:
    """Put a message that cannot (or can no longer) succeed on the poison queue, with why, without
    an expiry. Raises TransientError when the poison queue cannot be written (the host retries)."""
    from azure.core.exceptions import AzureError

    failure = {
        "reason": reason,
        "class": failure_class.value,
        "status": status,
        "permanent": failure_class is not FailureClass.RETRIES_EXHAUSTED,
        "at": iso(utc_now()),
        "dequeueCount": dequeue_count,
    }
    kept = None
    if isinstance(message, QueueMessage):
        failure["attempts"] = message.attempt + (1 if failure_class is FailureClass.RETRIES_EXHAUSTED else 0)
        doc = dict(message.to_dict(), failure=failure)
        ref: InstanceRef | None = message.ref
        event_id = message.event_id
    else:
        doc, kept = _bounded_raw(message, failure)
        ref, event_id = None, None
    try:
        enqueue(rt.poison_queue, doc, time_to_live=-1)
    except AzureError as exc:
        raise TransientError(f"could not write to the poison queue ({type(exc).__name__})") from None
    note = "" if kept is None or isinstance(message, QueueMessage) or kept == len(message) else f" (kept {kept} of its {len(message)} characters)"
    log.error(
        "parked in poison: %s%s",
        safe_text(reason, 500),
        note,
        extra=_context(ref, event_id, dequeue_count, outcome=Outcome.PARKED.value, failure_class=failure_class.value, status=status),
    )
    telemetry.record_parked(failure_class.value, org=ref.org if ref else None, app=ref.app if ref else None)
    if isinstance(message, QueueMessage) and message.retry is not None:
        rt.retry_records.clear(message.ref)


def defer(rt: Runtime, message: QueueMessage, exc: TransientError | ConfigError, *, dequeue_count: int | None, now: datetime) -> Result:
    """Schedule the next attempt after a transient failure, or park when the retry window is over."""
    reason = exc.reason if isinstance(exc, TransientError) else str(exc)
    status = exc.status if isinstance(exc, TransientError) else None
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    decision = retries.decide(rt.settings, message, reason, status=status, retry_after=retry_after, now=now)
    ref = message.ref
    failure_class = FailureClass.CONFIG if isinstance(exc, ConfigError) else FailureClass.TRANSIENT
    telemetry.record_failure(failure_class.value, org=ref.org, app=ref.app, status=status)
    if isinstance(exc, NotFound) and decision.retry.not_found >= NOT_FOUND_ATTEMPTS:
        why = f"{reason}, {decision.retry.not_found} attempts in a row: the instance or data element is gone"
        park(rt, message, FailureClass.PERMANENT, why, status=404, dequeue_count=dequeue_count)
        return Result(Outcome.PARKED, ref, reason=why, failure_class=FailureClass.PERMANENT)
    if decision.park:
        hours = (now - decision.retry.first_failure_at).total_seconds() / 3600
        why = f"transient failures for {hours:.1f} h ({decision.retry.attempt} attempts); the last: {reason}"
        park(rt, message, FailureClass.RETRIES_EXHAUSTED, why, status=status, dequeue_count=dequeue_count)
        return Result(Outcome.PARKED, ref, reason=why, failure_class=FailureClass.RETRIES_EXHAUSTED)
    from azure.core.exceptions import AzureError

    seconds = retries.visibility_seconds(decision.delay)
    following = replace(message, retry=decision.retry)
    try:
        # No expiry: the message waits out its delay however long the schedule says.
        enqueue(rt.events_queue, following.to_dict(), visibility_timeout=seconds, time_to_live=-1)
    except AzureError as exc2:
        raise TransientError(f"{reason}; and the next attempt could not be scheduled ({type(exc2).__name__})") from None
    next_at = now + timedelta(seconds=seconds)
    rt.retry_records.record(following, decision.retry, next_at)
    log.warning(
        "transient failure (%s); attempt %d failed, the next in %d s",
        safe_text(reason, 500),
        decision.retry.attempt,
        seconds,
        extra=_context(ref, message.event_id, dequeue_count, outcome=Outcome.DEFERRED.value, failure_class=failure_class.value, status=status),
    )
    telemetry.record_deferred(org=ref.org, app=ref.app)
    return Result(Outcome.DEFERRED, ref, reason=reason, failure_class=failure_class)


def handle_message(
    body: bytes | str,
    *,
    dequeue_count: int | None = None,
    clock: Callable[[], datetime] = utc_now,
    rt: Runtime | None = None,
) -> Result:
    """The archive function: one queue message. Returns normally when the message is done with
    (archived, deferred to a later attempt, or parked); raises only when not even that could be
    written, so that the host retries the message (and, after maxDequeueCount, moves it).

    ``rt`` and ``clock`` are for tests (in-memory stand-ins, a simulated clock)."""
    rt = rt or get_runtime()
    started = time.monotonic()
    until = started + INVOCATION_BUDGET_SECONDS
    try:
        message = parse_message(body)
    except ValueError as exc:
        raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        telemetry.record_failure(FailureClass.UNREADABLE.value)
        park(rt, raw, FailureClass.UNREADABLE, f"unreadable queue message: {exc}", status=None, dequeue_count=dequeue_count)
        return Result(Outcome.PARKED, None, reason=str(exc), failure_class=FailureClass.UNREADABLE)
    ref = message.ref
    try:
        result = archive_instance(rt, ref, event_id=message.event_id, dequeue_count=dequeue_count, until=until, via=message.via, replayed=message.replayed)
    except ConfirmationRefused as exc:
        telemetry.record_failure(FailureClass.CONFIRMATION_REFUSED.value, org=ref.org, app=ref.app, status=exc.status)
        park(rt, message, FailureClass.CONFIRMATION_REFUSED, exc.reason, status=exc.status, dequeue_count=dequeue_count)
        return Result(Outcome.PARKED, ref, reason=exc.reason, failure_class=FailureClass.CONFIRMATION_REFUSED)
    except PermanentError as exc:
        telemetry.record_failure(FailureClass.PERMANENT.value, org=ref.org, app=ref.app, status=exc.status)
        park(rt, message, FailureClass.PERMANENT, exc.reason, status=exc.status, dequeue_count=dequeue_count)
        return Result(Outcome.PARKED, ref, reason=exc.reason, failure_class=FailureClass.PERMANENT)
    except (TransientError, ConfigError) as exc:
        return defer(rt, message, exc, dequeue_count=dequeue_count, now=clock())
    if message.retry is not None:
        rt.retry_records.clear(ref)
    ctx = _context(ref, message.event_id, dequeue_count, outcome=result.outcome.value)
    log.debug("message handled in %.3f s", time.monotonic() - started, extra=ctx)
    event_time = message.event.time if message.event else None
    telemetry.record_result(result.outcome.value, org=ref.org, app=ref.app, via=message.via, nbytes=result.bytes, event_time=event_time)
    return result


# -- the webhook ----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    content_type: str = "application/json"


_TITLES = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable"}


def problem(status: int, code: str, detail: str) -> Reply:
    """An RFC 9457 problem document."""
    body = {"type": f"urn:altinn-mottak:problem:{code}", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail, "code": code}
    return Reply(status, body, "application/problem+json")


def receive_event(body: bytes, content_type: str | None = None) -> Reply:
    """The webhook: validate, queue, and answer 2xx only once the message is stored."""
    from shared.config import get_settings

    try:
        settings = get_settings()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return problem(500, "configuration", f"the receiver is misconfigured (setting {exc.setting})")
    try:
        outcome = events.evaluate(settings, body, content_type)
    except InvalidEvent as exc:
        log.warning("rejected webhook call: %s", exc.code, extra={"status": exc.status, "reason": exc.detail})
        return problem(exc.status, exc.code, exc.detail)
    event = outcome.event
    if outcome.message is None:
        log.info("webhook call %s", outcome.body.get("status"), extra={"event_id": event.id if event else None, "type": event.type if event else None})
        return Reply(outcome.status, outcome.body)
    from azure.core.exceptions import AzureError

    ref = InstanceRef.from_dict(outcome.message["instance"])
    try:
        enqueue(get_runtime().events_queue, outcome.message)
    except AzureError as exc:
        log.error("could not queue the event (%s); answering 503 so Altinn retries", type(exc).__name__, extra=_context(ref, event.id if event else None, None))
        return problem(503, "queue_unavailable", "the event could not be stored; please retry")
    log.info("event queued", extra=_context(ref, event.id if event else None, None, outcome="queued"))
    return Reply(outcome.status, outcome.body)
