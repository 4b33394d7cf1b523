"""Maskinporten: clients, keys, and the token endpoint's grant checks."""

from __future__ import annotations

import base64
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .base import SimulatorBase
from .constants import DEFAULT_SCOPES, JWT_BEARER
from .http import _json, _Reply, _Request, _Response

_GRANT_ALGS = ("RS256", "RS384", "RS512")
_GRANT_CLAIMS = frozenset({"aud", "iss", "scope", "iat", "exp", "jti", "resource"})


@dataclass
class _Client:
    client_id: str
    org: str
    scopes: frozenset[str]
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    certificates: list[x509.Certificate] = field(default_factory=list)


@dataclass
class _Token:
    client_id: str
    org: str | None
    scope: str
    expires: float
    revoked: bool = False

    def valid(self) -> bool:
        return not self.revoked and time.time() < self.expires

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope.split()


def generate_client_key() -> tuple[str, str]:
    """A fresh RSA key pair for a simulated Maskinporten client: ``(private PEM, public PEM)``.

    Made at run time: no key material is ever committed.
    """
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            key = x509.load_pem_x509_certificate(data).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("only RSA keys are supported (RS256/RS384/RS512)")
    return key


class MaskinportenMixin(SimulatorBase):
    """Maskinporten: registered clients and the token endpoint (``/maskinporten/token``).

    The token endpoint checks what the real one checks: the grant's signature against the registered key
    (``kid``) or certificate (``x5c``), ``aud``, ``exp - iat <= 120``, an unused ``jti`` and the scopes.
    """

    def register_client(
        self,
        client_id: str,
        *,
        public_key_pem: bytes | str | None = None,
        kid: str | None = None,
        certificate_pem: bytes | str | None = None,
        scopes: str = DEFAULT_SCOPES,
        org: str = "ttd",
    ) -> None:
        """Register (or extend) a Maskinporten client: a key under ``kid`` and/or a certificate for ``x5c``."""
        if public_key_pem is None and certificate_pem is None:
            raise ValueError("give public_key_pem (with kid) and/or certificate_pem")
        if public_key_pem is not None and not kid:
            raise ValueError("a public key is registered under a kid; give kid")
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                client = self._clients[client_id] = _Client(client_id, org, frozenset(scopes.split()))
            client.org = org
            client.scopes = frozenset(scopes.split())
            if public_key_pem is not None and kid:
                client.keys[kid] = _load_public_key(public_key_pem)
            if certificate_pem is not None:
                data = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
                leaf = x509.load_pem_x509_certificates(data)[0]
                if not isinstance(leaf.public_key(), rsa.RSAPublicKey):
                    raise ValueError("only RSA certificates are supported")
                client.certificates.append(leaf)

    def expire_maskinporten_tokens(self) -> None:
        """Every Maskinporten token issued so far is rejected by the exchange from now on (401)."""
        with self._lock:
            for token in self._mp_tokens.values():
                token.revoked = True

    def _reject_grant(self, error: str, reason: str) -> _Reply:
        """A 400 token answer, recorded in ``rejected_grants``; the caller raises it."""
        with self._lock:
            self.rejected_grants.append(reason)
        response = _json(400, {"error": error, "error_description": reason})
        response.headers = [("Cache-Control", "no-store")]
        return _Reply(response)

    def _token(self, req: _Request) -> _Response:
        reject = self._reject_grant
        assertion = _grant_assertion(req, reject)
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise reject("invalid_grant", f"malformed assertion: {exc}") from None
        alg = header.get("alg")
        if alg not in _GRANT_ALGS:
            raise reject("invalid_grant", f"alg {alg!r} not allowed")
        iss = unverified.get("iss")
        key = self._grant_key(header, iss, reject)
        try:
            jwt.api_jws.decode_complete(assertion, key=key, algorithms=[alg])
        except jwt.PyJWTError as exc:
            raise reject("invalid_grant", f"signature does not verify: {exc}") from None
        claims = unverified
        unknown = sorted(set(claims) - _GRANT_CLAIMS)
        if unknown:
            raise reject("invalid_grant", f"unknown claims: {', '.join(unknown)}")
        if claims.get("aud") != self.maskinporten_issuer:
            raise reject("invalid_grant", f"aud must be {self.maskinporten_issuer!r}, got {claims.get('aud')!r}")
        now = time.time()
        _check_grant_lifetime(claims, now, reject)
        jti, scope = _grant_jti_and_scope(claims, reject)
        access_token = self._issue_maskinporten_token(iss, jti, scope, now, reject)
        doc = {"access_token": access_token, "token_type": "Bearer", "expires_in": self.maskinporten_token_lifetime, "scope": " ".join(scope.split())}
        response = _json(200, doc)
        response.headers = [("Cache-Control", "no-store")]
        return response

    def _issue_maskinporten_token(self, iss: Any, jti: str, scope: str, now: float, reject: Callable[[str, str], _Reply]) -> str:
        """The client's scopes and the jti's first use checked, a Maskinporten access token issued."""
        with self._lock:
            client = self._clients[iss]
            denied = sorted(set(scope.split()) - client.scopes)
            if denied:
                raise reject("invalid_scope", f"scope not allowed for client: {' '.join(denied)}")
            if jti in self._seen_jti:
                raise reject("invalid_grant", f"jti {jti!r} already used")
            self._seen_jti.add(jti)
            access_token = "mp." + secrets.token_urlsafe(32)
            self._mp_tokens[access_token] = _Token(client.client_id, client.org, " ".join(scope.split()), now + self.maskinporten_token_lifetime)
            self.grants += 1
        return access_token

    def _grant_key(self, header: dict[str, Any], iss: Any, reject: Callable[[str, str], _Reply]) -> rsa.RSAPublicKey:
        with self._lock:
            clients = list(self._clients.values())
        if "x5c" in header:
            return _certificate_key(header["x5c"], iss, clients, reject)
        kid = header.get("kid")
        if not kid:
            raise reject("invalid_grant", "assertion header has neither kid nor x5c")
        owners = [c for c in clients if kid in c.keys]
        if not owners:
            raise reject("invalid_grant", f"unknown kid {kid!r}")
        for client in owners:
            if client.client_id == iss:
                return client.keys[kid]
        raise reject("invalid_grant", f"iss {iss!r} is not the client kid {kid!r} is registered to")


