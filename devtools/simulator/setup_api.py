"""The set-up API: apps, parties and instances (made from specs, or loaded from a document)."""

from __future__ import annotations

import copy
import hashlib
import uuid
from typing import Any

from .base import SimulatorBase
from .dotnet import _parse_time_us
from .instance import SimInstance
from .model import ElementSpec, SimApp, _Body, attachment_data_type, form_data_type


class SetupMixin(SimulatorBase):
    """What tests call to set the simulator up, and the look-ups behind it."""

    def add_app(
        self,
        org: str,
        app: str,
        *,
        data_types: list[dict[str, Any] | str] | None = None,
        complete_allowed: bool = True,
        deployed: bool = True,
    ) -> SimApp:
        """Register (or replace) an app's metadata. ``data_types``: applicationmetadata.json data type dicts,
        or ids (a plain attachment type); default one form data type ``model``."""
        types = [dict(t) if isinstance(t, dict) else attachment_data_type(t) for t in data_types] if data_types is not None else [form_data_type()]
        sim_app = SimApp(org, app, types, complete_allowed=complete_allowed, deployed=deployed)
        with self._lock:
            self._apps[(org, app)] = sim_app
        return sim_app

    def app(self, org: str, app: str) -> SimApp:
        """The app's metadata and policy (KeyError when unknown); tests may change its fields."""
        with self._lock:
            return self._apps[(org, app)]

    def _ensure_app(self, org: str, app: str, type_ids: list[Any]) -> SimApp:
        with self._lock:
            sim_app = self._apps.get((org, app))
            if sim_app is None:
                sim_app = self._apps[(org, app)] = SimApp(org, app, [form_data_type()], auto=True)
            if sim_app.auto:
                for type_id in type_ids:
                    if isinstance(type_id, str) and sim_app.data_type(type_id) is None:
                        is_form = type_id.lower() == "model"
                        sim_app.data_types.append(form_data_type(type_id) if is_form else attachment_data_type(type_id))
            return sim_app

    def register_party(self, party_id: str | int, *, person_number: str | None = None, organisation_number: str | None = None, name: str | None = None) -> None:
        """A party for the register: the app API's ``instanceOwner.party`` and events' alternative-subject lookup."""
        with self._lock:
            self.parties[str(party_id)] = {"ssn": person_number, "orgNumber": organisation_number, "name": name}

    def add_instance(
        self,
        org: str,
        app: str,
        elements: list[ElementSpec] | None = None,
        *,
        party_id: str | None = None,
        instance_guid: str | None = None,
        process_ended: bool = True,
        confirmed_by: list[str] | None = None,
        hard_deleted: bool = False,
    ) -> SimInstance:
        """Create an instance (default: one 400-byte XML form element of data type ``model``)."""
        specs = list(elements) if elements is not None else [ElementSpec()]
        with self._lock:
            sim_app = self._ensure_app(org, app, [s.data_type for s in specs])
            if party_id is None:
                self._next_party += 1
                party_id = str(self._next_party)
            if not str(party_id).isdigit():
                raise ValueError("party_id must be digits")
            guid = str(uuid.UUID(instance_guid)) if instance_guid else str(uuid.uuid4())
            inst = SimInstance(
                self.url,
                self.apps_url,
                org,
                app,
                str(party_id),
                guid,
                process_ended=process_ended,
                confirmed_by=confirmed_by or [],
                hard_deleted=hard_deleted,
                now_us=self._now_us(),
            )
            for spec in specs:
                element_id = str(uuid.uuid4())
                seed = spec.seed if spec.seed is not None else int(element_id.replace("-", "")[:15], 16)
                size = int(spec.size or 0)
                if spec.content is not None:
                    body = _Body("bytes", len(spec.content), seed, spec.content)
                else:
                    body = _Body("xml" if sim_app.is_form(spec.data_type) else "random", size, seed)
                inst._bodies[element_id] = body
                inst._specs[element_id] = spec
                inst.elements.append(inst._element_json(element_id, spec))
            self._register(inst)
        return inst

    def load_instance(self, doc: dict[str, Any], contents: dict[str, bytes] | None = None, *, org: str | None = None, app: str | None = None) -> SimInstance:
        """Serve an instance document exactly as given (e.g. one of Altinn's own test documents).

        ``id`` is ``partyId/instanceGuid`` (a bare guid, storage's internal form, gets the owner's party id,
        as altinn-storage PgInstanceRepository.ToExternal does); each data element keeps its own id, size,
        scan result and other fields, and its body is ``contents[element id]`` or generated bytes of its
        ``size``. ``org``/``app`` override the document's. Storage serves it with nulls omitted and its
        self links on the simulator; the query, ``/complete`` and ``/substatus`` work on it.
        """
        doc = copy.deepcopy(doc)
        contents = dict(contents or {})
        org, app, party, guid = _loaded_identity(doc, org, app)
        process = doc.get("process") if isinstance(doc.get("process"), dict) else None
        status = doc.get("status") if isinstance(doc.get("status"), dict) else None
        elements = [e for e in (doc.get("data") or []) if isinstance(e, dict)]
        with self._lock:
            sim_app = self._ensure_app(org, app, [e.get("dataType") for e in elements])
            now = self._now_us()
            inst = SimInstance(
                self.url,
                self.apps_url,
                org,
                app,
                party,
                guid,
                process_ended=bool(process and process.get("ended")),
                confirmed_by=[],
                hard_deleted=bool(status and status.get("isHardDeleted")),
                now_us=now,
            )
            _load_state(inst, doc, process, status, now)
            _load_bodies(inst, sim_app, elements, contents)
            self._register(inst)
        return inst

    def _register(self, inst: SimInstance) -> None:
        with self._lock:
            if inst.id in self.instances:
                raise ValueError(f"instance {inst.id} exists")
            self._seq += 1
            inst._seq = self._seq
            self.instances[inst.id] = inst
            self._element_owner.update((str(element["id"]).lower(), inst) for element in inst.elements)

    def _resolve(self, inst_or_id: SimInstance | str) -> SimInstance:
        key = inst_or_id.id if isinstance(inst_or_id, SimInstance) else str(inst_or_id).lower()
        with self._lock:
            return self.instances[key]

    def expected_sha256(self, element_id: str) -> str:
        """Hex SHA-256 of any element's stored body (shortcut for ``SimInstance.expected_sha256``)."""
        return self._element_owner[element_id.lower()].expected_sha256(element_id)

    def expected_bytes(self, element_id: str) -> bytes:
        """The stored body of any small element (shortcut for ``SimInstance.expected_bytes``)."""
        return self._element_owner[element_id.lower()].expected_bytes(element_id)

    def remove_instance(self, inst_or_id: SimInstance | str) -> None:
        """Forget an instance: every later request for it gets 404 (403 for storage's /complete)."""
        inst = self._resolve(inst_or_id)
        with self._lock:
            self.instances.pop(inst.id, None)
            inst.removed = True

    def set_scan_result(self, inst: SimInstance | str, element_id: str, result: str) -> None:
        """Change an element's ``fileScanResult`` (NotApplicable, Pending, Clean, Infected)."""
        with self._lock:
            self._resolve(inst).element(element_id)["fileScanResult"] = result


