"""The closed sets of names, and the helpers that turn our models into the documented JSON.

Pure code: no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What happened to one queue message (logs' ``outcome``, metrics, CLI output)."""

    ARCHIVED = "archived"  # archived and confirmed now
    CONFIRMED_ONLY = "confirmed-only"  # archived earlier, confirmed now
    ALREADY_ARCHIVED = "already-archived"  # archived and confirmed earlier: nothing done
    DEFERRED = "deferred"  # a transient failure: the next attempt is scheduled on the queue
    PARKED = "parked"  # put on the poison queue, with the reason


class FailureClass(StrEnum):
    """Why an attempt failed (``failure_class`` in logs and metrics)."""

    TRANSIENT = "transient"  # may pass: retried on the app's schedule
    CONFIG = "config"  # a setting or the key is wrong or not resolved yet: retried on the schedule
    PERMANENT = "permanent"  # retrying cannot help: parked at once
    UNREADABLE = "unreadable"  # the queue message itself is not ours: parked at once
    RETRIES_EXHAUSTED = "retries-exhausted"  # transient for longer than ARCHIVE_RETRY_MAX_HOURS: parked
    CONFIRMATION_REFUSED = "confirmation-refused"  # archived whole, /complete refused (403): parked once


class ScanResult(StrEnum):
    NOT_APPLICABLE = "NotApplicable"
    PENDING = "Pending"
    CLEAN = "Clean"
    INFECTED = "Infected"


def camel(name: str) -> str:
    """``data_element_id`` -> ``dataElementId``: the documented JSON's member names."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def to_json_dict(obj: Any, *, exclude: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A dataclass as the documented JSON: every field (but ``exclude`` and fields marked
    ``metadata={"json": False}``) under its camelCase name, enums as their values, datetimes in
    ISO form, nested dataclasses and lists likewise; ``extra`` adds computed members. The one
    place where our models become JSON."""
    from dataclasses import fields, is_dataclass

    def value(v: Any) -> Any:
        if isinstance(v, StrEnum):
            return v.value
        if isinstance(v, datetime):
            return iso(v)
        if is_dataclass(v) and not isinstance(v, type):
            return to_json_dict(v)
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        return v

    doc = {camel(f.name): value(getattr(obj, f.name)) for f in fields(obj) if f.name not in exclude and f.metadata.get("json", True)}
    doc.update((camel(k), value(v)) for k, v in extra.items())
    return doc


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    """``2025-01-01T10:00:00.123456Z``"""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time with a zone (Altinn sends up to 7 fractional digits), or None."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
