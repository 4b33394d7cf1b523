"""Archive one instance: the order of steps, idempotency, confirmation, and the webhook's enqueue.

Order for one instance (each step only after the one before succeeded):

1. list what is stored; a manifest means the archive is complete:
   confirmed -> nothing to do; not confirmed -> confirm only;
2. GET the instance from the configured app host (never the event's ``source``);
3. refuse to archive while a file scan is ``Pending`` (transient: the queue retries later);
4. write ``instance.json``, then stream every data element (bounded parallelism), skipping
   elements an earlier attempt already stored with a matching size and sha256;
5. write ``manifest.json`` (only if absent);
6. POST ``/complete``; then mark the manifest ``confirmed``.

A transient failure raises (queue retry, then poison). A permanent one puts the message on the
poison queue at once with its reason, so it is not retried five times for nothing and an
operator sees it next to the others.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import events, telemetry
from shared.archive import INSTANCE, MANIFEST, ElementResult, build_manifest, data_blob_name
from shared.errors import ConfigError, InvalidEvent, PermanentError, TransientError
from shared.events import InstanceRef
from shared.runtime import Runtime, get_runtime

log = logging.getLogger("altinn_mottak")


@dataclass
class Result:
    outcome: str  # archived | confirmed-only | already-archived | permanent-failure
    ref: InstanceRef | None = None
    elements: int = 0
    bytes: int = 0
    reason: str | None = None


def _context(ref: InstanceRef | None, event_id: str | None, dequeue_count: int | None, **more: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {"event_id": event_id, "dequeue_count": dequeue_count}
    if ref is not None:
        ctx.update(instance=ref.instance_id, org=ref.org, app=ref.app)
    ctx.update(more)
    return ctx


def _check_instance(ref: InstanceRef, instance: dict[str, Any]) -> list[dict[str, Any]]:
    if instance.get("id") not in (None, ref.instance_id):
        raise PermanentError("Altinn returned a different instance than requested")
    if instance.get("appId") not in (None, ref.app_id):
        raise PermanentError("the instance belongs to another app")
    status = instance.get("status") or {}
    if status.get("isHardDeleted"):
        raise PermanentError("the instance is hard deleted in Altinn")
    process = instance.get("process") or {}
    if isinstance(process, dict) and process.get("currentTask") and not process.get("ended"):
        raise PermanentError("the instance's process has not ended; it cannot be confirmed")
    data = instance.get("data") or []
    if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in data):
        raise TransientError("the instance's data element list is malformed")
    pending = [e["id"] for e in data if e.get("fileScanResult") == "Pending"]
    if pending:
        raise TransientError(f"file scan pending for {len(pending)} data element(s); retrying later")
    return data


def _reuse(ref: InstanceRef, element: dict[str, Any], stored: dict[str, Any] | None) -> ElementResult | None:
    """An element stored whole by an earlier attempt (same size, sha256 recorded at commit)."""
    if not stored:
        return None
    sha = stored["metadata"].get("sha256")
    if not sha or stored["size"] != element.get("size"):
        return None
    return ElementResult(
        data_element_id=element["id"],
        data_type=element.get("dataType"),
        content_type=element.get("contentType") or stored.get("content_type"),
        filename=element.get("filename"),
        size=stored["size"],
        sha256=sha,
        blob=data_blob_name(ref, element["id"]),
        file_scan_result=element.get("fileScanResult"),
        reused=True,
    )


def archive_instance(rt: Runtime, ref: InstanceRef, *, event_id: str | None = None, dequeue_count: int | None = None) -> Result:
    """Archive and confirm one instance. Raises TransientError or PermanentError."""
    if (ref.org, ref.app) not in rt.settings.apps:
        raise PermanentError(f"the app {ref.app_id} is not in ALTINN_APPS")
    ctx = _context(ref, event_id, dequeue_count)
    archive = rt.archive
    state = archive.state(ref)
    if state.manifest:
        if state.confirmed:
            log.info("already archived and confirmed", extra=ctx | {"outcome": "already-archived"})
            return Result("already-archived", ref)
        rt.altinn.complete(ref)
        archive.mark_confirmed(ref)
        log.info("archived earlier; confirmed now", extra=ctx | {"outcome": "confirmed-only"})
        return Result("confirmed-only", ref)

    instance = rt.altinn.get_instance(ref)
    elements = _check_instance(ref, instance)
    archive.ensure_container()
    # Write-once (If-None-Match), like the manifest: a worker that lost a race to another one must
    # not rewrite a finished archive with Altinn's later view (which then shows our confirmation).
    archive.write_json(ref.prefix + INSTANCE, instance, only_if_new=True)

    def one(element: dict[str, Any]) -> ElementResult:
        reused = _reuse(ref, element, state.data.get(element["id"]))
        if reused is not None:
            return reused
        return archive.write_element(ref, element, rt.altinn.open_data(ref, element["id"]))

    workers = min(rt.settings.parallel_downloads, max(1, len(elements)))
    if workers <= 1:
        results = [one(e) for e in elements]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="element") as pool:
            results = list(pool.map(one, elements))

    for r in results:
        if r.infected:
            log.warning("data element is flagged infected by Altinn's file scan; archived and flagged", extra=ctx | {"data_element_id": r.data_element_id})
    manifest = build_manifest(ref, results, event_id=event_id)
    if not archive.write_json(ref.prefix + MANIFEST, manifest, only_if_new=True):
        log.info("another worker wrote the manifest first", extra=ctx)
    rt.altinn.complete(ref)
    archive.mark_confirmed(ref)
    total = sum(r.size for r in results)
    log.info("archived and confirmed", extra=ctx | {"outcome": "archived", "elements": len(results), "bytes": total})
    return Result("archived", ref, elements=len(results), bytes=total)


def enqueue(queue: Any, message: dict[str, Any]) -> None:
    """Put one message (JSON) on a queue, creating the queue if it does not exist yet.

    Raises azure.core.exceptions.AzureError when the write failed: the caller must not
    acknowledge anything then.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    text = json.dumps(message)
    try:
        queue.send_message(text)
    except ResourceNotFoundError:
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        queue.send_message(text)


