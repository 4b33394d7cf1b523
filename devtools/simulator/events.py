"""Altinn Events: the CloudEvents pushed to subscribers, subscription validation, listing and deleting.

Creating a subscription (its request checks) is in subscriptions.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from .authentication import AuthenticationMixin
from .dotnet import _drop_nulls, _is_base_of, _is_int32
from .http import _JSON_UTF8, _empty, _problem, _Request, _Response, _stj_json
from .instance import SimInstance

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EventsMixin(AuthenticationMixin):
    """``sim.cloud_event``/``sim.publish``, and altinn-events' SubscriptionController Get, Delete and validation."""

    def cloud_event(self, inst: SimInstance, type: str = "app.instance.process.completed") -> dict[str, Any]:
        """The CloudEvent Altinn would push for ``inst`` (fresh id each call)."""
        ns = time.time_ns()
        # 7 fractional digits (.NET ticks), as Altinn's own tests show: altinn-events
        # test/Altinn.Platform.Events.Functions.Tests/TestingFunctions/EventsOutboundTests.cs "2023-01-13T09:47:41.1680188Z".
        stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns % 1_000_000_000) // 100:07d}Z"
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "time": stamp,
            "type": type,
            # app-lib-dotnet src/Altinn.App.Core/Infrastructure/Clients/Events/EventsClient.cs AddEvent:
            # Source = {app base url}instances/{instance.Id}, Subject = /party/{partyId}.
            "source": inst.app_url,
            "resource": f"urn:altinn:resource:app_{inst.org}_{inst.app}",
            "resourceinstance": inst.id,
            "subject": f"/party/{inst.party_id}",
        }
        # Same file: AlternativeSubject is /org/{orgnr}, else /person/{ssn}, else the external identifier.
        owner = inst.instance_owner
        if owner.get("organisationNumber"):
            event["alternativesubject"] = f"/org/{owner['organisationNumber']}"
        elif owner.get("personNumber"):
            event["alternativesubject"] = f"/person/{owner['personNumber']}"
        elif owner.get("externalIdentifier"):
            event["alternativesubject"] = owner["externalIdentifier"]
        return event

    def publish(
        self,
        inst: SimInstance,
        type: str = "app.instance.process.completed",
        *,
        event: dict[str, Any] | None = None,
        timeout: float = 45.0,
    ) -> list[tuple[str, int]]:
        """POST the event (or ``event``) to every matching validated subscription; (endpoint, status), 0 = no answer."""
        ev = event if event is not None else self.cloud_event(inst, type)
        with self._lock:
            targets = [s["endPoint"] for s in self.subscriptions.values() if s.get("validated") and _subscription_matches(s, ev)]
        return [(endpoint, _post_json(endpoint, ev, timeout)) for endpoint in targets]

    def _validate_subscription(self, sub_id: int, endpoint: str) -> None:
        # altinn-events src/Events/Services/SubscriptionService.cs SendAndValidate (a new CreateValidateEvent per
        # attempt; a non-2xx or no answer throws and is retried by the Wolverine policy), then SetValidSubscription.
        delays = list(self.validation_retry_delays)
        attempt = 0
        while True:
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": f"{self.url}/events/api/v1/subscriptions/{sub_id}",
                "type": "platform.events.validatesubscription",
            }
            status = _post_json(endpoint, event, self.validation_timeout)
            with self._lock:
                self.validation_attempts.append((sub_id, status))
                if 200 <= status < 300:
                    if sub_id in self.subscriptions:
                        self.subscriptions[sub_id]["validated"] = True
                    return
            if attempt >= len(delays) or self._stopping.wait(delays[attempt]):
                return  # given up: the subscription stays validated false
            attempt += 1

    def _list_subscriptions(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        consumer = f"/org/{token.org}"
        with self._lock:
            subs = [_drop_nulls(dict(s)) for s in self.subscriptions.values() if s["consumer"] == consumer]
        return _stj_json(200, {"count": len(subs), "subscriptions": subs})

    def _one_subscription(self, req: _Request, raw_id: str) -> _Response:
        token = self._altinn_token(req)
        # SubscriptionController.Get(int id) / Delete(int id): an id that does not bind is a 400.
        if not _is_int32(raw_id):
            return _problem(400, f"The value '{raw_id}' is not valid.")
        with self._lock:
            sub = self.subscriptions.get(int(raw_id))
            if sub is None:
                return _empty(404)
            # SubscriptionService.AuthorizeAccessToSubscription: CreatedBy must be the caller.
            if sub["createdBy"] != f"/org/{token.org}":
                return _empty(403)
            if req.method == "DELETE":
                del self.subscriptions[int(raw_id)]
                return _empty(200)
            return _stj_json(200, _drop_nulls(dict(sub)))


def _subscription_matches(sub: dict[str, Any], event: dict[str, Any]) -> bool:
    """events.getsubscriptions_v2 (resource, subject, type; validated) and OutboundService's
    ``sub.SourceFilter.IsBaseOf(cloudEvent.Source)``."""
    if str(sub.get("resourceFilter") or "").lower() != str(event.get("resource") or "").lower():
        return False
    if sub.get("subjectFilter") and sub["subjectFilter"] != event.get("subject"):
        return False
    if sub.get("typeFilter") and sub["typeFilter"] != event.get("type"):
        return False
    return not sub.get("sourceFilter") or _is_base_of(sub["sourceFilter"], str(event.get("source", "")))


def _post_json(url: str, payload: dict[str, Any], timeout: float) -> int:
    """POST a CloudEvent as Altinn does; the status, or 0 when there was no answer."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": _JSON_UTF8})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except (OSError, ValueError):
        return 0
