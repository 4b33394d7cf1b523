"""Altinn authentication: the Maskinporten token exchange, and the Altinn token every Altinn call needs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .base import SimulatorBase
from .http import _empty, _Reply, _Request, _Response
from .maskinporten import _Token

_ALTINN_KEY_LOCK = threading.Lock()
_ALTINN_KEY: list[rsa.RSAPrivateKey] = []


def _altinn_signing_key() -> rsa.RSAPrivateKey:
    """The key Altinn tokens are signed with: one per process, made on first use."""
    with _ALTINN_KEY_LOCK:
        if not _ALTINN_KEY:
            _ALTINN_KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _ALTINN_KEY[0]


class AuthenticationMixin(SimulatorBase):
    """``/authentication/api/v1/exchange/maskinporten``; Altinn calls without a valid token get 401."""

    def expire_altinn_tokens(self) -> None:
        """Every Altinn token issued so far is rejected from now on (401)."""
        with self._lock:
            for token in self._altinn_tokens.values():
                token.revoked = True

    def _exchange(self, req: _Request) -> _Response:
        bearer = req.bearer()
        with self._lock:
            grant = self._mp_tokens.get(bearer or "")
            if grant is None or not grant.valid():
                return _empty(401)
            now = time.time()
            org = grant.org if "altinn:serviceowner" in grant.scope else None
            claims: dict[str, Any] = {
                "iss": f"{self.url}/authentication/api/v1/openid/",
                "client_id": grant.client_id,
                "scope": grant.scope,
                "iat": int(now),
                "nbf": int(now),
                "exp": int(now + self.altinn_token_lifetime),
                "jti": str(uuid.uuid4()),
            }
            if org:
                claims["org"] = org
                claims["urn:altinn:org"] = org
            token = jwt.encode(claims, _altinn_signing_key(), algorithm="RS256", headers={"kid": "altinn-simulator"})
            self._altinn_tokens[token] = _Token(grant.client_id, org, grant.scope, now + self.altinn_token_lifetime)
            self.exchanges += 1
        body = json.dumps(token) if self.quote_exchange_token else token
        return _Response(200, body.encode(), "text/plain; charset=utf-8")

    def _altinn_token(self, req: _Request) -> _Token:
        with self._lock:
            token = self._altinn_tokens.get(req.bearer() or "")
            if token is None or not token.valid():
                raise _Reply(_empty(401))
            return token
