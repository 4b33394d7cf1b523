"""Altinn storage's instance document, parsed strictly: :func:`parse_instance` fails closed and
every refusal names the member (:class:`~shared.errors.InvalidInstance`, permanent: the same
document fails the same way every time).

The shapes follow Altinn/altinn-storage (d9364e40) ``src/Storage.Interface/Models/Instance.cs``,
``DataElement.cs`` (``size`` a ``long``) and ``Enums/FileScanResult.cs``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InvalidInstance
from shared.models.names import ScanResult, parse_time
from shared.models.ref import InstanceRef

# Altinn's data element ids are GUIDs; accept any single safe path segment, never "/", ".", "%" or "?".
DATA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# RFC 9110 media type: token "/" token, then parameters; no control characters anywhere.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}(?:\s*;[\x20-\x7e]*)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_ELEMENTS = 100_000
MAX_SIZE = 2**53  # larger than any blob Azure stores (~190.7 TiB); keeps JSON numbers exact
MAX_FILENAME = 1024


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
    # status.substatus (label, description) as storage has it; None when unset. Only compared with
    # the substatus we would set, so an odd shape there is read as unset instead of refused.
    substatus: tuple[str, str | None] | None = None

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
    return Instance(ref, ended, end_event, bool(hard_deleted), frozenset(confirmed_by), elements, doc, _substatus(status.get("substatus")))


def _substatus(value: Any) -> tuple[str, str | None] | None:
    """altinn-storage Substatus.cs: ``{"label": string, "description": string}`` (both nullable)."""
    if not isinstance(value, dict) or not isinstance(value.get("label"), str):
        return None
    description = value.get("description")
    return value["label"], description if isinstance(description, str) else None
