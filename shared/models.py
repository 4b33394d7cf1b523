"""Typed models of what crosses our boundaries, each parsed strictly and refused when it does not fit.

* :class:`InstanceRef` - what identifies an instance; everything else is derived from configuration.
* :class:`Instance` and :class:`DataElement` - Altinn storage's instance document
  (``GET {platform}/storage/api/v1/instances/{partyId}/{instanceGuid}``). Upstream is untrusted:
  :func:`parse_instance` fails closed, and every refusal names the field
  (:class:`~shared.errors.InvalidInstance`, a permanent failure: the same document fails the same way
  every time, so retrying cannot help).
* :class:`QueueMessage` - the message on ``altinn-events`` that the webhook, catch-up, the CLI and
  the retry schedule write, and the archive function reads (:func:`parse_message`).
* :class:`Outcome`, :class:`FailureClass` and :class:`ScanResult` - the closed sets of names that
  logs, metrics, manifests and reports use.

Pure code: no I/O.

The shapes follow Altinn's own models (Altinn/altinn-storage at d9364e40):
``src/Storage.Interface/Models/Instance.cs`` (``id`` = ``{partyId}/{instanceGuid}``, ``appId``,
``org``, ``process``, ``status``, ``completeConfirmations``, ``data``, nulls omitted),
``src/Storage.Interface/Models/DataElement.cs`` (``id``, ``dataType``, ``contentType``,
``filename``, ``size`` as a ``long``, ``fileScanResult``) and
``src/Storage.Interface/Enums/FileScanResult.cs`` (NotApplicable, Pending, Clean, Infected).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shared.errors import InvalidInstance

MESSAGE_VERSION = 1

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PARTY = re.compile(r"[1-9][0-9]{0,18}")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
# Altinn's data element ids are GUIDs; accept any single safe path segment, never "/", ".", "%" or "?".
DATA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# RFC 9110 media type: token "/" token, then parameters; no control characters anywhere.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}(?:\s*;[\x20-\x7e]*)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_ELEMENTS = 100_000
MAX_SIZE = 2**53  # larger than any blob Azure stores (~190.7 TiB); keeps JSON numbers exact
MAX_FILENAME = 1024


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


# -- the instance reference -------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRef:
    """What identifies an instance: everything else is derived from configuration."""

    org: str
    app: str
    party_id: str
    instance_guid: str

    @property
    def instance_id(self) -> str:
        return f"{self.party_id}/{self.instance_guid}"

    @property
    def app_id(self) -> str:
        return f"{self.org}/{self.app}"

    @property
    def prefix(self) -> str:
        """Blob name prefix of this instance's archive."""
        return f"{self.org}/{self.app}/{self.party_id}/{self.instance_guid}/"

    @property
    def key(self) -> str:
        """``org/app/partyId/instanceGuid``"""
        return f"{self.org}/{self.app}/{self.instance_id}"

    def to_dict(self) -> dict[str, str]:
        return {"org": self.org, "app": self.app, "partyId": self.party_id, "instanceGuid": self.instance_guid}

    @classmethod
    def parse(cls, org: str, app: str, instance_id: str) -> InstanceRef:
        """From ``org``, ``app`` and ``partyId/instanceGuid``; raises ValueError when malformed."""
        party, _, guid = instance_id.partition("/")
        guid = guid.lower()
        if not (_NAME.fullmatch(org) and _NAME.fullmatch(app) and _PARTY.fullmatch(party) and _GUID.fullmatch(guid)):
            raise ValueError(f"not an instance reference: {org[:64]}/{app[:64]} {instance_id[:100]!r}")
        return cls(org, app, party, guid)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceRef:
        values = []
        for name in ("org", "app", "partyId", "instanceGuid"):
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"instance reference lacks {name}" if value is None else f"instance reference: {name} is not a string")
            values.append(value)
        return cls.parse(values[0], values[1], f"{values[2]}/{values[3]}")


# -- Altinn storage's instance document -------------------------------------------------------


@dataclass(frozen=True)
class DataElement:
    id: str
    data_type: str
    content_type: str
    filename: str | None
    size: int
    file_scan_result: ScanResult

    @property
    def infected(self) -> bool:
        return self.file_scan_result is ScanResult.INFECTED


@dataclass(frozen=True)
class Instance:
    """Storage's instance document, checked; ``document`` is what Altinn sent (for ``instance.json``)."""

    ref: InstanceRef
    process_ended: str
    end_event: str | None
    hard_deleted: bool
    confirmed_by: frozenset[str]
    data: tuple[DataElement, ...]
    document: dict[str, Any] = field(repr=False, compare=False)

    @property
    def confirmed_by_org(self) -> bool:
        return self.ref.org in self.confirmed_by

    @property
    def pending(self) -> list[str]:
        """Ids of data elements whose file scan has not finished."""
        return [e.id for e in self.data if e.file_scan_result is ScanResult.PENDING]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.data)


def _where(path: str, problem: str) -> InvalidInstance:
    return InvalidInstance(path, problem)


def _member(doc: Mapping[str, Any], name: str, path: str, kinds: type | tuple[type, ...], *, required: bool = True) -> Any:
    if name not in doc or doc[name] is None:
        if required:
            raise _where(f"{path}{name}", "is missing")
        return None
    value = doc[name]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _where(f"{path}{name}", "has the wrong type (a boolean)")
    if not isinstance(value, kinds):
        raise _where(f"{path}{name}", f"has the wrong type ({type(value).__name__})")
    return value


def _text(doc: Mapping[str, Any], name: str, path: str, *, required: bool = True, limit: int = 1024) -> str | None:
    value = _member(doc, name, path, str, required=required)
    if value is None:
        return None
    if required and not value:
        raise _where(f"{path}{name}", "is empty")
    if len(value) > limit:
        raise _where(f"{path}{name}", f"is longer than {limit} characters")
    return value


