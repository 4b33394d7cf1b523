"""Creating an Altinn Events subscription (``POST /events/api/v1/subscriptions``), as altinn-events checks it."""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlsplit

from .constants import EVENTS_SUBSCRIBE_SCOPE
from .dotnet import _absolute_uri, _drop_nulls, _is_loopback, _iso_us
from .events import EventsMixin
from .http import _empty, _problem, _Reply, _Request, _Response, _stj_json, _stj_string_response
from .maskinporten import _Token

_APP_RESOURCE_PREFIX = "urn:altinn:resource:app_"


class SubscriptionsMixin(EventsMixin):
    """altinn-events SubscriptionController.Post and AppSubscriptionService (app subscriptions only)."""

    def _endpoint_ok(self, value: Any) -> bool:
        # altinn-events src/Events/Controllers/SubscriptionController.cs IsValidUri: absolute with the https scheme.
        # The simulator also takes http for loopback hosts, so tests can subscribe a local receiver.
        if not isinstance(value, str):
            return False
        parts = urlsplit(value)
        if not parts.netloc:
            return False
        return parts.scheme.lower() == "https" or (parts.scheme.lower() == "http" and _is_loopback(parts.hostname))

    def _party_from_alternative_subject(self, alternative: str) -> str | None:
        """altinn-events src/Events/Services/AppSubscriptionService.cs GetPartyFromAlternativeSubject."""
        org_number = ssn = None
        if alternative.startswith("/org/"):
            org_number = alternative[len("/org/") :]
        elif alternative.startswith("/organisation/"):
            org_number = alternative[len("/organisation/") :]
        elif alternative.startswith("/person/"):
            ssn = alternative[len("/person/") :]
        else:
            return None
        with self._lock:
            for party_id, party in self.parties.items():
                if (org_number and party.get("orgNumber") == org_number) or (ssn and party.get("ssn") == ssn):
                    return f"/party/{party_id}"
            for inst in self.instances.values():
                owner = inst.instance_owner
                if (org_number and owner.get("organisationNumber") == org_number) or (ssn and owner.get("personNumber") == ssn):
                    return f"/party/{inst.party_id}"
        return None

    def _create_subscription(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        fields = _subscription_request(req)
        endpoint, source, resource = fields.get("endpoint"), fields.get("sourcefilter"), fields.get("resourcefilter")
        if not self._endpoint_ok(endpoint):
            return _stj_string_response(400, "Missing or invalid endpoint to push events towards")
        if source is not None and not self._endpoint_ok(source):
            return _stj_string_response(400, "SourceFilter must be an absolute URL with the https scheme.")
        apps_host = urlsplit(self.apps_url).hostname or ""
        is_app = bool(resource and resource.lower().startswith(_APP_RESOURCE_PREFIX)) or bool(source and (urlsplit(source).hostname or "").endswith(apps_host))
        if not is_app and not token.has_scope(EVENTS_SUBSCRIBE_SCOPE):
            return _empty(403)
        # UriExtensions.IsValidUrn (case-sensitive pattern).
        if resource is not None and not re.fullmatch(r"urn:[a-z0-9-]{1,30}(:[a-z0-9()+,.\-;$_!/]{1,100}){1,10}", resource):
            return _stj_string_response(400, "Resource filter must be a valid urn")
        if not is_app:
            return _stj_string_response(400, "the simulator only models app subscriptions (GenericSubscriptionService is not simulated)")
        return self._store_subscription(self._app_subscription(token, fields))

    def _app_subscription(self, token: _Token, fields: dict[str, Any]) -> dict[str, Any]:
        """The subscription's stored fields, once it is valid; raises the error answers."""
        source, resource = fields.get("sourcefilter"), fields.get("resourcefilter")
        subject, alternative = fields.get("subjectfilter"), fields.get("alternativesubjectfilter")
        include_subunits = bool(fields.get("includesubunits", False))
        # AppSubscriptionService.CreateSubscription: EnrichSubject (alternativeSubjectFilter -> /party/{id} via the
        # register), consumer and createdBy from the token, ValidateSubscription, SetResourceFilterIfEmpty.
        if not subject and alternative:
            subject = self._party_from_alternative_subject(alternative)
        consumer = f"/org/{token.org}" if token.org else None
        source_path = urlsplit(source).path if source else None
        if not subject and not token.org:
            raise _Reply(_stj_string_response(400, "A valid subject to the authenticated identity is required"))
        if alternative and not subject:
            raise _Reply(_stj_string_response(400, "A valid subject to the authenticated identity is required"))
        if include_subunits and not subject:
            raise _Reply(_stj_string_response(400, "IncludeSubunits requires a subject filter."))
        if not consumer:
            raise _Reply(_stj_string_response(400, "Missing event consumer"))
        resource = _resource_filter(resource, source_path)
        # SubscriptionService.CompleteSubscriptionCreation: the consumer must be authorized for the resource.
        resource_org = resource[len(_APP_RESOURCE_PREFIX) :].split("_")[0] if resource.lower().startswith(_APP_RESOURCE_PREFIX) else ""
        if resource_org.lower() != str(token.org).lower():
            raise _Reply(_stj_string_response(403, f"Not authorized to create a subscription for resource {resource}."))
        # SubscriptionRepository: stored and found by the lower-cased resource filter and the AbsoluteUri forms;
        # events.find_subscription matches resource, source, subject, type, consumer, endpoint and includesubunits.
        return {
            "endPoint": _absolute_uri(str(fields.get("endpoint"))),
            "sourceFilter": _absolute_uri(source) if source else None,
            "resourceFilter": resource.lower(),
            "subjectFilter": subject,
            "typeFilter": fields.get("typefilter"),
            "consumer": consumer,
            "includeSubunits": include_subunits,
        }

    def _store_subscription(self, fields_out: dict[str, Any]) -> _Response:
        """Find or create the subscription, start its validation, answer 201."""
        with self._lock:
            sub = next((s for s in self.subscriptions.values() if all(s.get(k) == v for k, v in fields_out.items())), None)
            if sub is None:
                sub_id = self._next_subscription
                self._next_subscription += 1
                sub = {
                    "id": sub_id,
                    "endPoint": fields_out["endPoint"],
                    "sourceFilter": fields_out["sourceFilter"],
                    "resourceFilter": fields_out["resourceFilter"],
                    "subjectFilter": fields_out["subjectFilter"],
                    "typeFilter": fields_out["typeFilter"],
                    "consumer": fields_out["consumer"],
                    "createdBy": fields_out["consumer"],
                    "created": _iso_us(self._now_us()),
                    "validated": False,
                    "includeSubunits": fields_out["includeSubunits"],
                }
                self.subscriptions[sub_id] = sub
            # ... and publishes a validation event for the found or created subscription, every time.
            thread = threading.Thread(target=self._validate_subscription, args=(sub["id"], sub["endPoint"]), name=f"validate-{sub['id']}", daemon=True)
            self._background = [t for t in self._background if t.is_alive()] + [thread]
            response = _stj_json(201, _drop_nulls(dict(sub)))
        thread.start()
        # Created("/events/api/v1/subscription/" + id, ...): a relative Location, "subscription" in the singular.
        response.headers.append(("Location", f"/events/api/v1/subscription/{sub['id']}"))
        return response


def _subscription_request(req: _Request) -> dict[str, Any]:
    """SubscriptionController.Post: [Consumes("application/json")], [FromBody] SubscriptionRequestModel
    (System.Text.Json, property names case-insensitive); the fields by lower-case name."""
    if not req.is_json():
        raise _Reply(_problem(415, "Unsupported Media Type"))
    body = req.json()
    if not isinstance(body, dict):
        raise _Reply(_problem(400, "The subscriptionRequest field is required."))
    fields = {str(k).lower(): v for k, v in body.items()}
    for name in ("endpoint", "sourcefilter", "subjectfilter", "resourcefilter", "alternativesubjectfilter", "typefilter"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise _Reply(_problem(400, f"The JSON value could not be converted for {name}."))
    if not isinstance(fields.get("includesubunits", False), bool):
        raise _Reply(_problem(400, "The JSON value could not be converted to System.Boolean."))
    return fields


def _resource_filter(resource: str | None, source_path: str | None) -> str:
    """AppSubscriptionService: the source filter's app id, {environment}/{org}/{app}, as a resource (SetResourceFilterIfEmpty)."""
    if source_path is not None and len(source_path.split("/")) != 3:
        raise _Reply(_stj_string_response(400, "A valid app id is required in source filter {environment}/{org}/{app}"))
    from_source = None
    if source_path is not None:
        _, sf_org, sf_app = source_path.split("/")
        from_source = f"{_APP_RESOURCE_PREFIX}{sf_org}_{sf_app}"
    if resource and from_source and resource != from_source:
        raise _Reply(_stj_string_response(400, "Provided resource filter and source filter are not compatible"))
    resource = resource or from_source
    if not resource:
        raise _Reply(_empty(500))  # GetResourceFilterFromSource(null) throws
    return resource
