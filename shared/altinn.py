"""Altinn client: token exchange, instance, data stream, complete, instance query, subscriptions.

Everything goes to the **platform** host: instances, data and ``/complete`` through the storage API
(``{platform}/storage/api/v1/instances/...``), never the app API. The app API re-serializes form
data (a data type with ``appLogic.classRef``: app-lib deserializes the model, runs the app's read
hooks and answers it content-negotiated, so neither the bytes nor the length are the stored ones),
returns a DTO with the submitter's name and national id number, filters elements by the app's
current metadata and is gone once the app is undeployed (Altinn/app-lib-dotnet
src/Altinn.App.Api/Controllers/DataController.cs, InstancesController.cs; Altinn/altinn-storage
src/Storage/Controllers/DataController.cs ``Get``: ``File(dataStream, dataElement.ContentType,
dataElement.Filename)``, the stored blob). The app host appears only in the webhook's ``source``
check and the subscriptions' ``sourceFilter``; the bearer token goes to the platform and nowhere
else (checked before every request; redirects are never followed).

Upstream is untrusted input: every call has a total deadline (:class:`shared.http.Deadline`), every
answer that is read whole has a cap, bodies must be identity-encoded, the instance document is
parsed into :class:`~shared.models.Instance` (fail closed), a data download never reads more than
the element's ``size`` + 1 bytes and fails before the body when ``Content-Length`` disagrees.

Status mapping: 2xx ok; 401 -> refresh the token once and retry; 403 and 410 -> permanent; 404 ->
:class:`NotFound` (transient: storage answers 404 for *any* internal exception on the instance GET,
Altinn/altinn-storage src/Storage/Controllers/InstancesController.cs ``Get``'s catch, so one 404 is
weak evidence; the pipeline parks after several); 429, 5xx, timeouts and resets -> retried briefly
in process, then transient.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from shared import http
from shared.config import Settings
from shared.download import Download
from shared.errors import PermanentError, TransientError, UntrustedHostError
from shared.http import Deadline, safe_text
from shared.maskinporten import MaskinportenClient, TokenCache, retry_after_seconds
from shared.models import DATA_ID, DataElement, Instance, InstanceRef, parse_instance

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

TIMEOUT = (5, 60)  # connect, and the longest gap between two reads (the total is a Deadline)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 10.0  # longer waits are left to the retry schedule
MAX_TOKEN_LIFETIME = 3600.0  # cache an Altinn token for at most this long, whatever it claims
DATA_BASE_DEADLINE = 60.0  # seconds a download may take on top of size / minimum rate
# A JWT: three base64url parts (RFC 7519); Altinn's exchange answers one.
_JWT = re.compile(r"[A-Za-z0-9_-]{2,8192}\.[A-Za-z0-9_-]{2,16384}\.[A-Za-z0-9_-]{0,4096}")


def new_session(pool_size: int = 32) -> requests.Session:
    """The HTTP session for Altinn and Maskinporten (:func:`shared.http.new_session`)."""
    return http.new_session(pool_size)


class NotFound(TransientError):
    """Altinn answered 404. Storage does that for a missing instance and for any internal error."""


def _jwt_expiry(token: str) -> float:
    """``exp`` of a JWT without verifying it (we only schedule a refresh with it); TransientError
    when the token is not a JWT with a numeric ``exp``: such a token is never cached."""
    import jwt

    if len(token) > 16384 or not _JWT.fullmatch(token):
        raise TransientError("Altinn token exchange answered something that is not a JWT")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TransientError("Altinn token exchange answered a token that cannot be decoded") from None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise TransientError("Altinn token exchange answered a token without a numeric exp")
    if exp <= time.time():
        raise TransientError("Altinn token exchange answered a token that has expired")
    return float(exp)


class AltinnClient:
    def __init__(self, settings: Settings, session: requests.Session, maskinporten: MaskinportenClient, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.session = session
        self.maskinporten = maskinporten
        self.cache = TokenCache(self._exchange, clock=clock)
        self._origins = settings.allowed_origins()
        self.retry_sleep = time.sleep  # tests may shorten waits
        self.min_rate = settings.min_download_rate  # bytes per second, for a download's deadline

    # -- tokens ---------------------------------------------------------------------------------

    def _exchange(self) -> tuple[str, float]:
        import requests

        url = f"{self.settings.platform_url}/authentication/api/v1/exchange/maskinporten"
        for attempt in (1, 2):
            mp_token = self.maskinporten.token()
            deadline = Deadline(http.CALL_DEADLINE, "Altinn token exchange")
            with deadline.running():
                try:
                    resp = deadline.request(
                        self.session, "GET", url, headers={"Authorization": f"Bearer {mp_token}"}, timeout=TIMEOUT, allow_redirects=False, stream=True
                    )
                except requests.RequestException as exc:
                    if deadline.expired:
                        raise deadline.error() from None
                    raise TransientError(f"Altinn token exchange unreachable ({type(exc).__name__})") from None
                if resp.status_code == 401 and attempt == 1:
                    http.drain(resp)
                    self.maskinporten.cache.invalidate(mp_token)
                    continue
                if resp.status_code != 200:
                    http.drain(resp)
                    raise TransientError(
                        f"Altinn token exchange failed (HTTP {resp.status_code})", status=resp.status_code, retry_after=retry_after_seconds(resp)
                    )
                body = http.read_capped(resp, http.TOKEN_CAP, "Altinn token exchange", deadline=deadline)
            try:
                token = body.decode("ascii").strip().strip('"')
            except UnicodeDecodeError:
                raise TransientError("Altinn token exchange answered something that is not a JWT") from None
            if not token:
                raise TransientError("Altinn token exchange returned no token")
            expires = min(_jwt_expiry(token), time.time() + MAX_TOKEN_LIFETIME)
            log.info("altinn token obtained")
            return token, expires
        raise TransientError("Altinn token exchange refused the Maskinporten token (HTTP 401)", status=401)

    def token(self) -> str:
        return self.cache.get()

    # -- requests -------------------------------------------------------------------------------

    def _check_origin(self, url: str) -> None:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}".lower() not in self._origins or parts.username or parts.password:
            raise UntrustedHostError("refusing to send the Altinn token to a host that is not configured")

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        deadline: Deadline,
        *,
        stream: bool = False,
        attempts: int = 3,
        json_body: Any = None,
        weak_404: bool = False,
    ) -> requests.Response:
        """One call with the bearer token, the 401 refresh and brief retries, inside ``deadline``
        (which must be running); returns a 2xx response whose body the caller reads or closes.

        ``json_body`` is sent as JSON (only idempotent calls: a retry may send it twice). With
        ``weak_404`` (storage's instance and data GETs) a 404 is :class:`NotFound`, else permanent.
        """
        import requests

        self._check_origin(url)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = self.token()
            try:
                resp = deadline.request(
                    self.session,
                    method,
                    url,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json" if not stream else "*/*"},
                    timeout=TIMEOUT,
                    stream=True,
                    allow_redirects=False,
                    json=json_body,
                )
            except requests.RequestException as exc:
                if deadline.expired:
                    raise deadline.error() from None
                if attempt < attempts and deadline.remaining() > 1.0:
                    self.retry_sleep(0.2 * attempt)
                    continue
                raise TransientError(f"{what}: {type(exc).__name__} talking to Altinn") from None
            status = resp.status_code
            if 200 <= status < 300:
                return resp
            wait = retry_after_seconds(resp)
            http.drain(resp)
            if status == 401 and not refreshed:
                refreshed = True
                self.cache.invalidate(token)
                attempt -= 1
                continue
            retryable = status in RETRY_STATUSES or status == 401
            if retryable and attempt < attempts and (wait is None or wait <= MAX_RETRY_AFTER) and deadline.remaining() > (wait or 0) + 1.0:
                self.retry_sleep(wait if wait is not None else 0.25 * 2**attempt)
                continue
            raise _failure(status, what, wait, weak_404=weak_404)

    def _call_json(
        self, method: str, url: str, what: str, cap: int, *, until: float | None = None, json_body: Any = None, permanent: bool = False, weak_404: bool = False
    ) -> Any:
        deadline = Deadline(http.CALL_DEADLINE, what, until=until)
        with deadline.running():
            resp = self._send(method, url, what, deadline, json_body=json_body, weak_404=weak_404)
            return http.read_json(resp, cap, what, permanent=permanent, deadline=deadline)

    # -- the storage API --------------------------------------------------------------------------

    def instance_url(self, ref: InstanceRef) -> str:
        return self.settings.storage_instance_url(ref.party_id, ref.instance_guid)

    def get_instance(self, ref: InstanceRef, *, until: float | None = None) -> Instance:
        """Storage's instance document, parsed (InvalidInstance when it does not fit the model)."""
        doc = self._call_json("GET", self.instance_url(ref), "get instance", http.INSTANCE_CAP, until=until, permanent=True, weak_404=True)
        return parse_instance(doc, ref)

    def download_deadline(self, size: int) -> float:
        return DATA_BASE_DEADLINE + size / self.min_rate

    def open_data(self, ref: InstanceRef, element: DataElement, *, until: float | None = None) -> Download:
        """The stored bytes of one data element, to be read with :class:`Download` (closed by the caller).

        Refused before the body is read when it is encoded or its ``Content-Length`` is not ``size``.
        """
        if not DATA_ID.fullmatch(element.id):
            raise PermanentError("data element id is not a plain identifier")
        what = f"download data element {element.id}"
        deadline = Deadline(self.download_deadline(element.size), what, until=until)
        deadline.start()
        try:
            resp = self._send("GET", f"{self.instance_url(ref)}/data/{element.id}", what, deadline, stream=True, weak_404=True)
            try:
                http.check_identity(resp, what)
                length = http.content_length(resp, what)
                if length is not None and length != element.size:
                    raise TransientError(f"{what}: Content-Length is {length}, the instance says {element.size}; not read")
            except BaseException:
                resp.close()
                raise
        except BaseException:
            deadline.stop()
            raise
        return Download(resp, element, deadline, what)

    def complete(self, ref: InstanceRef, *, until: float | None = None) -> None:
        """Confirm the download (idempotent on Altinn's side). The answer's body is not used: at most
        a small cap of it is read, to keep the connection."""
        what = "confirm instance"
        deadline = Deadline(http.CALL_DEADLINE, what, until=until)
        with deadline.running():
            http.drain(self._send("POST", f"{self.instance_url(ref)}/complete", what, deadline))

    def set_substatus(self, ref: InstanceRef, label: str, description: str | None, *, until: float | None = None) -> None:
        """The substatus the submitter sees on the instance (altinn-storage InstancesController.UpdateSubstatus:
        ``[HttpPut("{instanceOwnerPartyId:int}/{instanceGuid:guid}/substatus")]``, ``[FromBody] Substatus``
        with a required label, only the instance's org; 200 with the instance, whose body is not used)."""
        what = "set substatus"
        deadline = Deadline(http.CALL_DEADLINE, what, until=until)
        with deadline.running():
            body = {"label": label, "description": description}
            http.drain(self._send("PUT", f"{self.instance_url(ref)}/substatus", what, deadline, json_body=body))

    # -- instance query (catch-up) ----------------------------------------------------------------

    def query_url(self, org: str, app: str, *, size: int, continuation_token: str | None = None) -> str:
        """The storage query for completed instances of ``org/app`` that we have not confirmed.

        Hard-deleted instances are *not* filtered out: storage keeps them for the service owner until
        it has confirmed them (Altinn/altinn-storage src/Storage/Controllers/InstancesController.cs
        ``ApplyHardDeleteFilter`` filters them only for callers that are not the app owner)."""
        params = [
            ("org", org),
            ("appId", f"{org}/{app}"),
            ("process.isComplete", "true"),
            ("excludeConfirmedBy", org),
            ("size", str(size)),
        ]
        if continuation_token:
            params.append(("continuationToken", continuation_token))
        return f"{self.settings.platform_url}/storage/api/v1/instances?{urlencode(params)}"

    def query_instances(self, org: str, app: str, *, size: int = 100, continuation_token: str | None = None) -> InstancePage:
        """One page of the query. The next page's URL is rebuilt from the continuation token alone,
        so a ``next`` link naming another host is never followed (and never gets the token)."""
        data = self._call_json("GET", self.query_url(org, app, size=size, continuation_token=continuation_token), "query instances", http.QUERY_CAP)
        if not isinstance(data, dict) or not isinstance(data.get("instances", []), list):
            raise TransientError("query instances: Altinn answered with JSON that is not an instance list")
        instances = [i for i in data.get("instances") or [] if isinstance(i, dict)]
        token = _continuation_token(data)
        next_url = data.get("next")
        if token and isinstance(next_url, str) and _origin(next_url) != _origin(self.settings.platform_url):
            log.warning("query instances: the next link names another host; only its continuation token is used", extra={"org": org, "app": app})
        return InstancePage(instances=instances, continuation_token=token)

    # -- Events subscriptions -----------------------------------------------------------------------

    def subscriptions_url(self, subscription_id: int | None = None) -> str:
        base = f"{self.settings.platform_url}/events/api/v1/subscriptions"
        return base if subscription_id is None else f"{base}/{int(subscription_id)}"

    def _object(self, data: Any, what: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise TransientError(f"{what}: Altinn answered with JSON that is not an object")
        return data

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription of our org (the token's consumer)."""
        what = "list subscriptions"
        data = self._object(self._call_json("GET", self.subscriptions_url(), what, http.SUBSCRIPTIONS_CAP), what)
        subs = data.get("subscriptions") or []
        return [s for s in subs if isinstance(s, dict)] if isinstance(subs, list) else []

    def get_subscription(self, subscription_id: int) -> dict[str, Any]:
        what = "get subscription"
        return self._object(self._call_json("GET", self.subscriptions_url(subscription_id), what, http.SUBSCRIPTION_CAP), what)

    def create_subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a subscription. Altinn returns the existing one for an identical request (and sends a
        new validation event), so a retry is safe."""
        what = "create subscription"
        return self._object(self._call_json("POST", self.subscriptions_url(), what, http.SUBSCRIPTION_CAP, json_body=body), what)

    def delete_subscription(self, subscription_id: int) -> None:
        what = "delete subscription"
        deadline = Deadline(http.CALL_DEADLINE, what)
        with deadline.running():
            http.drain(self._send("DELETE", self.subscriptions_url(subscription_id), what, deadline))


def _failure(status: int, what: str, wait: float | None, *, weak_404: bool) -> Exception:
    """The error for a non-2xx answer that is not retried (any more) in process."""
    if status == 404 and weak_404:
        return NotFound(f"{what}: Altinn answered 404 (not found, or an error inside Altinn storage)", status=status)
    if status == 404:
        return PermanentError(f"{what}: not found in Altinn (HTTP 404)", status=status)
    if status == 410:
        return PermanentError(f"{what}: gone from Altinn (HTTP 410)", status=status)
    if status == 403:
        return PermanentError(f"{what}: access denied by Altinn (HTTP 403)", status=status)
    if status in RETRY_STATUSES or status == 401:
        return TransientError(f"{what}: Altinn answered HTTP {status}", status=status, retry_after=wait)
    if 300 <= status < 400:
        return PermanentError(f"{what}: Altinn answered a redirect (HTTP {status}); redirects are not followed", status=status)
    return PermanentError(f"{what}: Altinn answered HTTP {status}", status=status)


@dataclass(frozen=True)
class InstancePage:
    """One page of the instance query: the instances and, when there are more, the token for the next."""

    instances: list[dict[str, Any]]
    continuation_token: str | None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _continuation_token(data: dict[str, Any]) -> str | None:
    """The continuation token of the next page, as ``next`` carries it.

    Storage builds ``next`` with the token URL-encoded twice (``HttpUtility.UrlEncode`` and then the
    QueryBuilder) and URL-decodes the parameter once more on the way in (Altinn/altinn-storage
    src/Storage/Controllers/InstancesController.cs ``ExecuteQueryAndBuildResponse``,
    ``BuildRequestLink``, ``NormalizeContinuationToken``): taking the query value of ``next``
    (decoded once) and sending it back through ``urlencode`` round-trips it exactly.
    """
    next_url = data.get("next")
    if isinstance(next_url, str) and next_url:
        values = parse_qs(urlsplit(next_url).query).get("continuationToken")
        if values and values[0]:
            if len(values[0]) > 4096:
                raise TransientError("query instances: the continuation token is implausibly long")
            return values[0]
        raise TransientError("query instances: the next link has no continuation token")
    token = data.get("continuationToken")
    return token if isinstance(token, str) and token and len(token) <= 4096 else None


__all__ = ["AltinnClient", "Download", "InstancePage", "NotFound", "new_session", "safe_text"]
