"""The Altinn + Maskinporten simulator, exercised over real sockets with requests.

Maskinporten, the exchange, authorization, the storage API's shapes, data, faults, /complete, the query and
subscriptions; the behaviours copied from Altinn's code (two origins, app metadata, the app API's DTO and
form re-serialization, substatus, keyset paging, validation retries, loaded documents) are pinned in
test_simulator_altinn.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import psutil
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from devtools.simulator import ElementSpec, SimInstance, Simulator

pytestmark = pytest.mark.timeout(120)

CLIENT = "sim-test-client"
KID = "k1"
SCOPES = "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
READ = "altinn:serviceowner/instances.read"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Keys:
    key: rsa.RSAPrivateKey
    public_pem: bytes
    other: rsa.RSAPrivateKey
    cert_key: rsa.RSAPrivateKey
    cert_pem: bytes
    x5c: list[str]
    stranger_x5c: list[str]


def _self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test AS")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def _x5c(cert: x509.Certificate) -> list[str]:
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


@pytest.fixture(scope="module")
def keys() -> Keys:
    key, other, cert_key, stranger_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4))
    cert = _self_signed(cert_key, "sim-test")
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Keys(
        key=key,
        public_pem=public_pem,
        other=other,
        cert_key=cert_key,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        x5c=_x5c(cert),
        stranger_x5c=_x5c(_self_signed(stranger_key, "stranger")),
    )


@pytest.fixture
def sim(keys: Keys) -> Iterator[Simulator]:
    with Simulator() as simulator:
        simulator.register_client(CLIENT, public_key_pem=keys.public_pem, kid=KID, certificate_pem=keys.cert_pem)
        yield simulator


def assertion(sim: Simulator, key: rsa.RSAPrivateKey, *, headers: dict[str, Any] | None = None, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"aud": sim.maskinporten_issuer, "iss": CLIENT, "scope": SCOPES, "iat": now, "exp": now + 100, "jti": str(uuid.uuid4())}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers=headers if headers is not None else {"kid": KID})


def grant(sim: Simulator, jwt_assertion: str) -> requests.Response:
    return requests.post(sim.token_endpoint, data={"grant_type": JWT_BEARER, "assertion": jwt_assertion}, timeout=10)


def altinn_token(sim: Simulator, keys: Keys, **claims: Any) -> str:
    kid = claims.pop("kid", KID)
    response = grant(sim, assertion(sim, keys.key, headers={"kid": kid}, **claims))
    assert response.status_code == 200, response.text
    exchanged = requests.get(
        sim.url + "/authentication/api/v1/exchange/maskinporten", headers={"Authorization": "Bearer " + response.json()["access_token"]}, timeout=10
    )
    assert exchanged.status_code == 200
    return exchanged.text


def session(token: str | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    if token:
        s.headers["Authorization"] = "Bearer " + token
    return s


@pytest.fixture
def http(sim: Simulator, keys: Keys) -> Iterator[requests.Session]:
    with session(altinn_token(sim, keys)) as s:
        yield s


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


class Receiver:
    """A tiny webhook endpoint: records every POST, answers ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append((self.path, self.headers.get("Content-Type", ""), json.loads(body)))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/events?code=secret"

    def wait(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.time() + timeout
        while len(self.received) < count and time.time() < deadline:
            time.sleep(0.01)
        assert len(self.received) >= count, self.received

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# Maskinporten


def test_grant_with_kid_is_accepted(sim: Simulator, keys: Keys) -> None:
    response = grant(sim, assertion(sim, keys.key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 599 and body["scope"] == SCOPES and body["access_token"]
    assert sim.grants == 1 and sim.rejected_grants == [] and sim.calls["token"] == 1


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
def test_grant_with_x5c_is_accepted(sim: Simulator, keys: Keys, alg: str) -> None:
    response = grant(sim, assertion(sim, keys.cert_key, headers={"x5c": keys.x5c}, alg=alg, resource=["urn:altinn:resource:x"]))
    assert response.status_code == 200, response.text
    assert sim.grants == 1


def _bad(name: str, keys: Keys, sim: Simulator) -> str:
    now = int(time.time())
    cases: dict[str, Any] = {
        "wrong_aud": lambda: assertion(sim, keys.key, aud=sim.token_endpoint),
        "lifetime_over_120": lambda: assertion(sim, keys.key, iat=now, exp=now + 121),
        "unknown_claim": lambda: assertion(sim, keys.key, sub=CLIENT),
        "wrong_key": lambda: assertion(sim, keys.other),
        "unknown_scope": lambda: assertion(sim, keys.key, scope=SCOPES + " altinn:serviceowner/other"),
        "expired": lambda: assertion(sim, keys.key, iat=now - 5, exp=now - 1),
        "iat_too_old": lambda: assertion(sim, keys.key, iat=now - 30, exp=now + 60),
        "unknown_kid": lambda: assertion(sim, keys.key, headers={"kid": "nope"}),
        "no_kid_or_x5c": lambda: assertion(sim, keys.key, headers={}),
        "iss_not_key_owner": lambda: assertion(sim, keys.key, iss="someone-else"),
        "unregistered_x5c": lambda: assertion(sim, keys.cert_key, headers={"x5c": keys.stranger_x5c}),
        "x5c_wrong_signer": lambda: assertion(sim, keys.other, headers={"x5c": keys.x5c}),
        "hs256": lambda: jwt.encode({"aud": sim.maskinporten_issuer}, "secret-secret-secret-secret-secret", algorithm="HS256", headers={"kid": KID}),
        "no_jti": lambda: assertion(sim, keys.key, jti=None),
        "no_scope": lambda: assertion(sim, keys.key, scope=None),
    }
    return cases[name]()


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("wrong_aud", "invalid_grant"),
        ("lifetime_over_120", "invalid_grant"),
        ("unknown_claim", "invalid_grant"),
        ("wrong_key", "invalid_grant"),
        ("unknown_scope", "invalid_scope"),
        ("expired", "invalid_grant"),
        ("iat_too_old", "invalid_grant"),
        ("unknown_kid", "invalid_grant"),
        ("no_kid_or_x5c", "invalid_grant"),
        ("iss_not_key_owner", "invalid_grant"),
        ("unregistered_x5c", "invalid_grant"),
        ("x5c_wrong_signer", "invalid_grant"),
        ("hs256", "invalid_grant"),
        ("no_jti", "invalid_grant"),
        ("no_scope", "invalid_scope"),
    ],
)
def test_grant_rejections(sim: Simulator, keys: Keys, case: str, error: str) -> None:
    response = grant(sim, _bad(case, keys, sim))
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert len(sim.rejected_grants) == 1 and response.json()["error_description"] == sim.rejected_grants[0]
    assert sim.grants == 0


def test_reused_jti_is_rejected(sim: Simulator, keys: Keys) -> None:
    jti = str(uuid.uuid4())
    assert grant(sim, assertion(sim, keys.key, jti=jti)).status_code == 200
    again = grant(sim, assertion(sim, keys.key, jti=jti))
    assert again.status_code == 400 and "jti" in again.json()["error_description"]
    assert sim.grants == 1 and len(sim.rejected_grants) == 1


def test_token_endpoint_rejects_malformed_requests(sim: Simulator, keys: Keys) -> None:
    wrong_type = requests.post(sim.token_endpoint, data={"grant_type": "client_credentials", "assertion": assertion(sim, keys.key)}, timeout=10)
    missing = requests.post(sim.token_endpoint, data={"grant_type": JWT_BEARER}, timeout=10)
    garbage = requests.post(sim.token_endpoint, data={"grant_type": JWT_BEARER, "assertion": "not.a.jwt"}, timeout=10)
    assert [r.status_code for r in (wrong_type, missing, garbage)] == [400, 400, 400]
    assert [r.json()["error"] for r in (wrong_type, missing, garbage)] == ["invalid_request", "invalid_request", "invalid_grant"]
    assert requests.get(sim.token_endpoint, timeout=10).status_code == 404


# ---------------------------------------------------------------------------------------------
# Exchange and API authorization


def test_exchange_requires_a_valid_maskinporten_token(sim: Simulator, keys: Keys) -> None:
    exchange = sim.url + "/authentication/api/v1/exchange/maskinporten"
    no_token = requests.get(exchange, timeout=10)
    garbage = requests.get(exchange, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert (no_token.status_code, no_token.content, garbage.status_code, garbage.content) == (401, b"", 401, b"")
    mp = grant(sim, assertion(sim, keys.key)).json()["access_token"]
    response = requests.get(exchange, headers={"Authorization": f"Bearer {mp}"}, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    claims = jwt.decode(response.text, options={"verify_signature": False})
    assert claims["org"] == "ttd" and claims["scope"] == SCOPES and 1795 <= claims["exp"] - claims["iat"] <= 1800
    assert sim.exchanges == 1
    # An Altinn token is no Maskinporten token, and an expired Maskinporten token is refused.
    assert requests.get(exchange, headers={"Authorization": f"Bearer {response.text}"}, timeout=10).status_code == 401
    sim.expire_maskinporten_tokens()
    assert requests.get(exchange, headers={"Authorization": f"Bearer {mp}"}, timeout=10).status_code == 401
    assert sim.exchanges == 1 and sim.calls["exchange"] == 5


def test_exchange_can_answer_json_quoted(keys: Keys) -> None:
    with Simulator(quote_exchange_token=True, maskinporten_token_lifetime=60) as sim:
        sim.register_client(CLIENT, public_key_pem=keys.public_pem, kid=KID)
        assert grant(sim, assertion(sim, keys.key)).json()["expires_in"] == 60
        body = altinn_token(sim, keys)
        assert body.startswith('"') and body.endswith('"')
        inst = sim.add_instance("ttd", "app")
        assert session(json.loads(body)).get(inst.platform_url, timeout=10).status_code == 200


def test_api_requires_an_altinn_token(sim: Simulator, keys: Keys) -> None:
    inst = sim.add_instance("ttd", "app")
    element_id = inst.elements[0]["id"]
    mp = grant(sim, assertion(sim, keys.key)).json()["access_token"]
    for token in (None, "garbage", mp):
        s = session(token)
        responses = [
            s.get(inst.app_url, timeout=10),
            s.get(inst.platform_url, timeout=10),
            s.get(inst.data_url(element_id), timeout=10),
            s.get(inst.app_data_url(element_id), timeout=10),
            s.post(inst.platform_url + "/complete", timeout=10),
            s.post(inst.app_url + "/complete", timeout=10),
            s.put(inst.platform_url + "/substatus", json={"label": "x"}, timeout=10),
            s.get(sim.url + "/storage/api/v1/instances?org=ttd", timeout=10),
            s.get(sim.url + "/events/api/v1/subscriptions", timeout=10),
        ]
        assert [(r.status_code, r.content) for r in responses] == [(401, b"")] * 9
    s = session(altinn_token(sim, keys))
    assert s.get(inst.platform_url, timeout=10).status_code == 200
    sim.expire_altinn_tokens()
    assert s.get(inst.platform_url, timeout=10).status_code == 401
    assert session(altinn_token(sim, keys)).get(inst.platform_url, timeout=10).status_code == 200
    assert sim.confirmations == [] and inst.substatus is None


def test_altinn_token_expires(keys: Keys) -> None:
    with Simulator(altinn_token_lifetime=1) as sim:
        sim.register_client(CLIENT, public_key_pem=keys.public_pem, kid=KID)
        inst = sim.add_instance("ttd", "app")
        s = session(altinn_token(sim, keys))
        issued = time.time()
        assert s.get(inst.platform_url, timeout=10).status_code == 200
        time.sleep(max(0.0, issued + 1.05 - time.time()))
        assert s.get(inst.platform_url, timeout=10).status_code == 401


def test_api_checks_org_and_scope(sim: Simulator, keys: Keys) -> None:
    sim.register_client("skd-client", public_key_pem=keys.public_pem, kid="k-skd", org="skd")
    sim.register_client("reader", public_key_pem=keys.public_pem, kid="k-read", scopes=READ)
    inst = sim.add_instance("ttd", "app")
    skd = session(altinn_token(sim, keys, iss="skd-client", kid="k-skd"))
    responses = [
        skd.get(inst.app_url, timeout=10),
        skd.get(inst.platform_url, timeout=10),
        skd.get(inst.elements[0]["selfLinks"]["platform"], timeout=10),
        skd.post(inst.platform_url + "/complete", timeout=10),
        skd.post(inst.app_url + "/complete", timeout=10),
        skd.put(inst.platform_url + "/substatus", json={"label": "x"}, timeout=10),
        skd.get(sim.url + "/storage/api/v1/instances?appId=ttd/app", timeout=10),
    ]
    assert [r.status_code for r in responses] == [403] * 7
    # Another org's query without appId: storage wants the appId for its cross-org policy check (400).
    assert skd.get(sim.url + "/storage/api/v1/instances?org=ttd", timeout=10).status_code == 400
    reader = session(altinn_token(sim, keys, iss="reader", kid="k-read", scope=READ))
    assert reader.get(inst.platform_url, timeout=10).status_code == 200
    assert reader.get(inst.app_url, timeout=10).status_code == 200
    assert reader.post(inst.platform_url + "/complete", timeout=10).status_code == 403
    assert reader.post(inst.app_url + "/complete", timeout=10).status_code == 403
    assert sim.confirmations == [] and inst.confirmed_by == [] and inst.substatus is None


def test_unknown_removed_and_mismatched_resources_are_404(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    element_id = inst.elements[0]["id"]
    assert http.get(inst.app_url, timeout=10).status_code == 200
    assert http.get(f"{sim.apps_url}/ttd/other-app/instances/{inst.id}", timeout=10).status_code == 404
    assert http.get(f"{inst.app_url}/data/{uuid.uuid4()}", timeout=10).status_code == 404
    assert http.get(f"{inst.platform_url}/data/{uuid.uuid4()}", timeout=10).status_code == 404
    assert http.get(f"{sim.url}/storage/api/v1/instances/{inst.party_id}/{uuid.uuid4()}", timeout=10).status_code == 404
    assert http.get(f"{sim.url}/storage/api/v1/instances/{inst.party_id}/not-a-guid", timeout=10).status_code == 404
    assert http.get(f"{sim.url}/nothing/here", timeout=10).status_code == 404
    assert http.get(f"{sim.apps_url}/nothing/here", timeout=10).status_code == 404
    sim.remove_instance(inst)
    urls = (inst.app_url, inst.platform_url, inst.data_url(element_id), inst.app_data_url(element_id))
    assert [http.get(u, timeout=10).status_code for u in urls] == [404] * 4
    assert http.post(inst.app_url + "/complete", timeout=10).status_code == 404
    # Storage's complete policy check cannot enrich an unknown instance: the PDP denies it.
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 403


# ---------------------------------------------------------------------------------------------
# Instances and data


def test_instance_json_shapes(sim: Simulator, http: requests.Session) -> None:
    guid = str(uuid.uuid4()).upper()
    inst = sim.add_instance(
        "ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 1234, "a.pdf", "Pending")], party_id="50660768", instance_guid=guid
    )
    assert inst.instance_guid == guid.lower() and inst.id == f"50660768/{guid.lower()}"
    assert inst.platform_url == f"{sim.url}/storage/api/v1/instances/{inst.id}" and inst.app_url == f"{sim.apps_url}/ttd/app/instances/{inst.id}"
    doc = http.get(inst.platform_url, timeout=10).json()
    assert doc == inst.to_json(omit_nulls=True)
    assert doc["appId"] == "ttd/app" and doc["org"] == "ttd" and doc["instanceOwner"] == {"partyId": "50660768"}
    # Storage sets only the platform links; it never stores an apps link.
    assert doc["selfLinks"] == {"platform": inst.platform_url}
    assert doc["data"][0]["selfLinks"] == {"platform": inst.data_url(doc["data"][0]["id"])}
    assert doc["process"]["endEvent"] == "EndEvent_1" and doc["status"]["isHardDeleted"] is False and doc["status"]["readStatus"] == "Read"
    assert "filename" not in doc["data"][0] and "completeConfirmations" not in doc and "dueBefore" not in doc
    assert [d["size"] for d in doc["data"]] == [400, 1234] and doc["data"][1]["fileScanResult"] == "Pending"
    assert doc["data"][0]["blobStoragePath"] == f"ttd/app/{inst.instance_guid}/data/{doc['data'][0]['id']}"
    sim.set_scan_result(inst, inst.elements[1]["id"], "Clean")
    assert http.get(inst.platform_url, timeout=10).json()["data"][1]["fileScanResult"] == "Clean"
    running = sim.add_instance("ttd", "app", process_ended=False)
    doc = http.get(running.platform_url, timeout=10).json()
    assert "ended" not in doc["process"] and doc["process"]["currentTask"]["elementId"] == "Task_1" and doc["status"]["isArchived"] is False


def test_metadata_can_disagree_with_the_body(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    inst.elements[0]["size"] = 999
    assert http.get(inst.platform_url, timeout=10).json()["data"][0]["size"] == 999
    body = http.get(inst.data_url(inst.elements[0]["id"]), timeout=10)
    assert body.headers["Content-Length"] == "400" and len(body.content) == 400


@pytest.mark.parametrize("size", [0, 1, 400, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 123])
def test_data_streams_the_expected_content(sim: Simulator, http: requests.Session, size: int) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec("vedlegg", "application/octet-stream", size)])
    element = inst.elements[0]
    # An attachment (no appLogic.classRef) is the stored bytes on both APIs.
    for url in (inst.data_url(element["id"]), inst.app_data_url(element["id"])):
        response = http.get(url, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(size) and len(response.content) == size
        assert response.headers["Content-Type"] == "application/octet-stream" and "Content-Disposition" not in response.headers
        assert hashlib.sha256(response.content).hexdigest() == inst.expected_sha256(element["id"])
        assert response.content == inst.expected_bytes(element["id"]) == sim.expected_bytes(element["id"])
        assert sim.expected_sha256(element["id"]) == inst.expected_sha256(element["id"])


def test_content_is_deterministic_per_seed_and_varies_per_chunk(keys: Keys) -> None:
    spec = ElementSpec("v", "application/pdf", 2 * (1 << 20), seed=42)
    with Simulator() as a, Simulator() as b:
        first, second = a.add_instance("ttd", "app", [spec]), b.add_instance("ttd", "app", [spec])
        content = first.expected_bytes(first.elements[0]["id"])
        assert content == second.expected_bytes(second.elements[0]["id"])
        assert content[: 1 << 20] != content[1 << 20 :]
        other = a.add_instance("ttd", "app", [ElementSpec("v", "application/pdf", 2 * (1 << 20), seed=43)])
        assert other.expected_sha256(other.elements[0]["id"]) != first.expected_sha256(first.elements[0]["id"])


def test_content_disposition_carries_the_filename(sim: Simulator, http: requests.Session) -> None:
    name = 'Søknad "2024" – vedlegg.pdf'
    inst = sim.add_instance("ttd", "app", [ElementSpec("vedlegg", "application/pdf", 10, name)])
    disposition = http.get(inst.data_url(inst.elements[0]["id"]), timeout=10).headers["Content-Disposition"]
    assert disposition == "attachment; filename=\"S_knad _2024_ _ vedlegg.pdf\"; filename*=UTF-8''S%C3%B8knad%20%222024%22%20%E2%80%93%20vedlegg.pdf"


def test_large_element_streams_in_constant_memory(sim: Simulator, http: requests.Session) -> None:
    size = 512 << 20
    inst = sim.add_instance("ttd", "app", [ElementSpec("big", "application/octet-stream", size, "big.bin")])
    element_id = inst.elements[0]["id"]
    process = psutil.Process()
    gc.collect()
    baseline = peak = process.memory_info().rss
    digest, received = hashlib.sha256(), 0
    with http.get(inst.data_url(element_id), stream=True, timeout=30) as response:
        assert response.headers["Content-Length"] == str(size)
        for i, chunk in enumerate(response.iter_content(1 << 20)):
            digest.update(chunk)
            received += len(chunk)
            if i % 8 == 0:
                peak = max(peak, process.memory_info().rss)
    assert received == size
    assert peak - baseline < 64 << 20, f"RSS grew by {(peak - baseline) >> 20} MiB"
    assert digest.hexdigest() == inst.expected_sha256(element_id)


# ---------------------------------------------------------------------------------------------
# Faults


def test_status_fault_with_retry_after_hits_times_requests(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    sim.add_fault("instance", status=503, retry_after=7, times=2)
    responses = [http.get(inst.platform_url, timeout=10) for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].headers["Retry-After"] == "7" and responses[0].content == b""
    assert sim.calls["instance"] == 3
    assert [(e["endpoint"], e["status"]) for e in sim.requests[-3:]] == [("instance", 503), ("instance", 503), ("instance", 200)]


def test_token_fault_answers_json_and_custom_bodies(sim: Simulator, keys: Keys) -> None:
    sim.add_fault("token", status=500)
    sim.add_fault("token", status=429, body="slow down")
    first, second = grant(sim, assertion(sim, keys.key)), grant(sim, assertion(sim, keys.key))
    assert first.status_code == 500 and first.json()["error"] == "server_error"
    assert second.status_code == 429 and second.text == "slow down"
    assert grant(sim, assertion(sim, keys.key)).status_code == 200
    assert sim.grants == 1 and sim.calls["token"] == 3


def test_delay_fault_triggers_client_timeout(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    sim.add_fault("instance", delay=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(inst.platform_url, timeout=0.1)
    assert http.get(inst.platform_url, timeout=10).status_code == 200
    assert [e["status"] for e in sim.requests if e["endpoint"] == "instance" and e["fault"] is None] == [200]
    sim.add_fault("token", delay=0.2, status=503)
    started = time.monotonic()
    assert requests.post(sim.token_endpoint, timeout=10).status_code == 503
    assert time.monotonic() - started >= 0.2


def test_truncate_fault_breaks_the_body(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec("v", "application/pdf", 100_000)])
    url = inst.data_url(inst.elements[0]["id"])
    sim.add_fault("data", truncate_at=1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        http.get(url, timeout=10)
    sim.add_fault("instance", truncate_at=10)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        http.get(inst.platform_url, timeout=10)
    assert http.get(url, timeout=10).content == inst.expected_bytes(inst.elements[0]["id"])


def test_truncate_fault_is_a_protocol_error_for_urllib3(sim: Simulator, keys: Keys) -> None:
    import urllib3

    inst = sim.add_instance("ttd", "app", [ElementSpec("v", "application/pdf", 50_000)])
    sim.add_fault("data", truncate_at=0)
    with urllib3.PoolManager() as pool:
        response = pool.request(
            "GET", inst.data_url(inst.elements[0]["id"]), headers={"Authorization": "Bearer " + altinn_token(sim, keys)}, preload_content=False
        )
        assert response.status == 200
        with pytest.raises(urllib3.exceptions.ProtocolError):
            response.read()


def test_reset_fault_aborts_the_connection(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec("v", "application/pdf", 4 << 20)])
    url = inst.data_url(inst.elements[0]["id"])
    sim.add_fault("data", reset_after=64 << 10)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        with http.get(url, stream=True, timeout=10) as response:
            for _ in response.iter_content(1 << 16):
                time.sleep(0.001)
    sim.add_fault("instance", reset_after=0)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        http.get(inst.platform_url, timeout=10).json()
    assert hashlib.sha256(http.get(url, timeout=10).content).hexdigest() == inst.expected_sha256(inst.elements[0]["id"])


def test_fault_match_selects_requests_by_path(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("v", "application/pdf", 10)])
    first, second = (inst.data_url(e["id"]) for e in inst.elements)
    sim.add_fault("data", status=500, match=inst.elements[1]["id"], times=2)
    assert [http.get(u, timeout=10).status_code for u in (first, second, first, second, second)] == [200, 500, 200, 500, 200]
    sim.add_fault("query", status=502, match="continuationToken")
    assert http.get(sim.url + "/storage/api/v1/instances?org=ttd", timeout=10).status_code == 200


def _pattern(sim: Simulator, url: str, s: requests.Session) -> list[int]:
    return [s.get(url, timeout=10).status_code for _ in range(40)]


def test_probability_fault_is_persistent_and_seeded(sim: Simulator, keys: Keys, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", party_id="123", instance_guid="0f6f4b9b-5cb2-4a8f-9d43-1b0a1e5a7d11")
    sim.add_fault("instance", status=503, probability=0.5, seed=7)
    pattern = _pattern(sim, inst.platform_url, http)
    assert 8 <= pattern.count(503) <= 32 and set(pattern) == {200, 503}
    with Simulator() as other:
        other.register_client(CLIENT, public_key_pem=keys.public_pem, kid=KID)
        twin = other.add_instance("ttd", "app", party_id="123", instance_guid=inst.instance_guid)
        other.add_fault("instance", status=503, probability=0.5, seed=7)
        assert _pattern(other, twin.platform_url, session(altinn_token(other, keys))) == pattern
    sim.clear_faults()
    assert set(_pattern(sim, inst.platform_url, http)) == {200}


def test_add_fault_validates_its_arguments(sim: Simulator) -> None:
    for kwargs in ({"endpoint": "nope", "status": 500}, {"endpoint": "data"}, {"endpoint": "data", "status": 500, "probability": 2.0}):
        with pytest.raises(ValueError):
            sim.add_fault(**kwargs)


# ---------------------------------------------------------------------------------------------
# Complete


def test_complete_is_idempotent_and_calls_on_complete_first(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    seen: list[tuple[SimInstance, int, list[str]]] = []
    sim.on_complete = lambda i: seen.append((i, len(sim.confirmations), list(i.confirmed_by)))
    first = http.post(inst.platform_url + "/complete", data=b"ignored", timeout=10)
    assert first.status_code == 200
    assert [c["stakeholderId"] for c in first.json()["completeConfirmations"]] == ["ttd"]
    assert seen == [(inst, 0, [])]
    # Confirmed already: the instance unchanged (same lastChanged), also through the app (which proxies to storage).
    second = http.post(inst.platform_url + "/complete", timeout=10)
    via_app = http.post(inst.app_url + "/complete", timeout=10)
    assert second.status_code == 200 and second.json() == first.json()
    assert via_app.status_code == 200 and via_app.json()["completeConfirmations"] == first.json()["completeConfirmations"]
    assert inst.confirmed_by == ["ttd"] and [c[0] for c in sim.confirmations] == [inst.id] * 3
    assert len(seen) == 3 and sim.complete_violations == [] and sim.calls["complete"] == 2 and sim.calls["app-complete"] == 1
    assert sim.confirmations[0][1] <= sim.confirmations[1][1] <= time.time()


def test_on_complete_failure_is_recorded_and_confirm_proceeds(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")

    def check(_: SimInstance) -> None:
        raise AssertionError("manifest.json missing")

    sim.on_complete = check
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 200
    assert sim.complete_violations == ["manifest.json missing"] and len(sim.confirmations) == 1


def test_complete_asks_the_policy_not_the_process(sim: Simulator, http: requests.Session) -> None:
    # Storage never looks at the process (no 409); it is the app's XACML policy that may deny "complete".
    running = sim.add_instance("ttd", "app", process_ended=False)
    assert http.post(running.platform_url + "/complete", timeout=10).status_code == 200
    inst = sim.add_instance("ttd", "app")
    calls: list[SimInstance] = []
    sim.on_complete = calls.append
    sim.app("ttd", "app").complete_allowed = False
    denied = [http.post(inst.platform_url + "/complete", timeout=10), http.post(inst.app_url + "/complete", timeout=10)]
    assert [(r.status_code, r.content) for r in denied] == [(403, b""), (403, b"")]
    assert calls == [] and [c[0] for c in sim.confirmations] == [running.id] and inst.confirmed_by == []
    sim.app("ttd", "app").complete_allowed = True
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 200
    assert calls == [inst] and inst.confirmed_by == ["ttd"]


def test_complete_fault_is_not_recorded(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    sim.add_fault("complete", status=500)
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 500
    assert sim.confirmations == [] and sim.calls["complete"] == 1


# ---------------------------------------------------------------------------------------------
# Query


def _query_all(http: requests.Session, url: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    pages, docs = [], []
    while url:
        doc = http.get(url, timeout=10).json()
        assert doc["count"] == len(doc["instances"])
        pages.append([i["id"] for i in doc["instances"]])
        docs.append(doc)
        url = doc["next"]
    return pages, docs


def test_query_filters_and_pages(sim: Simulator, http: requests.Session) -> None:
    made = {
        "a1": sim.add_instance("ttd", "app"),
        "a2": sim.add_instance("ttd", "app", confirmed_by=["ttd"]),
        "a3": sim.add_instance("ttd", "app", process_ended=False),
        "a4": sim.add_instance("ttd", "app", hard_deleted=True),
        "b1": sim.add_instance("ttd", "other"),
        "a5": sim.add_instance("ttd", "app"),
        "a6": sim.add_instance("ttd", "app", confirmed_by=["skd"]),
        "a7": sim.add_instance("ttd", "app"),
    }
    ids = {k: v.id for k, v in made.items()}
    base = sim.url + "/storage/api/v1/instances?org=ttd&appId=ttd/app&process.isComplete=true&excludeConfirmedBy=ttd&status.isHardDeleted=false"
    # Newest lastChanged first; a full page always has a next link, so the last page may be empty.
    pages, docs = _query_all(http, base + "&size=2")
    assert pages == [[ids["a7"], ids["a6"]], [ids["a5"], ids["a1"]], []]
    assert docs[0]["self"] == base + "&size=2" and "continuationToken=" in docs[0]["next"] and docs[2]["next"] is None
    assert all(d["next"].startswith(sim.url + "/storage/api/v1/instances?") for d in docs[:2])
    pages, _ = _query_all(http, base + "&size=3")
    assert pages == [[ids["a7"], ids["a6"], ids["a5"]], [ids["a1"]]]
    pages, _ = _query_all(http, sim.url + "/storage/api/v1/instances?org=ttd&size=100")
    assert pages == [list(reversed(ids.values()))]
    pages, _ = _query_all(http, sim.url + "/storage/api/v1/instances?appId=ttd/app&process.isComplete=false")
    assert pages == [[ids["a3"]]]
    pages, _ = _query_all(http, sim.url + "/storage/api/v1/instances?appId=ttd/app&status.isHardDeleted=true")
    assert pages == [[ids["a4"]]]
    # Confirming moves an instance to the front (lastChanged) and out of this filter; removing drops it.
    assert http.post(made["a5"].platform_url + "/complete", timeout=10).status_code == 200
    sim.remove_instance(ids["a6"])
    pages, _ = _query_all(http, base + "&size=2")
    assert pages == [[ids["a7"], ids["a1"]], []]
    assert sim.calls["query"] == 10
    assert http.get(sim.url + "/storage/api/v1/instances?size=2", timeout=10).status_code == 400
    assert http.get(base + "&size=two", timeout=10).status_code == 400
    # A token without ";" matches no row; one whose numbers do not parse is a 500 (as storage's repository fails).
    garbled = http.get(base + "&continuationToken=%%%", timeout=10)
    assert garbled.status_code == 200 and garbled.json()["instances"] == [] and garbled.json()["next"] is None
    assert http.get(base + "&continuationToken=abc%3Bdef", timeout=10).status_code == 500


# ---------------------------------------------------------------------------------------------
# Subscriptions and events


def test_subscription_lifecycle_and_publish(sim: Simulator, http: requests.Session, receiver: Receiver) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    body = {"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/app", "typeFilter": "app.instance.process.completed"}
    created = http.post(subs, json=body, timeout=10)
    assert created.status_code == 201 and created.headers["Location"] == f"/events/api/v1/subscription/{created.json()['id']}"
    sub = created.json()
    assert sub["validated"] is False and sub["consumer"] == "/org/ttd" and sub["createdBy"] == "/org/ttd" and sub["includeSubunits"] is False
    assert sub["endPoint"] == receiver.url and sub["resourceFilter"] == "urn:altinn:resource:app_ttd_app" and isinstance(sub["id"], int)
    receiver.wait(1)
    path, content_type, validation = receiver.received[0]
    assert path == "/api/events?code=secret" and content_type == "application/json; charset=utf-8"
    assert validation["type"] == "platform.events.validatesubscription" and validation["specversion"] == "1.0"
    assert validation["source"] == f"{subs}/{sub['id']}" and uuid.UUID(validation["id"])
    wait_until(lambda: sim.subscriptions[sub["id"]]["validated"])
    # An identical subscription: the existing one, and a new validation event.
    again = http.post(subs, json=body, timeout=10)
    assert again.status_code == 201 and again.json()["id"] == sub["id"] and again.json()["validated"] is True
    receiver.wait(2)
    assert receiver.received[1][2]["type"] == "platform.events.validatesubscription" and receiver.received[1][2]["id"] != validation["id"]
    listed = http.get(subs, timeout=10).json()
    assert listed["count"] == 1 and listed["subscriptions"][0]["id"] == sub["id"]
    assert http.get(f"{subs}/{sub['id']}", timeout=10).json()["endPoint"] == receiver.url

    inst = sim.add_instance("ttd", "app")
    inst.instance_owner["personNumber"] = "07837399275"
    assert sim.publish(inst) == [(receiver.url, 200)]
    assert sim.publish(inst, "app.instance.created") == []
    assert sim.publish(sim.add_instance("ttd", "other")) == []
    receiver.wait(3)
    _, content_type, event = receiver.received[2]
    assert content_type == "application/json; charset=utf-8"
    assert event["type"] == "app.instance.process.completed" and event["source"] == inst.app_url and event["specversion"] == "1.0"
    assert event["resourceinstance"] == inst.id and event["subject"] == f"/party/{inst.party_id}" and event["alternativesubject"] == "/person/07837399275"
    assert event["resource"] == "urn:altinn:resource:app_ttd_app"
    assert set(event) == set(sim.cloud_event(inst))

    assert http.delete(f"{subs}/{sub['id']}", timeout=10).status_code == 200
    assert http.get(f"{subs}/{sub['id']}", timeout=10).status_code == 404
    assert http.get(subs, timeout=10).json() == {"count": 0, "subscriptions": []}
    assert sim.publish(inst) == [] and len(receiver.received) == 3
    assert sim.calls["subscriptions"] == 7


def test_subscription_not_validated_receives_nothing(sim: Simulator, http: requests.Session, receiver: Receiver) -> None:
    receiver.status = 500
    created = http.post(sim.url + "/events/api/v1/subscriptions", json={"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/app"}, timeout=10)
    assert created.status_code == 201
    receiver.wait(1)
    time.sleep(0.05)
    assert sim.subscriptions[created.json()["id"]]["validated"] is False
    assert sim.publish(sim.add_instance("ttd", "app")) == []


def test_subscription_requests_are_validated(sim: Simulator, http: requests.Session, keys: Keys) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    source = f"{sim.apps_url}/ttd/app"
    assert http.post(subs, json={"sourceFilter": source}, timeout=10).status_code == 400
    assert http.post(subs, json={"endPoint": "http://127.0.0.1:1/x", "sourceFilter": source + "/"}, timeout=10).status_code == 400
    assert http.post(subs, data=b"{", headers={"Content-Type": "application/json"}, timeout=10).status_code == 400
    assert http.post(subs, data=b"{}", timeout=10).status_code == 415  # [Consumes("application/json")]
    assert http.post(subs, json={"endPoint": "http://127.0.0.1:1/x", "sourceFilter": f"{sim.apps_url}/skd/app"}, timeout=10).status_code == 403
    assert http.get(subs + "/999", timeout=10).status_code == 404
    assert http.get(subs + "/abc", timeout=10).status_code == 400  # Get(int id)
    assert sim.subscriptions == {}


# ---------------------------------------------------------------------------------------------
# Plumbing


def test_keep_alive_reuses_one_connection(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("v", "application/pdf", 300_000)])
    before = sim.connections
    for _ in range(5):
        assert http.get(inst.platform_url, timeout=10).status_code == 200
        assert http.get(inst.platform_url + "/nope", timeout=10).status_code == 404
        bad = http.post(sim.url + "/events/api/v1/subscriptions", data=b"x" * 1000, headers={"Content-Type": "application/json"}, timeout=10)
        assert bad.status_code == 400
        assert len(http.get(inst.data_url(inst.elements[1]["id"]), timeout=10).content) == 300_000
        assert http.post(inst.platform_url + "/complete", data=b"ignored", timeout=10).status_code == 200
    assert sim.connections == before + 1
    # The app host is another origin: another connection.
    assert http.get(inst.app_url, timeout=10).status_code == 200 and sim.connections == before + 2
    assert session(None).get(inst.platform_url, timeout=10).status_code == 401


def test_counters_reset(sim: Simulator, keys: Keys, http: requests.Session) -> None:
    grant(sim, assertion(sim, keys.key, aud="wrong"))
    assert sim.grants == 1 and sim.exchanges == 1 and sim.rejected_grants and sim.requests
    sim.reset_counters()
    assert (sim.grants, sim.exchanges, sim.rejected_grants, sim.requests, sim.confirmations, sum(sim.calls.values())) == (0, 0, [], [], [], 0)
    entry_keys = {"method", "path", "endpoint", "status", "time"}
    http.get(sim.url + "/storage/api/v1/instances?org=ttd", timeout=10)
    assert entry_keys <= set(sim.requests[0]) and sim.requests[0]["path"] == "/storage/api/v1/instances" and sim.requests[0]["endpoint"] == "query"


def test_runs_by_hand_until_interrupted(tmp_path: Path, keys: Keys) -> None:
    pem = tmp_path / "public.pem"
    pem.write_bytes(keys.public_pem)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "devtools.simulator", "--port", "0", "--client-id", CLIENT, "--public-key", str(pem)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line.strip())
        url = lines[0].rsplit(" ", 1)[1]
        assert f"MASKINPORTEN_URL={url}/maskinporten/" in lines and any(line.startswith("demo instance: ") for line in lines)
        apps = next(line for line in lines if line.startswith("ALTINN_APPS_URL=")).split("=", 1)[1]
        assert apps.startswith("http://127.0.0.1:") and apps != url
        demo = next(line for line in lines if line.startswith("demo instance: ")).split(": ", 1)[1]
        now = int(time.time())
        claims = {"aud": url + "/maskinporten/", "iss": CLIENT, "scope": SCOPES, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
        token = requests.post(
            url + "/maskinporten/token", data={"grant_type": JWT_BEARER, "assertion": jwt.encode(claims, keys.key, "RS256", {"kid": CLIENT})}, timeout=10
        )
        assert token.status_code == 200, token.text
        altinn = requests.get(
            url + "/authentication/api/v1/exchange/maskinporten", headers={"Authorization": "Bearer " + token.json()["access_token"]}, timeout=10
        )
        instance = requests.get(demo, headers={"Authorization": "Bearer " + altinn.text}, timeout=10)
        assert demo.startswith(url + "/storage/api/v1/instances/") and instance.status_code == 200 and len(instance.json()["data"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