def send_to_poison(rt: Runtime, message: dict[str, Any] | str, reason: str, *, status: int | None, dequeue_count: int | None) -> None:
    """Park a message that cannot succeed on the poison queue, with why."""
    from azure.core.exceptions import AzureError

    failure = {
        "reason": reason,
        "status": status,
        "permanent": True,
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "dequeueCount": dequeue_count,
    }
    doc = dict(message, failure=failure) if isinstance(message, dict) else {"raw": message, "failure": failure}
    try:
        enqueue(rt.poison_queue, doc)
    except AzureError as exc:
        raise TransientError(f"could not write to the poison queue ({type(exc).__name__})") from None


def handle_message(body: bytes | str, *, dequeue_count: int | None = None, max_dequeue_count: int = 5) -> Result:
    """The archive function: one queue message. Raises to make the queue retry."""
    rt = get_runtime()
    started = time.monotonic()
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        ref, message = events.parse_message(body)
    except ValueError as exc:
        log.error("unreadable queue message; moved to poison", extra={"dequeue_count": dequeue_count, "outcome": "permanent-failure"})
        # Keep the unreadable text (bounded: JSON escaping and base64 must stay under the 64 KiB message limit).
        send_to_poison(rt, raw[:8000], str(exc), status=None, dequeue_count=dequeue_count)
        telemetry.record_failure("unreadable")
        return Result("permanent-failure", None, reason=str(exc))
    event_id = (message.get("event") or {}).get("id")
    ctx = _context(ref, event_id, dequeue_count)
    try:
        result = archive_instance(rt, ref, event_id=event_id, dequeue_count=dequeue_count)
    except PermanentError as exc:
        log.error("permanent failure; moved to poison: %s", exc.reason, extra=ctx | {"outcome": "permanent-failure", "status": exc.status})
        send_to_poison(rt, message, exc.reason, status=exc.status, dequeue_count=dequeue_count)
        telemetry.record_failure("permanent", org=ref.org, app=ref.app, status=exc.status)
        return Result("permanent-failure", ref, reason=exc.reason)
    except (TransientError, ConfigError) as exc:
        last = dequeue_count is not None and dequeue_count >= max_dequeue_count
        log.warning(
            "transient failure (%s); %s",
            exc,
            "last attempt: the message goes to the poison queue" if last else "the queue will retry",
            extra=ctx | {"outcome": "retry" if not last else "poison"},
        )
        telemetry.record_failure("config" if isinstance(exc, ConfigError) else "transient", org=ref.org, app=ref.app, status=getattr(exc, "status", None))
        raise
    log.debug("message handled in %.3f s", time.monotonic() - started, extra=ctx | {"outcome": result.outcome})
    telemetry.record_result(
        result.outcome, org=ref.org, app=ref.app, via=message.get("via"), nbytes=result.bytes, event_time=(message.get("event") or {}).get("time")
    )
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