def _loaded_identity(doc: dict[str, Any], org: str | None, app: str | None) -> tuple[str, str, str, str]:
    """A loaded document's (org, app, party id, instance guid); sets the document's org, appId and owner."""
    app_id = str(doc.get("appId") or "")
    org = org or doc.get("org") or app_id.split("/")[0]
    app = app or (app_id.split("/", 1)[1] if "/" in app_id else None)
    if not org or not app:
        raise ValueError("the document has no appId; give org and app")
    doc["org"], doc["appId"] = org, f"{org}/{app}"
    owner = doc["instanceOwner"] if isinstance(doc.get("instanceOwner"), dict) else {}
    raw_id = str(doc.get("id") or "")
    party, _, guid_text = raw_id.rpartition("/")
    party = party or str(owner.get("partyId") or "")
    if not party.isdigit():
        raise ValueError("the document has no party id (id partyId/guid or instanceOwner.partyId)")
    guid = str(uuid.UUID(guid_text))
    owner.setdefault("partyId", party)
    doc["instanceOwner"] = owner
    return org, app, party, guid


def _load_state(inst: SimInstance, doc: dict[str, Any], process: dict[str, Any] | None, status: dict[str, Any] | None, now: int) -> None:
    """The state a loaded document's instance is rendered from: its times, substatus and confirmations."""
    inst.instance_owner = doc["instanceOwner"]
    inst._doc = doc
    inst._doc_process = copy.deepcopy(process)
    inst._doc_status = copy.deepcopy(status)
    inst._created_us = _parse_time_us(doc.get("created")) or now
    lc = _parse_time_us(doc.get("lastChanged"))
    inst._last_changed_us = lc if lc is not None else inst._created_us
    inst._lc_text = doc.get("lastChanged") if lc is not None else None
    inst._ended_us = _parse_time_us((process or {}).get("ended")) or (inst._last_changed_us if inst.process_ended else None)
    inst._hard_deleted_us = _parse_time_us((status or {}).get("hardDeleted")) or (inst._last_changed_us if inst.hard_deleted else None)
    inst.substatus = copy.deepcopy((status or {}).get("substatus"))
    _load_confirmations(inst, doc)


def _load_confirmations(inst: SimInstance, doc: dict[str, Any]) -> None:
    for c in doc.get("completeConfirmations") or []:
        if isinstance(c, dict) and c.get("stakeholderId"):
            inst.confirmed_by.append(str(c["stakeholderId"]))
            if c.get("confirmedOn"):
                inst._confirmed_on[str(c["stakeholderId"])] = str(c["confirmedOn"])


def _load_bodies(inst: SimInstance, sim_app: SimApp, elements: list[dict[str, Any]], contents: dict[str, bytes]) -> None:
    """A loaded document's elements: each keeps its document; its body is given or generated from its size."""
    for element in elements:
        element_id = str(element.get("id") or "")
        if not element_id:
            raise ValueError("a data element has no id")
        seed = int(hashlib.sha256(element_id.encode()).hexdigest()[:15], 16)
        given = contents.get(element_id)
        if given is not None:
            body = _Body("bytes", len(given), seed, bytes(given))
        else:
            size = int(element.get("size") or 0)
            body = _Body("xml" if sim_app.is_form(element.get("dataType")) else "random", size, seed)
        inst._bodies[element_id.lower()] = body
        inst.elements.append(element)
