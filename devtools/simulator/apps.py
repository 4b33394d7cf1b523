"""The app API (``sim.apps_url``), as app-lib serves it: app-lib's instance DTO, and form data re-serialized."""

from __future__ import annotations

import copy
from typing import Any

from .content import _form_model, _form_xml, _wants_xml
from .dotnet import _guid
from .http import _empty, _problem, _Reply, _Request, _Response, _stj_json, _stj_string_response, _text
from .instance import SimInstance
from .model import SimApp, _Body
from .storage import StorageMixin

_MAX_FORM_PARSE = 64 << 20  # the app API parses form XML in memory
_OWNER_KEYS = ("partyId", "personNumber", "organisationNumber", "username", "externalIdentifier")
_PROCESS_KEYS = ("started", "startEvent", "currentTask", "ended", "endEvent")
_TASK_KEYS = ("flow", "started", "elementId", "name", "altinnTaskType", "ended", "validated", "flowType")
_STATUS_KEYS = ("isArchived", "archived", "isSoftDeleted", "softDeleted", "isHardDeleted", "hardDeleted", "readStatus", "substatus")
_STATUS_DEFAULTS: dict[str, Any] = {"isArchived": False, "isSoftDeleted": False, "isHardDeleted": False, "readStatus": "Unread"}
_ELEMENT_KEYS = (
    "id",
    "instanceGuid",
    "dataType",
    "filename",
    "contentType",
    "blobStoragePath",
    "selfLinks",
    "size",
    "contentHash",
    "locked",
    "refs",
    "isRead",
    "tags",
    "userDefinedMetadata",
    "metadata",
    "deleteStatus",
    "fileScanResult",
    "references",
    "created",
    "createdBy",
    "lastChanged",
    "lastChangedBy",
)
_ELEMENT_DEFAULTS: dict[str, Any] = {"size": 0, "locked": False, "isRead": True, "tags": [], "fileScanResult": "NotApplicable"}
_READ_STATUS = {"Unread": 0, "Read": 1, "UpdatedSinceLastReview": 2}


