"""SimInstance: an instance as storage holds it, and the documents storage renders from it."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from typing import Any

from .dotnet import _drop_nulls, _iso_us
from .model import ElementSpec, _Body

_MAX_EXPECTED_BYTES = 64 << 20


class SimInstance:
    """An Altinn instance held by the simulator. Attributes may be changed by tests at any time.

    ``elements`` are the stored data element documents (what storage serves, before its self links);
    ``confirmed_by``, ``hard_deleted``, ``process_ended``, ``substatus``, ``instance_owner`` and
    ``last_changed`` (seconds) are the state the documents are rendered from.
    """

    def __init__(
        self,
        platform_base: str,
        apps_base: str,
        org: str,
        app: str,
        party_id: str,
        instance_guid: str,
        *,
        process_ended: bool,
        confirmed_by: list[str],
        hard_deleted: bool,
        now_us: int,
    ) -> None:
        self.org = org
        self.app = app
        self.party_id = party_id
        self.instance_guid = instance_guid
        self.process_ended = process_ended
        self.confirmed_by: list[str] = list(confirmed_by)
        self.hard_deleted = hard_deleted
        self.instance_owner: dict[str, Any] = {"partyId": party_id}
        self.substatus: dict[str, Any] | None = None
        self.party_name: str | None = None
        self.removed = False
        self.elements: list[dict[str, Any]] = []
        self._platform = platform_base
        self._apps = apps_base
        self._created_us = now_us
        self._last_changed_us = now_us
        self._lc_text: str | None = None  # a loaded document's own lastChanged, until the instance changes
        self._ended_us: int | None = now_us if process_ended else None
        self._hard_deleted_us: int | None = now_us if hard_deleted else None
        self._confirmed_on: dict[str, str] = {}
        self._seq = 0  # storage's internal id (the bigint in the continuation token)
        self._bodies: dict[str, _Body] = {}
        self._specs: dict[str, ElementSpec] = {}  # add_instance's specs, by element id (kept for older tests)
        self._sha256: dict[str, str] = {}
        self._doc: dict[str, Any] | None = None  # a loaded document (load_instance)
        self._doc_process: dict[str, Any] | None = None
        self._doc_status: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.party_id}/{self.instance_guid}"

    @property
    def app_url(self) -> str:
        """The instance on the app API (``sim.apps_url``)."""
        return f"{self._apps}/{self.org}/{self.app}/instances/{self.id}"

    @property
    def platform_url(self) -> str:
        """The instance on the storage API (``sim.url``)."""
        return f"{self._platform}/storage/api/v1/instances/{self.id}"

    def data_url(self, element_id: str) -> str:
        """An element on the storage API."""
        return f"{self.platform_url}/data/{element_id}"

    def app_data_url(self, element_id: str) -> str:
        """An element on the app API."""
        return f"{self.app_url}/data/{element_id}"

    @property
    def created(self) -> float:
        return self._created_us / 1_000_000

    @property
    def last_changed(self) -> float:
        return self._last_changed_us / 1_000_000

    @last_changed.setter
    def last_changed(self, value: float) -> None:
        self._set_last_changed(round(value * 1_000_000))

    def _set_last_changed(self, us: int) -> None:
        self._last_changed_us = us
        self._lc_text = None

    def _element_json(self, element_id: str, spec: ElementSpec) -> dict[str, Any]:
        created = _iso_us(self._created_us)
        return {
            "id": element_id,
            "instanceGuid": self.instance_guid,
            "dataType": spec.data_type,
            "filename": spec.filename,
            "contentType": spec.content_type,
            # altinn-storage src/Storage/Helpers/DataElementHelper.cs DataFileName: {appId}/{instanceGuid}/data/{dataId}
            "blobStoragePath": f"{self.org}/{self.app}/{self.instance_guid}/data/{element_id}",
            "selfLinks": {"platform": self.data_url(element_id)},
            "size": spec.size,
            "contentHash": None,
            "locked": self.process_ended,
            "refs": [],
            "isRead": True,
            "tags": [],
            "fileScanResult": spec.file_scan_result,
            "created": created,
            "createdBy": self.party_id,
            "lastChanged": created,
            "lastChangedBy": self.party_id,
        }

    def element(self, element_id: str) -> dict[str, Any]:
        """The stored JSON dict of a data element (KeyError when unknown); ids compare case-insensitively."""
        wanted = element_id.lower()
        for element in self.elements:
            if str(element.get("id", "")).lower() == wanted:
                return element
        raise KeyError(element_id)

    def _body(self, element_id: str) -> _Body:
        return self._bodies[element_id.lower()]

    def stored_size(self, element_id: str) -> int:
        """The length of the element's stored body (what storage's Content-Length says; ``size`` may differ)."""
        return self._body(element_id).size

    def iter_content(self, element_id: str) -> Iterator[bytes | memoryview]:
        """The element's stored body, chunk by chunk."""
        return self._body(element_id).chunks()

    def expected_sha256(self, element_id: str) -> str:
        """Hex SHA-256 of the element's stored body, computed by regenerating it (cached)."""
        key = element_id.lower()
        digest = self._sha256.get(key)
        if digest is None:
            h = hashlib.sha256()
            for chunk in self.iter_content(element_id):
                h.update(chunk)
            digest = self._sha256[key] = h.hexdigest()
        return digest

    def expected_bytes(self, element_id: str) -> bytes:
        """The element's whole stored body; only for small elements (up to 64 MiB)."""
        if self._body(element_id).size > _MAX_EXPECTED_BYTES:
            raise ValueError("element too large for expected_bytes; use expected_sha256")
        return self._body(element_id).read()

    def _mark_ended(self) -> None:
        if self.process_ended and self._ended_us is None:
            self._ended_us = self._last_changed_us
        if self.hard_deleted and self._hard_deleted_us is None:
            self._hard_deleted_us = self._last_changed_us

    def _process_regenerated(self) -> bool:
        return self._doc_process is None or bool(self._doc_process.get("ended")) != self.process_ended

    def _process_json(self) -> dict[str, Any]:
        self._mark_ended()
        if not self._process_regenerated():
            return copy.deepcopy(self._doc_process or {})
        created = _iso_us(self._created_us)
        if self.process_ended:
            return {"started": created, "startEvent": "StartEvent_1", "ended": _iso_us(self._ended_us or self._created_us), "endEvent": "EndEvent_1"}
        task = {
            "flow": 2,
            "started": created,
            "elementId": "Task_1",
            "name": "Utfylling",
            "altinnTaskType": "data",
            "flowType": "CompleteCurrentMoveToNext",
        }
        return {"started": created, "startEvent": "StartEvent_1", "currentTask": task}

    def _status_json(self) -> dict[str, Any]:
        self._mark_ended()
        if self._doc_status is not None:
            status = copy.deepcopy(self._doc_status)
        else:
            status = {"isArchived": False, "archived": None, "isSoftDeleted": False, "softDeleted": None, "isHardDeleted": False, "hardDeleted": None}
            status["readStatus"] = "Read"
        if self._process_regenerated():
            status["isArchived"] = self.process_ended
            status["archived"] = _iso_us(self._ended_us or self._created_us) if self.process_ended else None
        was_hard_deleted = bool((self._doc_status or {}).get("isHardDeleted"))
        status["isHardDeleted"] = self.hard_deleted
        if self.hard_deleted:
            # altinn-storage src/Storage/Controllers/InstancesController.cs Delete(hard): IsHardDeleted, IsSoftDeleted,
            # HardDeleted = now, SoftDeleted ??= now.
            when = status.get("hardDeleted") if was_hard_deleted and status.get("hardDeleted") else _iso_us(self._hard_deleted_us or self._last_changed_us)
            status["hardDeleted"] = when
            status["isSoftDeleted"] = True
            status["softDeleted"] = status.get("softDeleted") or when
        else:
            status["hardDeleted"] = None
        status["substatus"] = copy.deepcopy(self.substatus)
        return status

    def _confirmations_json(self) -> list[dict[str, Any]] | None:
        created = _iso_us(self._created_us)
        return [{"stakeholderId": s, "confirmedOn": self._confirmed_on.get(s, created)} for s in self.confirmed_by] or None

    def _storage_element(self, element: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(element)
        links = doc["selfLinks"] if isinstance(doc.get("selfLinks"), dict) else {}
        element_id: Any = doc.get("id")
        new_links: dict[str, Any] = {}
        if links.get("apps"):
            new_links["apps"] = self.app_data_url(element_id)
        # altinn-storage src/Storage.Interface/Models/DataElement.cs SetPlatformSelfLinks: only Platform is set.
        new_links["platform"] = self.data_url(element_id)
        doc["selfLinks"] = new_links
        return doc

    def _generated_base(self) -> dict[str, Any]:
        created = _iso_us(self._created_us)
        return {
            "id": None,
            "instanceOwner": None,
            "appId": None,
            "org": None,
            "selfLinks": None,
            "dueBefore": None,
            "visibleAfter": created,
            "process": None,
            "status": None,
            "completeConfirmations": None,
            "data": None,
            "created": created,
            "createdBy": self.party_id,
            "lastChanged": None,
            "lastChangedBy": self.party_id,
        }

    def to_json(self, *, omit_nulls: bool = False) -> dict[str, Any]:
        """The instance as storage holds it; ``omit_nulls=True`` is exactly what storage's GET serves."""
        doc = copy.deepcopy(self._doc) if self._doc is not None else self._generated_base()
        doc["id"] = self.id
        doc["instanceOwner"] = copy.deepcopy(self.instance_owner)
        doc["appId"] = f"{self.org}/{self.app}"
        doc["org"] = self.org
        old_links = doc["selfLinks"] if isinstance(doc.get("selfLinks"), dict) else {}
        # altinn-storage src/Storage.Interface/Models/Instance.cs SetPlatformSelfLinks sets Platform; storage never
        # writes Apps (CreateInstanceFromTemplate has no SelfLinks), so it is there only if the document had one.
        links: dict[str, Any] = {"apps": self.app_url} if old_links.get("apps") else {}
        links["platform"] = self.platform_url
        doc["selfLinks"] = links
        doc["process"] = self._process_json()
        doc["status"] = self._status_json()
        doc["completeConfirmations"] = self._confirmations_json()
        doc["data"] = [self._storage_element(e) for e in self.elements]
        doc["lastChanged"] = self._lc_text or _iso_us(self._last_changed_us)
        return _drop_nulls(doc) if omit_nulls else doc

    def __repr__(self) -> str:
        return f"SimInstance({self.org}/{self.app} {self.id}, {len(self.elements)} elements)"
