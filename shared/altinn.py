"""Altinn client: token exchange, instance, data stream, complete.

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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.config import Settings
from shared.errors import PermanentError, TransientError, UntrustedHostError
from shared.events import InstanceRef
from shared.maskinporten import MaskinportenClient, TokenCache, _retry_after

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
                raise TransientError(f"Altinn token exchange failed (HTTP {resp.status_code})", status=resp.status_code, retry_after=_retry_after(resp))
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

    def _send(self, method: str, url: str, what: str, *, stream: bool = False, attempts: int = 3) -> requests.Response:
        """One call with the bearer token, the 401 refresh and brief retries; returns a 2xx response."""
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
                wait = _retry_after(resp)
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
