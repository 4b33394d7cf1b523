"""The poison queue ``altinn-events-poison``: what is parked there and why, and replaying it.

Two kinds of message end up there:

* parked by our pipeline (``shared.pipeline.park``), with no expiry: the original message plus a
  ``failure`` member (``reason``, ``class``, ``status``, ``at``, ``dequeueCount``, ``attempts``),
  for a permanent failure (at once), when Altinn refused ``/complete`` for a whole archive, or when
  transient failures outlasted ``ARCHIVE_RETRY_MAX_HOURS``; an unreadable message is wrapped as
  ``{"raw": ..., "failure": ...}``;
* moved by the Functions host after ``maxDequeueCount`` failed attempts: since the app schedules its
  own retries this is only the backstop for crashes and timeouts. The original message, unchanged;
  its reason is in the archive function's exceptions (Application Insights), not in the message.

Replay moves messages back to ``altinn-events``: all of them or those of selected instances, with
``failure`` and the retry state stripped (a host-moved message without either goes back byte for
byte), so the retry schedule starts afresh. A message too large to send once re-encoded is skipped
and reported, and the replay goes on with the rest. A message is never lost: it is
written to the main queue first and only then deleted from the poison queue (a crash in between
leaves a duplicate, which the archive function's idempotency absorbs). Messages that are not
selected are held invisible during the scan and released at the end; a replayed message that fails
again and lands on the poison queue while the replay still runs is recognised (same content) and
left for the next replay, so a replay never loops.

Messages on both queues are base64 text (``messageEncoding`` in host.json); the clients here read
and write the raw text so that an odd message cannot stop a listing or a replay.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.config import EVENTS_QUEUE, POISON_QUEUE
from shared.errors import TransientError
from shared.http import safe_text
from shared.models import to_json_dict
from shared.runtime import Runtime

log = logging.getLogger("altinn_mottak.poison")

PEEK_MAX = 32  # Azure Storage returns at most 32 messages per peek or receive
LEASE_SECONDS = 300  # how long a scanned message stays invisible while a replay runs
HOST_REASON = "retries exhausted: moved by the Functions host after maxDequeueCount failed attempts (see the archive function's exceptions)"


def _raw_queue(rt: Runtime, name: str) -> Any:
    """A queue client without message encoding: we see and write the text exactly as stored."""
    return rt.raw_queue(name)


def _text(content: Any) -> str:
    return content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content or "")


def _base64_json(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(base64.b64decode("".join(text.split()), validate=True).decode("utf-8"))
    except (binascii.Error, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def decode(content: Any) -> dict[str, Any] | None:
    """The JSON object of a message (base64 as the host writes it, or plain JSON); None if neither."""
    text = _text(content)
    doc = _base64_json(text)
    if doc is not None:
        return doc
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def instance_key(doc: dict[str, Any] | None) -> str | None:
    """``org/app/partyId/instanceGuid`` of a message, or None."""
    inst = doc.get("instance") if isinstance(doc, dict) else None
    if not isinstance(inst, dict):
        return None
    parts = [inst.get(k) for k in ("org", "app", "partyId", "instanceGuid")]
    if not all(isinstance(p, str) and p for p in parts):
        return None
    return "/".join(str(p) for p in parts[:3]) + "/" + str(parts[3]).lower()


def parse_selector(text: str) -> str:
    """``partyId/instanceGuid`` or ``org/app/partyId/instanceGuid`` -> a normalised selector.

    ValueError when it is neither."""
    from shared.events import InstanceRef

    parts = text.strip().strip("/").split("/")
    if len(parts) == 2:
        ref = InstanceRef.parse("x", "x", "/".join(parts))
        return ref.instance_id
    if len(parts) == 4:
        ref = InstanceRef.parse(parts[0], parts[1], "/".join(parts[2:]))
        return f"{ref.org}/{ref.app}/{ref.instance_id}"
    raise ValueError(f"not an instance: {text[:100]!r} (give partyId/instanceGuid or org/app/partyId/instanceGuid)")


def _matches(key: str | None, selectors: set[str]) -> bool:
    if key is None:
        return False
    short = "/".join(key.split("/")[2:])
    return key in selectors or short in selectors


@dataclass
class PoisonEntry:
    message_id: str
    inserted_on: str | None
    instance: str | None  # org/app/partyId/instanceGuid
    event_id: str | None
    via: str | None
    parked_by: str  # pipeline | host | unreadable
    reason: str
    status: int | None = None
    failed_at: str | None = None
    attempts: int | None = None
    failure_class: str | None = None  # pipeline: permanent, retries-exhausted, confirmation-refused, unreadable

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return None


def describe(message_id: str, content: Any, inserted_on: Any = None) -> PoisonEntry:
    """What a poison message is and why it is there."""
    doc = decode(content)
    key = instance_key(doc)
    failure = doc.get("failure") if isinstance(doc, dict) and isinstance(doc.get("failure"), dict) else None
    if doc is None or key is None:
        reason = "unreadable message"
        if failure is not None and isinstance(failure.get("reason"), str):
            reason = failure["reason"] if failure["reason"].startswith("unreadable") else f"unreadable message: {failure['reason']}"
        return PoisonEntry(message_id, _iso(inserted_on), None, None, None, "unreadable", reason[:500], failure_class="unreadable")
    event: dict[str, Any] = doc["event"] if isinstance(doc.get("event"), dict) else {}
    entry = PoisonEntry(
        message_id,
        _iso(inserted_on),
        key,
        event.get("id") if isinstance(event.get("id"), str) else None,
        doc.get("via") if isinstance(doc.get("via"), str) else None,
        "pipeline" if failure is not None else "host",
        HOST_REASON,
    )
    if failure is not None:
        entry.reason = str(failure.get("reason") or "permanent failure")[:500]
        entry.status = failure.get("status") if isinstance(failure.get("status"), int) else None
        entry.failed_at = failure.get("at") if isinstance(failure.get("at"), str) else None
        attempts = failure.get("attempts", failure.get("dequeueCount"))
        entry.attempts = attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else None
        entry.failure_class = failure.get("class") if isinstance(failure.get("class"), str) else "permanent"
    return entry


def depth(rt: Runtime, name: str = POISON_QUEUE) -> int | None:
    """Approximate message count of a queue (None when it does not exist)."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        return int(_raw_queue(rt, name).get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return None
    except AzureError as exc:
        raise TransientError(f"cannot read queue {name} ({type(exc).__name__})") from None


