"""Altinn client: token exchange, instance, data stream, complete, instance query, subscriptions.

Every URL is built from the configured hosts and an :class:`~shared.events.InstanceRef`; none is
taken from an event or from a link in a response. Before a request carries the bearer token its
origin is checked against the configured Altinn hosts, and redirects are never followed.

Status mapping: 2xx ok; 401 -> refresh the token once and retry; 404/410 and 403 -> permanent;
429, 5xx, timeouts and resets -> retried briefly in process, then transient (the queue retries).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from shared.config import Settings
from shared.errors import PermanentError, TransientError, UntrustedHostError
from shared.events import InstanceRef
from shared.maskinporten import MaskinportenClient, TokenCache, retry_after_seconds

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

TIMEOUT = (5, 60)  # connect, read (between bytes)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 10.0  # longer waits are left to the queue
# Altinn's ids are GUIDs; accept any single safe path segment, never "/", ".", "%" or "?".
_DATA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")



def new_session(pool_size: int = 32) -> requests.Session:
    """A pooled HTTP session. No urllib3 retries: retry policy is ours (see _send)."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
    session.headers["User-Agent"] = "altinn-mottak"
    return session


def _jwt_expiry(token: str) -> float:
    """``exp`` of a JWT without verifying it (we only schedule a refresh with it)."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return float(claims["exp"])
    except Exception:
        return time.time() + 300  # opaque or odd token: refresh after five minutes


class AltinnClient:
    def __init__(self, settings: Settings, session: requests.Session, maskinporten: MaskinportenClient) -> None:
        self.settings = settings
        self.session = session
        self.maskinporten = maskinporten
        self.cache = TokenCache(self._exchange)
        self._origins = settings.allowed_origins()
        self.retry_sleep = time.sleep  # tests may shorten waits

    # -- tokens ---------------------------------------------------------------------------------

    def _exchange(self) -> tuple[str, float]:
        import requests

        url = f"{self.settings.platform_url}/authentication/api/v1/exchange/maskinporten"
        for attempt in (1, 2):
            mp_token = self.maskinporten.token()
            try:
                resp = self.session.get(url, headers={"Authorization": f"Bearer {mp_token}"}, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                raise TransientError(f"Altinn token exchange unreachable ({type(exc).__name__})") from None
            if resp.status_code == 401 and attempt == 1:
                self.maskinporten.cache.invalidate(mp_token)
                continue
            if resp.status_code != 200:
                raise TransientError(f"Altinn token exchange failed (HTTP {resp.status_code})", status=resp.status_code, retry_after=retry_after_seconds(resp))
            token = resp.text.strip().strip('"')
            if not token:
                raise TransientError("Altinn token exchange returned no token")
            log.info("altinn token obtained")
            return token, _jwt_expiry(token)
        raise TransientError("Altinn token exchange refused the Maskinporten token (HTTP 401)", status=401)

    def token(self) -> str:
        return self.cache.get()

    # -- requests -------------------------------------------------------------------------------

    def _check_origin(self, url: str) -> None:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}".lower() not in self._origins or parts.username or parts.password:
            raise UntrustedHostError("refusing to send the Altinn token to a host that is not configured")

    def _send(self, method: str, url: str, what: str, *, stream: bool = False, attempts: int = 3, json_body: Any = None) -> requests.Response:
        """One call with the bearer token, the 401 refresh and brief retries; returns a 2xx response.

        ``json_body`` is sent as JSON (only idempotent calls: a retry may send it twice).
        """
        import requests

        self._check_origin(url)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = self.token()
            try:
                resp = self.session.request(
                    method,
                    url,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json" if not stream else "*/*"},
                    timeout=TIMEOUT,
                    stream=stream,
                    allow_redirects=False,
                    json=json_body,
                )
            except requests.RequestException as exc:
                if attempt < attempts:
                    self.retry_sleep(0.2 * attempt)
                    continue
                raise TransientError(f"{what}: {type(exc).__name__} talking to Altinn") from None
            status = resp.status_code
            if 200 <= status < 300:
                return resp
            resp.close()
            if status == 401 and not refreshed:
                refreshed = True
                self.cache.invalidate(token)
                attempt -= 1
                continue
            if status in (404, 410):
                raise PermanentError(f"{what}: not found in Altinn (HTTP {status})", status=status)
            if status == 403:
                raise PermanentError(f"{what}: access denied by Altinn (HTTP 403)", status=status)
            if status in RETRY_STATUSES or status == 401:
                wait = retry_after_seconds(resp)
                if attempt < attempts and (wait is None or wait <= MAX_RETRY_AFTER):
                    self.retry_sleep(wait if wait is not None else 0.25 * 2**attempt)
                    continue
                raise TransientError(f"{what}: Altinn answered HTTP {status}", status=status, retry_after=wait)
            if 300 <= status < 400:
                raise PermanentError(f"{what}: Altinn answered a redirect (HTTP {status}); redirects are not followed", status=status)
            raise PermanentError(f"{what}: Altinn answered HTTP {status}", status=status)

    # -- API ------------------------------------------------------------------------------------

    def instance_url(self, ref: InstanceRef) -> str:
        return self.settings.instance_url(ref.org, ref.app, ref.party_id, ref.instance_guid)

    def get_instance(self, ref: InstanceRef) -> dict[str, Any]:
        resp = self._send("GET", self.instance_url(ref), "get instance")
        try:
            data = resp.json()
        except ValueError:
            raise TransientError("get instance: Altinn answered with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise TransientError("get instance: Altinn answered with JSON that is not an instance")
        return data

    def open_data(self, ref: InstanceRef, element_id: str) -> requests.Response:
        """A streaming response for one data element; the caller closes it."""
        if not _DATA_ID.fullmatch(element_id):
            raise PermanentError("data element id is not a plain identifier")
        return self._send("GET", f"{self.instance_url(ref)}/data/{element_id}", "download data element", stream=True)

    def complete(self, ref: InstanceRef) -> None:
        """Confirm the download (idempotent on Altinn's side)."""
        self._send("POST", f"{self.instance_url(ref)}/complete", "confirm instance").close()

    # -- instance query (catch-up) ----------------------------------------------------------------

    def query_url(self, org: str, app: str, *, size: int, continuation_token: str | None = None) -> str:
        """The storage query for completed, not hard-deleted instances of ``org/app`` we have not confirmed."""
        params = [
            ("org", org),
            ("appId", f"{org}/{app}"),
            ("process.isComplete", "true"),
            ("excludeConfirmedBy", org),
            ("status.isHardDeleted", "false"),
            ("size", str(size)),
        ]
        if continuation_token:
            params.append(("continuationToken", continuation_token))
        return f"{self.settings.platform_url}/storage/api/v1/instances?{urlencode(params)}"

    def query_instances(self, org: str, app: str, *, size: int = 100, continuation_token: str | None = None) -> InstancePage:
        """One page of the query. The next page's URL is rebuilt from the continuation token alone,
        so a ``next`` link naming another host is never followed (and never gets the token)."""
        resp = self._send("GET", self.query_url(org, app, size=size, continuation_token=continuation_token), "query instances")
        try:
            data = resp.json()
        except ValueError:
            raise TransientError("query instances: Altinn answered with a body that is not JSON") from None
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

    def _json(self, resp: requests.Response, what: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            raise TransientError(f"{what}: Altinn answered with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise TransientError(f"{what}: Altinn answered with JSON that is not an object")
        return data

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription of our org (the token's consumer)."""
        data = self._json(self._send("GET", self.subscriptions_url(), "list subscriptions"), "list subscriptions")
        subs = data.get("subscriptions") or []
        return [s for s in subs if isinstance(s, dict)] if isinstance(subs, list) else []

    def get_subscription(self, subscription_id: int) -> dict[str, Any]:
        return self._json(self._send("GET", self.subscriptions_url(subscription_id), "get subscription"), "get subscription")

    def create_subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a subscription. Altinn returns the existing one for an identical request, so a retry is safe."""
        return self._json(self._send("POST", self.subscriptions_url(), "create subscription", json_body=body), "create subscription")

    def delete_subscription(self, subscription_id: int) -> None:
        self._send("DELETE", self.subscriptions_url(subscription_id), "delete subscription").close()


@dataclass(frozen=True)
class InstancePage:
    """One page of the instance query: the instances and, when there are more, the token for the next."""

    instances: list[dict[str, Any]]
    continuation_token: str | None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _continuation_token(data: dict[str, Any]) -> str | None:
    """The continuation token of the next page: from ``next`` (Altinn's link), or a bare token field."""
    next_url = data.get("next")
    if isinstance(next_url, str) and next_url:
        values = parse_qs(urlsplit(next_url).query).get("continuationToken")
        if values and values[0]:
            return values[0]
        raise TransientError("query instances: the next link has no continuation token")
    token = data.get("continuationToken")
    return token if isinstance(token, str) and token else None
