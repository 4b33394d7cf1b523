"""CloudEvent parsing and validation, and the queue message that carries an accepted event.

Pure code: no I/O. The webhook's rules, in order:

1. the body is at most 64 KiB of JSON with a JSON content type (or none);
2. it is a JSON object and a CloudEvent 1.0 with non-empty string ``id``, ``type`` and ``source``;
3. a subscription validation event is acknowledged and not queued;
4. ``source`` is exactly ``{configured app host}/{org}/{app}/instances/{partyId}/{instanceGuid}``
   for an allowed ``org/app``;
5. an event of a type we do not archive is acknowledged and ignored.

The event is a hint, never an instruction: only the parsed :class:`InstanceRef` travels on,
and the archive function rebuilds every URL from the configured hosts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.config import Settings
from shared.errors import InvalidEvent
from shared.models import MESSAGE_VERSION, EventInfo, InstanceRef, QueueMessage, iso, utc_now
from shared.models import parse_message as parse_message

__all__ = ["MESSAGE_VERSION", "InstanceRef", "evaluate", "parse_message", "queue_message"]

MAX_BODY_BYTES = 64 * 1024
VALIDATION_TYPE = "platform.events.validatesubscription"

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PARTY = re.compile(r"[1-9][0-9]{0,18}")
_ID = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces or control characters
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_JSON_TYPES = ("application/json", "application/cloudevents+json", "text/json")


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    source: str
    time: str | None


@dataclass(frozen=True)
class Outcome:
    """What the webhook should answer and, when ``message`` is set, what to queue."""

    status: int
    body: dict[str, Any]
    message: dict[str, Any] | None = None
    event: Event | None = None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidEvent("duplicate_member", f"the JSON object has the member {key[:40]!r} twice")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidEvent("invalid_json", f"{name} is not valid JSON")


def check_content_type(content_type: str | None) -> None:
    """A JSON media type, or none at all. Anything else is 415."""
    if not content_type or not content_type.strip():
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise InvalidEvent("unsupported_media_type", "the body must be application/json", status=415)


def parse_body(body: bytes) -> dict[str, Any]:
    """Bytes -> JSON object, strictly (UTF-8, no duplicate members, no NaN, bounded size)."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEvent("too_large", f"the body is larger than {MAX_BODY_BYTES} bytes", status=413)
    if not body.strip():
        raise InvalidEvent("empty_body", "the body is empty; a CloudEvent in JSON is expected")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent("invalid_encoding", "the body is not UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent("invalid_json", "the JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", f"the body is not valid JSON ({exc.msg} at {exc.pos})") from None
    except ValueError:
        # Not a JSONDecodeError: e.g. an integer longer than Python's int_max_str_digits (4300).
        raise InvalidEvent("invalid_json", "the body is not valid JSON (a number is too long)") from None
    if not isinstance(data, dict):
        raise InvalidEvent("not_an_object", f"a CloudEvent must be a JSON object, not {type(data).__name__}")
    return data


def _string(data: Mapping[str, Any], name: str, pattern: re.Pattern[str] | None, limit: int) -> str:
    if name not in data:
        raise InvalidEvent("missing_attribute", f"the CloudEvent attribute {name!r} is missing")
    value = data[name]
    if not isinstance(value, str):
        raise InvalidEvent("invalid_attribute", f"the attribute {name!r} must be a string")
    if not value:
        raise InvalidEvent("invalid_attribute", f"the attribute {name!r} must not be empty")
    if len(value) > limit:
        raise InvalidEvent("invalid_attribute", f"the attribute {name!r} is longer than {limit} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidEvent("invalid_attribute", f"the attribute {name!r} has characters that are not allowed")
    return value


def _time(data: Mapping[str, Any]) -> str | None:
    if "time" not in data or data["time"] is None:
        return None
    value = data["time"]
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidEvent("invalid_attribute", "the attribute 'time' must be an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        # Altinn sends 7 fractional digits; Python 3.11 accepts at most 6.
        trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value)
        try:
            parsed = datetime.fromisoformat(trimmed.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidEvent("invalid_attribute", "the attribute 'time' must be an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidEvent("invalid_attribute", "the attribute 'time' must carry a time zone")
    return value


def parse_cloud_event(data: Mapping[str, Any]) -> Event:
    specversion = data.get("specversion")
    if specversion != "1.0":
        raise InvalidEvent("unsupported_specversion", "the attribute 'specversion' must be \"1.0\"")
    return Event(
        id=_string(data, "id", _ID, 256),
        type=_string(data, "type", _TYPE, 200),
        source=_string(data, "source", None, 2048),
        time=_time(data),
    )


def parse_source(settings: Settings, source: str) -> InstanceRef:
    """``source`` -> InstanceRef, only when it names exactly an allowed app on its configured host."""
    for org, app in sorted(settings.apps):
        prefix = f"{settings.apps_base(org)}/{org}/{app}/instances/"
        if not source.startswith(prefix):
            continue
        party, sep, guid = source[len(prefix) :].partition("/")
        if sep and _PARTY.fullmatch(party) and _GUID.fullmatch(guid):
            return InstanceRef(org, app, party, guid)
        raise InvalidEvent(
            "invalid_source",
            "the source must end in /instances/{partyId}/{instanceGuid}: partyId digits, instanceGuid a lowercase GUID, nothing after it",
        )
    raise InvalidEvent(
        "invalid_source",
        "the source is not an instance of an app this receiver serves on its configured Altinn host",
    )


def evaluate(settings: Settings, body: bytes, content_type: str | None = None, *, now: datetime | None = None) -> Outcome:
    """Apply every webhook rule. Raises InvalidEvent for a request to refuse."""
    check_content_type(content_type)
    event = parse_cloud_event(parse_body(body))
    if event.type == VALIDATION_TYPE:
        return Outcome(200, {"status": "validated", "id": event.id}, event=event)
    ref = parse_source(settings, event.source)
    if event.type not in settings.event_types:
        return Outcome(200, {"status": "ignored", "id": event.id, "reason": f"event type {event.type} is not archived"}, event=event)
    return Outcome(202, {"status": "queued", "id": event.id}, message=queue_message(event, ref, via="webhook", now=now), event=event)


def queue_message(event: Event | None, ref: InstanceRef, *, via: str, now: datetime | None = None) -> dict[str, Any]:
    """The message on ``altinn-events`` (:class:`~shared.models.QueueMessage`); the webhook, catch-up
    and the CLI all write this shape."""
    info = None if event is None else EventInfo(event.id, event.type, event.source, event.time)
    return QueueMessage(ref=ref, via=via, queued_at=iso(now or utc_now()), event=info).to_dict()