class AppsMixin(StorageMixin):
    """app-lib-dotnet's InstancesController (Get, AddCompleteConfirmation) and DataController.Get."""

    def _deployed_app(self, org: str, app: str) -> SimApp:
        with self._lock:
            sim_app = self._apps.get((org, app))
        if sim_app is None or not sim_app.deployed:
            raise _Reply(_empty(404))  # no app answers at that path
        return sim_app

    def _app_find(self, org: str, app: str, party: str, guid: str) -> SimInstance | None:
        inst = self._find(guid, party)
        if inst is None or inst.org != org or inst.app != app:
            return None
        return inst

    def _app_instance(self, req: _Request, org: str, app: str, party: str, guid: str) -> _Response:
        sim_app = self._deployed_app(org, app)
        token = self._altinn_token(req)
        inst = self._app_find(org, app, party, guid)
        if inst is None:
            return _problem(404, f"Get instance {party}/{guid} failed", "Not Found")
        if not self._may_read(token, inst):
            return _empty(403)
        with self._lock:
            doc = self._app_doc(inst, sim_app, dto=True)
        return _stj_json(200, doc)

    def _app_complete(self, req: _Request, org: str, app: str, party: str, guid: str) -> _Response:
        self._deployed_app(org, app)
        token = self._altinn_token(req)
        inst = self._app_find(org, app, party, guid)
        # app-lib-dotnet InstancesController.AddCompleteConfirmation: [Authorize(Policy = POLICY_INSTANCE_COMPLETE)],
        # then storage's /complete through the instance client; the instance it returns, with app self links.
        if inst is None:
            return _empty(404)
        if not self._may_complete(token, inst):
            return _empty(403)
        self._confirm(inst)
        with self._lock:
            doc = self._app_doc(inst, None, dto=False)
        return _stj_json(200, doc)

    def _app_data(self, req: _Request, org: str, app: str, party: str, guid: str, element_id: str, data_type: str) -> _Response:
        sim_app = self._deployed_app(org, app)
        token = self._altinn_token(req)
        # app-lib-dotnet src/Altinn.App.Api/Controllers/DataController.cs Get -> GetInstanceDataOrError.
        inst = self._app_find(org, app, party, guid)
        if inst is None:
            return _problem(404, f"Did not find instance {party}/{guid}", "Instance Not Found")
        if not self._may_read(token, inst):
            return _empty(403)
        wanted = _guid(element_id) or element_id
        with self._lock:
            element = next((copy.deepcopy(e) for e in inst.elements if e.get("id") == wanted), None)
        if element is None:
            return _problem(404, f"Did not find data element {wanted} on instance {party}/{guid}", "Data Element Not Found")
        type_doc = sim_app.data_type(element.get("dataType"))
        if type_doc is None:
            detail = f'Data element {wanted} requires data type "{element.get("dataType")}", but it was not found in applicationmetadata.json'
            response = _problem(500, detail, "Data Type Not Found")
            return response
        if data_type and type_doc.get("id") != data_type:
            return _text(400, f"Data type {data_type} does not match data element {wanted}, which is of type {type_doc.get('id')}")
        if type_doc.get("actionRequiredToRead"):
            return _problem(403, f"Access denied for data element of type {type_doc.get('id')}", "Unauthorized")
        try:
            _, stored, body = self._storage_body(token, party, guid, wanted)
        except _Reply as reply:
            # The platform client's PlatformHttpException -> HandlePlatformHttpException: storage's status.
            return _empty(reply.response.status)
        if (type_doc.get("appLogic") or {}).get("classRef") is None:
            return self._file(stored, body)  # GetBinaryData: the stored bytes
        return _form_data(req, body)

    def _party_json(self, inst: SimInstance) -> dict[str, Any]:
        """app-lib-dotnet src/Altinn.App.Api/Models/InstanceResponse.cs PartyResponse.From(the register's party)."""
        owner = inst.instance_owner
        registered = self.parties.get(str(inst.party_id)) or {}
        ssn = registered.get("ssn") or owner.get("personNumber")
        org_number = registered.get("orgNumber") or owner.get("organisationNumber")
        if org_number:
            party_type, default_name, unit_type = 2, "TESTBEDRIFT AS", "AS"  # PartyType.Organisation
        elif ssn:
            party_type, default_name, unit_type = 1, "OLA NORDMANN", None  # PartyType.Person
        elif owner.get("username"):
            party_type, default_name, unit_type = 3, str(owner["username"]), None  # PartyType.SelfIdentified
        else:
            party_type, default_name, unit_type = 1, f"PARTY {inst.party_id}", None
        return {
            "partyId": int(inst.party_id),
            "partyUuid": registered.get("partyUuid"),
            "partyTypeName": party_type,
            "ssn": ssn or None,
            "orgNumber": org_number or None,
            "unitType": unit_type,
            "name": inst.party_name or registered.get("name") or default_name,
            "isDeleted": False,
        }

    def _app_doc(self, inst: SimInstance, sim_app: SimApp | None, *, dto: bool) -> dict[str, Any]:
        """The instance as app-lib's System.Text.Json writes it (camelCase, nulls written, enums without a
        System.Text.Json converter as numbers); ``dto`` adds InstanceResponse's party and filters elements.

        app-lib-dotnet src/Altinn.App.Api/Controllers/InstancesController.cs Get: InstanceResponse.From(
        instance.WithOnlyAccessibleDataElements(...)) -- DataElementAccessChecker.GetReaderProblem throws for a
        data type missing from applicationmetadata.json (the controller answers 500) and drops elements whose
        ActionRequiredToRead the policy denies. Field order and numbers as in app-lib's verified snapshot
        test/Altinn.App.Api.Tests/Controllers/InstancesController_GetTests.ReturnsOkResult_Raw.verified.txt.
        """
        doc = inst.to_json()
        elements = _app_elements(inst, doc, sim_app, dto=dto)
        confirmations = doc.get("completeConfirmations")
        if isinstance(confirmations, list):
            confirmations = [{"stakeholderId": c.get("stakeholderId"), "confirmedOn": c.get("confirmedOn")} for c in confirmations if isinstance(c, dict)]
        owner: dict[str, Any] = {k: inst.instance_owner.get(k) for k in _OWNER_KEYS}
        if dto:
            owner["party"] = self._party_json(inst)
        return {
            "id": inst.id,
            "instanceOwner": owner,
            "appId": f"{inst.org}/{inst.app}",
            "org": inst.org,
            "selfLinks": {"apps": inst.app_url, "platform": inst.platform_url},
            "dueBefore": doc.get("dueBefore"),
            "visibleAfter": doc.get("visibleAfter"),
            "process": _app_process(doc),
            "status": _app_status(doc),
            "completeConfirmations": confirmations,
            "data": elements,
            "presentationTexts": doc.get("presentationTexts"),
            "dataValues": doc.get("dataValues"),
            "created": doc.get("created"),
            "createdBy": doc.get("createdBy"),
            "lastChanged": doc.get("lastChanged"),
            "lastChangedBy": doc.get("lastChangedBy"),
        }


