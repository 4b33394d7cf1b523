"""The storage API: an instance, its data, ``/complete`` and ``/substatus`` (the query is in query.py)."""

from __future__ import annotations

import copy
import json
from typing import Any

from .authentication import AuthenticationMixin
from .constants import READ_SCOPE, WRITE_SCOPE
from .content import _content_disposition
from .dotnet import _guid, _is_int32, _iso_us
from .http import _empty, _json, _json_string, _problem, _Reply, _Request, _Response
from .instance import SimInstance
from .maskinporten import _Token
from .model import _Body


class StorageMixin(AuthenticationMixin):
    """altinn-storage's InstancesController (Get, AddCompleteConfirmation, UpdateSubstatus) and DataController.Get."""

    def _find(self, guid: str, party: str = "") -> SimInstance | None:
        # altinn-storage src/Storage/Repository/PgInstanceRepository.cs GetOne(instanceGuid): storage looks the
        # instance up by its guid alone; the party id in the path is not compared.
        guid = _guid(guid) or guid
        with self._lock:
            if party and _is_int32(party):
                inst = self.instances.get(f"{int(party)}/{guid}")
                if inst is not None:
                    return inst
            for inst in self.instances.values():
                if inst.instance_guid == guid:
                    return inst
        return None

    @staticmethod
    def _may_read(token: _Token, inst: SimInstance) -> bool:
        return token.org == inst.org and token.has_scope(READ_SCOPE)

    def _get_instance(self, req: _Request, party: str, guid: str) -> _Response:
        token = self._altinn_token(req)
        inst = self._find(guid, party)
        if inst is None:
            # altinn-storage InstancesController.Get: NotFound for a missing instance and for any exception.
            return _json_string(404, f"Unable to find instance {_guid(guid) or guid}")
        if not self._may_read(token, inst):
            return _empty(403)  # AuthorizeEnrichedInstanceAction(instance, "read") false -> Forbid()
        with self._lock:
            doc = inst.to_json(omit_nulls=True)
        return _json(200, doc)

    def _storage_body(self, token: _Token, party: str, guid: str, element_id: str) -> tuple[SimInstance, dict[str, Any], _Body]:
        """altinn-storage src/Storage/Controllers/DataController.cs Get, up to the blob read; raises the error answers."""
        if _is_int32(party) and int(party) == 0:
            raise _Reply(_json_string(400, "Missing parameter value: instanceOwnerPartyId can not be empty"))
        inst = self._find(guid, party)
        if inst is None:
            raise _Reply(_json_string(404, f"Unable to find any instance with id: {party}/{_guid(guid) or guid}."))
        if not self._may_read(token, inst):
            raise _Reply(_empty(403))
        with self._lock:
            try:
                element = copy.deepcopy(inst.element(_guid(element_id) or element_id))
            except KeyError:
                raise _Reply(_json_string(404, f"Unable to find any data element with id: {element_id}.")) from None
            body = inst._body(str(element["id"]))
            sim_app = self._apps.get((inst.org, inst.app))
        if sim_app is None:
            raise _Reply(_json_string(404, f"Cannot find application {inst.org}/{inst.app} in storage"))
        data_type = sim_app.data_type(element.get("dataType"))
        if data_type is None:
            # GetDataTypeAsync: the element's data type must still be in the app's metadata.
            raise _Reply(_json_string(400, "Requested element type is not declared in application metadata"))
        if data_type.get("actionRequiredToRead"):
            # DataTypeExtensions.CanRead asks the policy for that action; the simulator's policy grants none.
            raise _Reply(_empty(403))
        # (DeleteStatus.IsHardDeleted elements are 404 for anyone but the app owner, the only caller here.)
        path = element.get("blobStoragePath")
        if path is not None and path != f"{inst.org}/{inst.app}/{inst.instance_guid}/data/{str(element['id']).lower()}":
            if not str(path).startswith("ondemand"):
                # Get: a blobStoragePath that is not DataElementHelper.DataFileName(...) is "not found".
                raise _Reply(_json_string(404, "Unable to find requested data item"))
        return inst, element, body

    def _get_data(self, req: _Request, party: str, guid: str, element_id: str) -> _Response:
        token = self._altinn_token(req)
        _, element, body = self._storage_body(token, party, guid, element_id)
        return self._file(element, body)

    @staticmethod
    def _file(element: dict[str, Any], body: _Body) -> _Response:
        # File(stream, dataElement.ContentType, dataElement.Filename): the stored bytes, Content-Disposition
        # only with a filename.
        filename = element.get("filename")
        headers = [("Content-Disposition", _content_disposition(filename))] if filename else []
        content_type = element.get("contentType") or "application/octet-stream"
        return _Response(200, content_type=content_type, headers=headers, stream=body.chunks(), length=body.size)

    def _complete(self, req: _Request, party: str, guid: str) -> _Response:
        token = self._altinn_token(req)
        inst = self._find(guid, party)
        # altinn-storage [Authorize(Policy = POLICY_INSTANCE_COMPLETE)] -> src/Storage/Authorization/StorageAccessHandler.cs:
        # the XACML decision for "complete" (an unknown instance is not enriched and is denied); Forbid() is an
        # empty 403. AddCompleteConfirmation itself never looks at the process.
        if inst is None or not self._may_complete(token, inst):
            return _empty(403)
        doc = self._confirm(inst)
        return _json(200, doc)

    def _may_complete(self, token: _Token, inst: SimInstance) -> bool:
        with self._lock:
            sim_app = self._apps.get((inst.org, inst.app))
        return token.org == inst.org and token.has_scope(WRITE_SCOPE) and sim_app is not None and sim_app.complete_allowed

    def _confirm(self, inst: SimInstance) -> dict[str, Any]:
        callback = self.on_complete
        if callback is not None:
            try:
                callback(inst)
            except Exception as exc:
                with self._lock:
                    self.complete_violations.append(str(exc) or repr(exc))
        now = self._now_us()
        with self._lock:
            # altinn-storage InstancesController.AddCompleteConfirmation: an org that already confirmed gets the
            # instance unchanged; else {StakeholderId = org, ConfirmedOn = now} and LastChanged = now.
            if inst.org not in inst.confirmed_by:
                inst.confirmed_by.append(inst.org)
                inst._confirmed_on[inst.org] = _iso_us(now)
                inst._set_last_changed(now)
            self.confirmations.append((inst.id, now / 1_000_000))
            return inst.to_json(omit_nulls=True)

    def _substatus(self, req: _Request, party: str, guid: str) -> _Response:
        token = self._altinn_token(req)
        # altinn-storage InstancesController.UpdateSubstatus: [FromBody] Substatus (a JSON body), 400 when it or its
        # Label is null or empty, then GetOne (a missing instance throws: 500), 403 unless the caller's org is the
        # instance's org, else Status.Substatus = the body, LastChanged = now.
        label, description = _substatus_body(req)
        inst = self._find(guid, party)
        if inst is None:
            return _empty(500)
        if token.org != inst.org:
            return _empty(403)
        now = self._now_us()
        with self._lock:
            inst.substatus = {"label": label, "description": description}
            inst._set_last_changed(now)
            self.substatus_updates.append((inst.id, label, description))
            doc = inst.to_json(omit_nulls=True)
        return _json(200, doc)


def _substatus_body(req: _Request) -> tuple[str, str | None]:
    """UpdateSubstatus's [FromBody] Substatus bound (System.Text.Json, case-insensitive): (label, description)."""
    if not req.is_json():
        raise _Reply(_problem(415, "Unsupported Media Type"))
    if not req.body.strip():
        raise _Reply(_problem(400, "A non-empty request body is required."))
    body = req.json()
    if body is not None and not isinstance(body, dict):
        raise _Reply(_problem(400, "The substatus field is required."))
    fields = {str(k).lower(): v for k, v in (body or {}).items()}
    label, description = fields.get("label"), fields.get("description")
    if any(isinstance(v, (dict, list)) for v in (label, description)):
        raise _Reply(_problem(400, "The JSON value could not be converted to System.String."))
    label = None if label is None else label if isinstance(label, str) else json.dumps(label)
    description = None if description is None else description if isinstance(description, str) else json.dumps(description)
    if not label:
        raise _Reply(
            _json_string(400, f"Invalid sub status: {json.dumps({'Label': label, 'Description': description})}. Substatus must be defined and include a label.")
        )
    return label, description
