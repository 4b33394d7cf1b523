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
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import MASKINPORTEN_CERTIFICATE, MASKINPORTEN_PRIVATE_KEY, Settings
from shared.errors import ConfigError, TransientError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_LIFETIME = 120  # seconds; Maskinporten's maximum
REFRESH_MARGIN = 60  # seconds before expiry a cached token is replaced
TIMEOUT = (5, 30)  # connect, read


def _normalise_pem(text: str) -> str:
    text = text.strip()
    if "\\n" in text and "\n" not in text:  # app settings often carry escaped newlines
        text = text.replace("\\n", "\n")
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

    raw = _normalise_pem(settings.private_key)
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
            certs = x509.load_pem_x509_certificates(_normalise_pem(settings.certificate).encode("ascii"))
        except Exception:
            raise ConfigError(MASKINPORTEN_CERTIFICATE, "is not a PEM certificate chain") from None
        if certs[0].public_key().public_numbers() != key.public_key().public_numbers():
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

    def __init__(self, fetch: Callable[[], tuple[str, float]], *, margin: float = REFRESH_MARGIN) -> None:
        self._fetch = fetch
        self._margin = margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def get(self) -> str:
        token, refresh_at = self._token, self._refresh_at
        if token is not None and time.time() < refresh_at:
            return token
        with self._lock:
            if self._token is not None and time.time() < self._refresh_at:
                return self._token
            now = time.time()
            token, expires_at = self._fetch()
            lifetime = max(0.0, expires_at - now)
            self._token, self._refresh_at = token, expires_at - min(self._margin, lifetime * 0.1)
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
        try:
            resp = self._session.post(
                self._settings.token_endpoint,
                data={"grant_type": GRANT_TYPE, "assertion": grant},
                headers={"Accept": "application/json"},
                timeout=TIMEOUT,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TransientError(f"Maskinporten unreachable ({type(exc).__name__})") from None
        if resp.status_code != 200:
            error = ""
            try:
                body = resp.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                error = f": {str(body.get('error', ''))[:60]} {str(body.get('error_description', ''))[:200]}"
            retry_after = retry_after_seconds(resp)
            raise TransientError(f"Maskinporten refused the grant (HTTP {resp.status_code}{error})", status=resp.status_code, retry_after=retry_after)
        try:
            body = resp.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 120))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TransientError("Maskinporten answered without an access token") from None
        if not isinstance(token, str) or not token:
            raise TransientError("Maskinporten answered without an access token")
        log.info("maskinporten token obtained", extra={"expires_in": lifetime})
        return token, started + lifetime


def retry_after_seconds(resp: requests.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta form), or None."""
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