def peek(rt: Runtime, limit: int = PEEK_MAX) -> tuple[list[PoisonEntry], int | None]:
    """The first ``limit`` (at most 32) poison messages without taking them, and the queue's depth."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    client = _raw_queue(rt, POISON_QUEUE)
    try:
        count = int(client.get_queue_properties().approximate_message_count or 0)
        messages = client.peek_messages(max_messages=max(1, min(limit, PEEK_MAX)))
    except ResourceNotFoundError:
        return [], None
    except AzureError as exc:
        raise TransientError(f"cannot read the poison queue ({type(exc).__name__})") from None
    return [describe(m.id, m.content, m.inserted_on) for m in messages], count


@dataclass
class ReplayReport:
    dry_run: bool
    replayed: list[PoisonEntry] = field(default_factory=list)  # or, in a dry run, would be
    left: int = 0  # not selected
    unreadable: int = 0  # cannot be replayed (left where they are)
    repeated: int = 0  # replayed in this run and parked again meanwhile (left for the next replay)
    delete_failed: int = 0  # replayed but still on the poison queue too (a duplicate, harmless)
    skipped: list[dict[str, str]] = field(default_factory=list)  # could not be sent back: id and reason (left where they are)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.delete_failed == 0 and not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(
            self,
            exclude=("replayed", "duration"),
            ok=self.ok,
            replayed=len(self.replayed),
            duration_seconds=round(self.duration, 3),
            messages=[e.to_dict() for e in self.replayed],
        )


MAX_MESSAGE = 64 * 1024  # Azure Storage's limit for a message's text


def replay_body(content: Any, doc: dict[str, Any]) -> str:
    """The text to put back on ``altinn-events``: base64 JSON without ``failure`` and without the
    retry state (a replay starts the schedule afresh); a message the host moved (base64, neither
    member) goes back exactly as it was."""
    text = _text(content)
    if "failure" not in doc and "retry" not in doc and _base64_json(text) is not None:
        return text
    clean = {k: v for k, v in doc.items() if k not in ("failure", "retry")}
    clean["replayed"] = True  # the hand-off message says so (shared/closing.py)
    return base64.b64encode(json.dumps(clean).encode("utf-8")).decode("ascii")


def _skip(report: ReplayReport, message_id: str, reason: str) -> None:
    report.skipped.append({"messageId": message_id, "reason": reason})
    log.warning("replay: message %s skipped: %s", message_id, reason)


def replay(
    rt: Runtime,
    *,
    instances: Iterable[str] | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    lease: int = LEASE_SECONDS,
    progress: Callable[[ReplayReport], None] | None = None,
) -> ReplayReport:
    """Move poison messages back to the main queue: those of ``instances`` (selectors from
    :func:`parse_selector`), or all readable ones when ``instances`` is None."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    run = _Replay(rt, {parse_selector(s) for s in instances} if instances is not None else None, dry_run, limit, lease)
    try:
        try:
            budget = int(run.poison.get_queue_properties().approximate_message_count or 0) + PEEK_MAX
        except ResourceNotFoundError:
            return run.report
        while budget > 0 and not run.full():
            fresh = run.receive()
            if not fresh:
                break
            for message in fresh:
                budget -= 1
                run.one(message)
            if progress is not None:
                progress(run.report)
    except AzureError as exc:
        raise TransientError(f"replay stopped: storage failed ({type(exc).__name__}) after {len(run.report.replayed)} message(s)") from None
    finally:
        run.release()
    report = run.report
    log.info(
        "poison replay %s: %d replayed, %d left, %d unreadable, %d parked again during the replay, %d skipped",
        "(dry run)" if dry_run else "done",
        len(report.replayed),
        report.left,
        report.unreadable,
        report.repeated,
        len(report.skipped),
    )
    return report