def _element(doc: Any, index: int) -> DataElement:
    path = f"data[{index}]."
    if not isinstance(doc, dict):
        raise _where(f"data[{index}]", f"is not an object ({type(doc).__name__})")
    element_id = _text(doc, "id", path, limit=128)
    assert element_id is not None
    if not DATA_ID.fullmatch(element_id):
        raise _where(f"{path}id", "is not a plain identifier (letters, digits, '-', '_')")
    size = _member(doc, "size", path, int)
    if size < 0 or size > MAX_SIZE:
        raise _where(f"{path}size", "is not a non-negative integer in range")
    content_type = _text(doc, "contentType", path, limit=255)
    assert content_type is not None
    if not _MEDIA_TYPE.fullmatch(content_type) or _CONTROL.search(content_type):
        raise _where(f"{path}contentType", "is not a media type (type/subtype, printable ASCII)")
    data_type = _text(doc, "dataType", path, limit=255)
    assert data_type is not None
    if _CONTROL.search(data_type):
        raise _where(f"{path}dataType", "contains control characters")
    filename = _text(doc, "filename", path, required=False, limit=MAX_FILENAME)
    scan = _member(doc, "fileScanResult", path, str, required=False)
    try:
        result = ScanResult(scan) if scan is not None else ScanResult.NOT_APPLICABLE
    except ValueError:
        raise _where(f"{path}fileScanResult", f"is not one of {', '.join(s.value for s in ScanResult)}") from None
    return DataElement(element_id, data_type, content_type, filename or None, size, result)


def parse_instance(doc: Any, ref: InstanceRef) -> Instance:
    """Storage's instance document for ``ref``, checked member by member. Raises InvalidInstance.

    Fails closed: the instance must be the one asked for (``id``, ``appId``, ``org``), its process
    must have ended, ``data`` must be a list of elements each with a plain string id, a non-negative
    integer ``size`` and a media type, and the ids must be unique. Nothing is archived or confirmed
    for an instance that does not pass.
    """
    if not isinstance(doc, dict):
        raise _where("instance", f"is not a JSON object ({type(doc).__name__})")
    instance_id = _text(doc, "id", "", limit=200)
    assert instance_id is not None
    if instance_id.lower() != ref.instance_id:
        raise _where("id", "is not the instance that was asked for")
    if _text(doc, "appId", "", limit=200) != ref.app_id:
        raise _where("appId", "is not the app of the instance that was asked for")
    if _text(doc, "org", "", limit=100) != ref.org:
        raise _where("org", "is not the org of the instance that was asked for")
    process = _member(doc, "process", "", dict)
    ended = _member(process, "ended", "process.", str, required=False)
    if not ended:
        raise _where("process.ended", "is not set: the instance's process has not ended")
    if parse_time(ended) is None:
        raise _where("process.ended", "is not an RFC 3339 time")
    end_event = _text(process, "endEvent", "process.", required=False, limit=255)
    status = _member(doc, "status", "", dict, required=False) or {}
    hard_deleted = _member(status, "isHardDeleted", "status.", bool, required=False) or False
    confirmations = _member(doc, "completeConfirmations", "", list, required=False) or []
    confirmed_by = set()
    for i, item in enumerate(confirmations):
        if not isinstance(item, dict):
            raise _where(f"completeConfirmations[{i}]", "is not an object")
        stakeholder = _text(item, "stakeholderId", f"completeConfirmations[{i}].", required=False, limit=100)
        if stakeholder:
            confirmed_by.add(stakeholder)
    data = _member(doc, "data", "", list)
    if len(data) > MAX_ELEMENTS:
        raise _where("data", f"has more than {MAX_ELEMENTS} elements")
    elements = tuple(_element(e, i) for i, e in enumerate(data))
    seen: set[str] = set()
    for i, e in enumerate(elements):
        if e.id.lower() in seen:
            raise _where(f"data[{i}].id", "is not unique: two data elements have the same id")
        seen.add(e.id.lower())
    return Instance(ref, ended, end_event, bool(hard_deleted), frozenset(confirmed_by), elements, doc)


# -- the queue message ------------------------------------------------------------------------


VIAS = frozenset({"webhook", "catch-up", "cli", "replay", "bench"})


@dataclass(frozen=True)
class EventInfo:
    """What the queue keeps of the CloudEvent: a hint, never an instruction."""

    id: str
    type: str
    source: str
    time: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "source": self.source, "time": self.time}


@dataclass(frozen=True)
class RetryState:
    """Carried by a message the retry schedule wrote: how many attempts failed, since when, and why."""

    attempt: int  # failed attempts so far (>= 1)
    first_failure_at: datetime
    last_reason: str
    last_status: int | None = None
    not_found: int = 0  # the last attempts in a row that got 404

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "firstFailureAt": iso(self.first_failure_at),
            "lastReason": self.last_reason,
            "lastStatus": self.last_status,
            "notFound": self.not_found,
        }


@dataclass(frozen=True)
class QueueMessage:
    """The message on ``altinn-events`` (JSON; base64 on the queue, as the Functions host reads it)."""

    ref: InstanceRef
    via: str
    queued_at: str
    event: EventInfo | None = None
    retry: RetryState | None = None

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
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _message_event(raw: Any) -> EventInfo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("the queue message's event is not an object")
    values = {k: raw.get(k) for k in ("id", "type", "source")}
    if not all(isinstance(v, str) and v and len(v) <= 2048 for v in values.values()):
        raise ValueError("the queue message's event lacks id, type or source")
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
    )