def _grant_assertion(req: _Request, reject: Callable[[str, str], _Reply]) -> str:
    """The JWT bearer grant's assertion from the form body."""
    if "application/x-www-form-urlencoded" not in req.headers.get("Content-Type", "").lower():
        raise reject("invalid_request", "content type must be application/x-www-form-urlencoded")
    form = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    if form.get("grant_type", [""])[0] != JWT_BEARER:
        raise reject("invalid_request", f"grant_type must be {JWT_BEARER}")
    assertion = form.get("assertion", [""])[0]
    if not assertion:
        raise reject("invalid_request", "assertion missing")
    return assertion


def _certificate_key(chain: Any, iss: Any, clients: list[_Client], reject: Callable[[str, str], _Reply]) -> rsa.RSAPublicKey:
    """The key of an ``x5c`` leaf certificate registered to the client ``iss`` and valid now."""
    if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
        raise reject("invalid_grant", "x5c must be a non-empty JSON array of base64 certificates")
    try:
        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    except ValueError:
        raise reject("invalid_grant", "x5c leaf is not a base64 DER certificate") from None
    owners = [c for c in clients if any(cert == leaf for cert in c.certificates)]
    if not owners:
        raise reject("invalid_grant", "x5c certificate is not registered with any client")
    if not any(c.client_id == iss for c in owners):
        raise reject("invalid_grant", f"iss {iss!r} is not the client the certificate is registered to")
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise reject("invalid_grant", "x5c certificate is not valid now")
    key = leaf.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _check_grant_lifetime(claims: dict[str, Any], now: float, reject: Callable[[str, str], _Reply]) -> None:
    """``iat`` within 10 s of now, ``exp`` in the future and at most 120 s after ``iat``."""
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _is_number(iat) or not _is_number(exp):
        raise reject("invalid_grant", "iat and exp must be numbers")
    if abs(now - iat) > 10:
        raise reject("invalid_grant", f"iat {iat} is not within 10 s of now ({now:.0f})")
    if exp <= now:
        raise reject("invalid_grant", "assertion expired (exp in the past)")
    if exp - iat > 120:
        raise reject("invalid_grant", f"exp - iat = {exp - iat:.0f} s exceeds 120 s")


def _grant_jti_and_scope(claims: dict[str, Any], reject: Callable[[str, str], _Reply]) -> tuple[str, str]:
    """The grant's ``jti`` and ``scope`` (both required); ``resource``, if given, a string or strings."""
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise reject("invalid_grant", "jti missing")
    resource = claims.get("resource")
    if resource is not None and not (isinstance(resource, str) or (isinstance(resource, list) and all(isinstance(r, str) for r in resource))):
        raise reject("invalid_grant", "resource must be a string or an array of strings")
    scope = claims.get("scope")
    if not isinstance(scope, str) or not scope.split():
        raise reject("invalid_scope", "scope missing")
    return jti, scope


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