class _Replay:
    """One replay's steps. Messages it does not move stay invisible (``held``) until the end, so a
    scan sees each once; a replayed message that fails again and comes back is recognised."""

    def __init__(self, rt: Runtime, selectors: set[str] | None, dry_run: bool, limit: int | None, lease: int) -> None:
        self.selectors = selectors
        self.limit = limit
        self.lease = lease
        self.started = time.monotonic()
        self.report = ReplayReport(dry_run=dry_run)
        self.poison = _raw_queue(rt, POISON_QUEUE)
        self.target = _raw_queue(rt, EVENTS_QUEUE)
        self.held: dict[str, str] = {}  # message id -> pop receipt
        self.replayed_docs: set[str] = set()  # what this run put back, to recognise it if it fails again

    def full(self) -> bool:
        return self.limit is not None and len(self.report.replayed) >= self.limit

    def receive(self) -> list[Any]:
        batch = list(self.poison.receive_messages(messages_per_page=PEEK_MAX, max_messages=PEEK_MAX, visibility_timeout=self.lease))
        for m in batch:
            if m.id in self.held:
                self.held[m.id] = m.pop_receipt  # it came round again (the lease ran out): keep holding it
        return [m for m in batch if m.id not in self.held]

    def one(self, m: Any) -> None:
        report = self.report
        self.held[m.id] = m.pop_receipt  # released at the end unless it is moved
        doc = decode(m.content)
        key = instance_key(doc)
        if doc is None or key is None:
            report.unreadable += 1
            return
        identity = json.dumps({k: v for k, v in doc.items() if k not in ("failure", "retry", "replayed")}, sort_keys=True)
        if identity in self.replayed_docs:
            report.repeated += 1
        elif not ((self.selectors is None or _matches(key, self.selectors)) and not self.full()):
            report.left += 1
        elif report.dry_run:
            self.replayed_docs.add(identity)
            report.replayed.append(describe(m.id, m.content, m.inserted_on))
        elif self._send(m, replay_body(m.content, doc)):
            self.replayed_docs.add(identity)
            self._moved(m, key, describe(m.id, m.content, m.inserted_on))

    def _send(self, m: Any, body: str) -> bool:
        """Write to the main queue first; False (skipped, reported) when the message cannot go."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

        if len(body) > MAX_MESSAGE:
            _skip(self.report, m.id, f"too large to send back ({len(body)} characters once encoded; the limit is {MAX_MESSAGE})")
            return False
        try:
            try:
                self.target.send_message(body)
            except ResourceNotFoundError:  # (infra creates it; an operator's role may not allow creating it)
                with contextlib.suppress(ResourceExistsError):
                    self.target.create_queue()
                self.target.send_message(body)
        except HttpResponseError as exc:
            if exc.status_code not in (400, 413):  # the service refused this message, not the queue
                raise
            _skip(self.report, m.id, f"refused by the queue (HTTP {exc.status_code}, {safe_text(getattr(exc, 'error_code', None) or 'no code', 60)})")
            return False
        return True

    def _moved(self, m: Any, key: str, entry: PoisonEntry) -> None:
        """... then delete it from the poison queue (a failure there leaves a harmless duplicate)."""
        from azure.core.exceptions import AzureError

        self.report.replayed.append(entry)
        org, app, instance = key.split("/", 2)
        fields = {"instance": instance, "org": org, "app": app, "event_id": entry.event_id}
        log.info("replayed from the poison queue", extra=fields | {"outcome": "replayed", "reason": entry.reason})
        try:
            self.poison.delete_message(m.id, m.pop_receipt)
            del self.held[m.id]
        except AzureError as exc:
            self.report.delete_failed += 1
            log.warning("replayed, but could not delete it from the poison queue (%s): it stays there too", type(exc).__name__, extra=fields)

    def release(self) -> None:
        """Everything held becomes visible again for everyone."""
        from azure.core.exceptions import AzureError

        for message_id, receipt in self.held.items():
            try:
                self.poison.update_message(message_id, receipt, visibility_timeout=0)
            except AzureError:
                pass  # it becomes visible when its lease ends anyway
        self.report.duration = time.monotonic() - self.started
