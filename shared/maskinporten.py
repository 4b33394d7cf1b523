"""Maskinporten JWT grant and a thread-safe token cache.

The grant (RFC 7523) is signed with RS256 and carries exactly the claims Maskinporten accepts:
``aud`` (the issuer), ``iss`` (client id), ``scope``, ``iat``, ``exp`` (iat + 120 s at most) and a
fresh ``jti``. The header names the key with ``kid`` or carries the business certificate chain
as ``x5c``. Tokens are cached until shortly before they expire, so however many instances a
process archives it asks Maskinporten once per token lifetime.

cryptography and PyJWT are imported on first use, not at import, to keep cold starts cheap.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import http
from shared.config import MASKINPORTEN_CERTIFICATE, MASKINPORTEN_PRIVATE_KEY, Settings
from shared.errors import ConfigError, TransientError, UnresolvedKeyVaultReference
from shared.http import Deadline, safe_text

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_LIFETIME = 120  # seconds; Maskinporten's maximum
REFRESH_MARGIN = 60  # seconds before expiry a cached token is replaced
TIMEOUT = (5, 30)  # connect, and the longest gap between two reads (the total is a Deadline)
MAX_TOKEN_LIFETIME = 3600.0  # cache a token for at most this long, whatever expires_in claims
DEFAULT_LIFETIME = 120.0  # when expires_in is absent
# RFC 6750 b64token: what a bearer token may consist of (no spaces, quotes, CR or LF), bounded.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,16384}=*")
KEY_VAULT_PREFIX = "@Microsoft.KeyVault("


def _normalise_pem(name: str, text: str) -> str:
    """PEM as given, with ``\\n`` escapes (azd and app settings), or base64 of the PEM."""
    text = text.strip()
    if text.startswith(KEY_VAULT_PREFIX):
        raise UnresolvedKeyVaultReference(name)
    if "\\n" in text and "\n" not in text:  # app settings often carry escaped newlines
        text = text.replace("\\n", "\n")
    if not text.startswith(("-----", "{")) and re.fullmatch(r"[A-Za-z0-9+/=\s]+", text):
        try:
            decoded = base64.b64decode("".join(text.split()), validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return text
        if decoded.lstrip().startswith("-----BEGIN"):
            return decoded.strip()
    return text


@dataclass(frozen=True)
class SigningKey:
    key: Any = None  # cryptography private key object
    kid: str | None = None
    x5c: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show key material
        return f"SigningKey(kid={self.kid!r}, x5c={len(self.x5c)} certificate(s))"


def load_signing_key(settings: Settings) -> SigningKey:
    """Parse the private key (PEM or JWK) and the optional certificate chain. ConfigError when invalid."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

    raw = _normalise_pem(MASKINPORTEN_PRIVATE_KEY, settings.private_key)
    kid = settings.kid
    key: Any
    if raw.startswith("{"):
        try:
            from jwt.algorithms import RSAAlgorithm

            jwk = json.loads(raw)
            key = RSAAlgorithm.from_jwk(jwk)
            kid = kid or (jwk.get("kid") if isinstance(jwk.get("kid"), str) else None)
        except Exception:
            raise ConfigError(MASKINPORTEN_PRIVATE_KEY, "is not a valid RSA private JWK") from None
    else:
        try:
            key = load_pem_private_key(raw.encode("ascii"), password=None)
        except Exception:
            raise ConfigError(MASKINPORTEN_PRIVATE_KEY, "is not a valid unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(MASKINPORTEN_PRIVATE_KEY, "must be an RSA private key (Maskinporten uses RS256)")
    chain: tuple[str, ...] = ()
    if settings.certificate:
        from cryptography import x509

        try:
            certs = x509.load_pem_x509_certificates(_normalise_pem(MASKINPORTEN_CERTIFICATE, settings.certificate).encode("ascii"))
        except ConfigError:
            raise
        except Exception:
            raise ConfigError(MASKINPORTEN_CERTIFICATE, "is not a PEM certificate chain") from None
        leaf_key = certs[0].public_key()
        if not isinstance(leaf_key, rsa.RSAPublicKey) or leaf_key.public_numbers() != key.public_key().public_numbers():
            raise ConfigError(MASKINPORTEN_CERTIFICATE, "the first certificate does not belong to the private key")
        chain = tuple(base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii") for c in certs)
    return SigningKey(key=key, kid=kid, x5c=chain)


def build_grant(settings: Settings, signing_key: SigningKey, *, now: float | None = None) -> str:
    """A signed JWT grant for one token request."""
    import jwt

    iat = int(now if now is not None else time.time())
    claims = {
        "aud": settings.maskinporten_issuer,
        "iss": settings.client_id,
        "scope": settings.scopes,
        "iat": iat,
        "exp": iat + GRANT_LIFETIME,
        "jti": str(uuid.uuid4()),
    }
    headers: dict[str, Any] = {}
    if signing_key.kid:  # a key registered on the client
        headers["kid"] = signing_key.kid
    if signing_key.x5c:  # the business certificate chain, leaf first
        headers["x5c"] = list(signing_key.x5c)
    return jwt.encode(claims, signing_key.key, algorithm="RS256", headers=headers)


class TokenCache:
    """One token, fetched by ``fetch`` when missing or about to expire; safe across threads.

    ``fetch`` returns ``(token, expires_at_epoch)``. Concurrent callers wait for one fetch. A token
    is replaced ``margin`` seconds before it expires, or after 90 % of its lifetime if that is shorter.
    """

    def __init__(self, fetch: Callable[[], tuple[str, float]], *, margin: float = REFRESH_MARGIN, clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def get(self) -> str:
        token, refresh_at = self._token, self._refresh_at
        if token is not None and self._clock() < refresh_at:
            return token
        with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            now = self._clock()
            token, expires_at = self._fetch()  # raises for a token that failed validation: nothing cached
            lifetime = max(0.0, min(expires_at - now, MAX_TOKEN_LIFETIME))
            self._token, self._refresh_at = token, now + lifetime - min(self._margin, lifetime * 0.1)
            return token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still ``token``, when given)."""
        with self._lock:
            if token is None or self._token == token:
                self._token, self._refresh_at = None, 0.0


class MaskinportenClient:
    """Gets Maskinporten access tokens with a JWT grant and caches them."""

    def __init__(self, settings: Settings, session: requests.Session) -> None:
        self._settings = settings
        self._session = session
        self._key: SigningKey | None = None
        self.cache = TokenCache(self._request_token)

    def _signing_key(self) -> SigningKey:
        if self._key is None:
            self._key = load_signing_key(self._settings)
        return self._key

    def token(self) -> str:
        return self.cache.get()

    def _request_token(self) -> tuple[str, float]:
        import requests

        grant = build_grant(self._settings, self._signing_key())
        started = time.time()
        deadline = Deadline(http.CALL_DEADLINE, "Maskinporten token request")
        with deadline.running():
            try:
                resp = deadline.request(
                    self._session,
                    "POST",
                    self._settings.token_endpoint,
                    data={"grant_type": GRANT_TYPE, "assertion": grant},
                    headers={"Accept": "application/json"},
                    timeout=TIMEOUT,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                if deadline.expired:
                    raise deadline.error() from None
                raise TransientError(f"Maskinporten unreachable ({type(exc).__name__})") from None
            status = resp.status_code
            retry_after = retry_after_seconds(resp)
            body = http.read_capped(resp, http.TOKEN_CAP, "Maskinporten token request", deadline=deadline)
        if status != 200:
            error = ""
            try:
                doc = http.parse_json(body, "Maskinporten")
            except TransientError:
                doc = None
            if isinstance(doc, dict):
                error = f": {safe_text(doc.get('error', ''), 60)} {safe_text(doc.get('error_description', ''), 200)}"
            raise TransientError(f"Maskinporten refused the grant (HTTP {status}{error})", status=status, retry_after=retry_after)
        token, lifetime = _token_answer(http.parse_json(body, "Maskinporten token request"))
        log.info("maskinporten token obtained", extra={"expires_in": lifetime})
        return token, started + min(lifetime, MAX_TOKEN_LIFETIME)


def _token_answer(doc: Any) -> tuple[str, float]:
    """``access_token`` and ``expires_in`` of a token answer, checked: a bearer token's characters
    (RFC 6750), bounded length, a positive finite lifetime. TransientError otherwise (never cached)."""
    if not isinstance(doc, dict):
        raise TransientError("Maskinporten answered without an access token")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise TransientError("Maskinporten answered without an access token")
    if not _B64TOKEN.fullmatch(token):
        raise TransientError("Maskinporten answered an access token with characters a bearer token cannot have, or of implausible length")
    lifetime = doc.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not math.isfinite(lifetime) or lifetime <= 0:
        raise TransientError("Maskinporten answered an access token without a valid expires_in")
    return token, float(lifetime)


def retry_after_seconds(resp: requests.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta form), or None."""
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
