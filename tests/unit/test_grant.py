"""The Maskinporten grant: claims, header and signature, checked with PyJWT against the public key."""

from __future__ import annotations

import time

import jwt
import pytest

from shared.config import load_settings
from shared.errors import ConfigError
from shared.maskinporten import build_grant, load_signing_key


def settings(rsa_key, **extra):
    return load_settings({"ALTINN_APPS": "ttd/a", "MASKINPORTEN_CLIENT_ID": "client-1", "MASKINPORTEN_PRIVATE_KEY": rsa_key["private_pem"], **extra})


def test_claims_and_kid_header(rsa_key):
    s = settings(rsa_key, MASKINPORTEN_KID="kid-1", ALTINN_ENVIRONMENT="production")
    now = time.time()
    grant = build_grant(s, load_signing_key(s), now=now)
    header = jwt.get_unverified_header(grant)
    assert header["alg"] == "RS256" and header["kid"] == "kid-1" and "x5c" not in header
    claims = jwt.decode(grant, rsa_key["public_pem"], algorithms=["RS256"], audience="https://maskinporten.no/")
    assert set(claims) == {"aud", "iss", "scope", "iat", "exp", "jti"}
    assert claims["iss"] == "client-1"
    assert claims["scope"] == "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
    assert claims["iat"] == int(now) and claims["exp"] - claims["iat"] <= 120
    assert jwt.decode(build_grant(s, load_signing_key(s)), options={"verify_signature": False})["jti"] != claims["jti"]  # fresh jti


def test_x5c_header_carries_the_certificate_chain(rsa_key):
    import base64

    from cryptography import x509

    s = settings(rsa_key, MASKINPORTEN_CERTIFICATE=rsa_key["cert_pem"])
    header = jwt.get_unverified_header(build_grant(s, load_signing_key(s)))
    assert "kid" not in header
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert leaf == x509.load_pem_x509_certificate(rsa_key["cert_pem"].encode())


def test_escaped_newlines_and_jwk_keys_are_accepted(rsa_key):
    escaped = rsa_key["private_pem"].replace("\n", "\\n")
    assert load_signing_key(settings(rsa_key, MASKINPORTEN_PRIVATE_KEY=escaped)).key is not None
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwt.algorithms import RSAAlgorithm

    jwk = RSAAlgorithm.to_jwk(load_pem_private_key(rsa_key["private_pem"].encode(), None))
    key = load_signing_key(settings(rsa_key, MASKINPORTEN_PRIVATE_KEY=jwk.replace("}", ', "kid": "from-jwk"}')))
    assert key.kid == "from-jwk"


# A PEM frame around garbage (assembled, so that no key-looking block stands in the repository).
BROKEN_PEM = "\n".join(["-----BEGIN " + "PRIVATE KEY-----", "AAAA", "-----END " + "PRIVATE KEY-----"])


@pytest.mark.parametrize("bad", ["not a key", BROKEN_PEM, '{"kty": "RSA"}'])
def test_bad_key_names_the_setting_without_echoing_it(rsa_key, bad):
    with pytest.raises(ConfigError) as err:
        load_signing_key(settings(rsa_key, MASKINPORTEN_PRIVATE_KEY=bad))
    assert err.value.setting == "MASKINPORTEN_PRIVATE_KEY" and bad not in str(err.value)


def test_certificate_of_another_key_is_refused(rsa_key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ConfigError) as err:
        load_signing_key(settings(rsa_key, MASKINPORTEN_PRIVATE_KEY=pem, MASKINPORTEN_CERTIFICATE=rsa_key["cert_pem"]))
    assert err.value.setting == "MASKINPORTEN_CERTIFICATE"
