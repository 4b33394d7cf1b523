"""The message on ``altinn-events`` that the webhook, catch-up, the CLI and the retry schedule
write and the archive function reads: parsed strictly, refused (ValueError) when it is not ours."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.models.names import parse_time, to_json_dict
from shared.models.ref import InstanceRef

MESSAGE_VERSION = 1


VIAS = frozenset({"webhook", "catch-up", "cli", "replay", "bench"})


@dataclass(frozen=True)
class EventInfo:
    """What the queue keeps of the CloudEvent: a hint, never an instruction."""

    id: str
    type: str
    source: str
    time: str | None

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


@dataclass(frozen=True)
class RetryState:
    """Carried by a message the retry schedule wrote: how many attempts failed, since when, and why."""

    attempt: int  # failed attempts so far (>= 1)
    first_failure_at: datetime
    last_reason: str
    last_status: int | None = None
    not_found: int = 0  # the last attempts in a row that got 404

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


@dataclass(frozen=True)
class QueueMessage:
    """The message on ``altinn-events`` (JSON; base64 on the queue, as the Functions host reads it)."""

    ref: InstanceRef
    via: str
    queued_at: str
    event: EventInfo | None = None
    retry: RetryState | None = None
    replayed: bool = False  # put back from the poison queue by `altinn-mottak replay`

    @property
    def event_id(self) -> str | None:
        return self.event.id if self.event else None

    @property
    def attempt(self) -> int:
        return self.retry.attempt if self.retry else 0

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": MESSAGE_VERSION,
            "event": self.event.to_dict() if self.event else None,
            "instance": self.ref.to_dict(),
            "via": self.via,
            "queuedAt": self.queued_at,
        }
        if self.retry is not None:
            doc["retry"] = self.retry.to_dict()
        if self.replayed:
            doc["replayed"] = True
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _message_event(raw: Any) -> EventInfo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("the queue message's event is not an object")
    values: dict[str, str] = {}
    for name in ("id", "type", "source"):
        value = raw.get(name)
        if not isinstance(value, str) or not value or len(value) > 2048:
            raise ValueError("the queue message's event lacks id, type or source")
        values[name] = value
    when = raw.get("time")
    if when is not None and not isinstance(when, str):
        raise ValueError("the queue message's event time is not a string")
    return EventInfo(values["id"], values["type"], values["source"], when)


def _message_retry(raw: Any) -> RetryState | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("the queue message's retry state is not an object")
    attempt = raw.get("attempt")
    first = parse_time(raw.get("firstFailureAt"))
    reason = raw.get("lastReason")
    status = raw.get("lastStatus")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= 100_000 or first is None:
        raise ValueError("the queue message's retry state is malformed")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
        status = None
    not_found = raw.get("notFound", 0)
    if not isinstance(not_found, int) or isinstance(not_found, bool) or not_found < 0:
        not_found = 0
    return RetryState(attempt, first, reason[:2000] if isinstance(reason, str) else "", status, min(not_found, attempt))


def message_document(body: bytes | str) -> dict[str, Any]:
    """The JSON object of a queue message (plain or base64 JSON). ValueError when it is neither."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the queue message is not UTF-8") from None
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("the queue message is nested too deeply") from None
    except ValueError:
        try:
            data = json.loads(base64.b64decode(body, validate=True).decode("utf-8"))
        except (binascii.Error, ValueError, RecursionError):
            raise ValueError("the queue message is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the queue message is not a JSON object")
    return data


def parse_message(body: bytes | str) -> QueueMessage:
    """Queue message -> QueueMessage. ValueError (with a reason) when it is not ours."""
    data = message_document(body)
    if not isinstance(data.get("instance"), dict):
        raise ValueError("the queue message has no instance reference")
    ref = InstanceRef.from_dict(data["instance"])
    via = data.get("via")
    queued_at = data.get("queuedAt")
    return QueueMessage(
        ref=ref,
        via=via if isinstance(via, str) and via in VIAS else "unknown",
        queued_at=queued_at if isinstance(queued_at, str) and len(queued_at) <= 64 else "",
        event=_message_event(data.get("event")),
        retry=_message_retry(data.get("retry")),
        replayed=data.get("replayed") is True,
    )