def _form_data(req: _Request, body: _Body) -> _Response:
    """DataController's GetFormData: the model deserialized from the stored XML, data processors run, returned
    with Ok(model): content negotiation over the JSON (first) and XML formatters."""
    if body.size > _MAX_FORM_PARSE:
        return _empty(500)
    try:
        root, namespace, model = _form_model(body.read())
    except ValueError:
        return _empty(500)  # XmlSerializer throws: an unhandled exception
    if _wants_xml(req.headers.get("Accept")):
        return _Response(200, _form_xml(root, namespace, model), "application/xml; charset=utf-8")
    return _stj_json(200, model)


def _app_elements(inst: SimInstance, doc: dict[str, Any], sim_app: SimApp | None, *, dto: bool) -> list[dict[str, Any]]:
    """The data elements of app-lib's instance (see ``_app_doc``): all fields, app and platform self links."""
    elements = []
    for element in doc.get("data") or []:
        if dto:
            type_doc = sim_app.data_type(element.get("dataType"), ignore_case=True) if sim_app else None
            if type_doc is None:
                raise _Reply(_stj_string_response(500, f"Get instance {inst.id} failed"))
            if type_doc.get("actionRequiredToRead"):
                continue
        out = {k: element.get(k, _ELEMENT_DEFAULTS.get(k)) for k in _ELEMENT_KEYS}
        # SelfLinkHelper.SetInstanceAppSelfLinks: apps from the request's host; platform from storage.
        out["selfLinks"] = {"apps": inst.app_data_url(element.get("id")), "platform": inst.data_url(element.get("id"))}
        elements.append(out)
    return elements


def _app_process(doc: dict[str, Any]) -> Any:
    process = doc.get("process")
    if isinstance(process, dict):
        process = {k: process.get(k) for k in _PROCESS_KEYS}
        if isinstance(process.get("currentTask"), dict):
            process["currentTask"] = {k: process["currentTask"].get(k) for k in _TASK_KEYS}
    return process


def _app_status(doc: dict[str, Any]) -> dict[str, Any]:
    status = doc["status"] if isinstance(doc.get("status"), dict) else {}
    status = {k: status.get(k, _STATUS_DEFAULTS.get(k)) for k in _STATUS_KEYS}
    # Storage.Interface ReadStatus carries only Newtonsoft's StringEnumConverter: System.Text.Json writes a number.
    read_status = status.get("readStatus")
    status["readStatus"] = read_status if isinstance(read_status, int) else _READ_STATUS.get(str(read_status), 0)
    if isinstance(status.get("substatus"), dict):
        status["substatus"] = {"label": status["substatus"].get("label"), "description": status["substatus"].get("description")}
    return status
