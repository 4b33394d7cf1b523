"""The simulator behaves like Altinn's own code, so that a client that uses the wrong API fails a test.

Over real sockets: the platform and the app host as two origins, app metadata and policy, the app API's
DTO and re-serialized form data, storage's exact bytes, /complete, substatus, the query's keyset paging and
continuation tokens, subscriptions (https, identity, re-validation, retries) and instance documents loaded
as given. Each behaviour is traced to Altinn's source in devtools/simulator.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET  # noqa: N817 - the usual alias
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.simulator import ElementSpec, SimInstance, Simulator, attachment_data_type, form_data_type
from tests.support import real_altinn

pytestmark = pytest.mark.timeout(120)

CLIENT = "altinn-behaviour-client"
KID = "k1"
SCOPES = "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DOTNET_EPOCH = dt.datetime(1, 1, 1, tzinfo=dt.UTC)

# Instance documents and a stored body from app-lib's own tests, read from ../shared/real-altinn at
# test time (tests/support/real_altinn.py; never copied here). In the service-tasks instance the
# element's size (173) is one less than its stored bytes (174), exactly as in the source.
APPLIB_INSTANCE_FILE = "applib-instance-service-tasks-a2af1cfd.json"
APPLIB_BLOB_FILE = "applib-blob-service-tasks-fd4c42a4.xml"
APPLIB_ENDED_FILE = "applib-instance-task-action-ended.json"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def sim(key: rsa.RSAPrivateKey) -> Iterator[Simulator]:
    with Simulator(validation_retry_delays=(0.05, 0.05, 0.05), validation_timeout=2.0) as simulator:
        simulator.register_client(CLIENT, public_key_pem=_public_pem(key), kid=KID)
        simulator.register_client("skd-client", public_key_pem=_public_pem(key), kid="k-skd", org="skd")
        yield simulator


def altinn_token(sim: Simulator, key: rsa.RSAPrivateKey, *, client: str = CLIENT, kid: str = KID) -> str:
    now = int(time.time())
    claims = {"aud": sim.maskinporten_issuer, "iss": client, "scope": SCOPES, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    grant = requests.post(sim.token_endpoint, data={"grant_type": JWT_BEARER, "assertion": jwt.encode(claims, key, "RS256", {"kid": kid})}, timeout=10)
    assert grant.status_code == 200, grant.text
    exchanged = requests.get(
        sim.url + "/authentication/api/v1/exchange/maskinporten", headers={"Authorization": "Bearer " + grant.json()["access_token"]}, timeout=10
    )
    assert exchanged.status_code == 200
    return exchanged.text


def session(token: str) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.headers["Authorization"] = "Bearer " + token
    return s


@pytest.fixture
def http(sim: Simulator, key: rsa.RSAPrivateKey) -> Iterator[requests.Session]:
    with session(altinn_token(sim, key)) as s:
        yield s


@pytest.fixture
def skd(sim: Simulator, key: rsa.RSAPrivateKey) -> Iterator[requests.Session]:
    with session(altinn_token(sim, key, client="skd-client", kid="k-skd")) as s:
        yield s


class Receiver:
    """A webhook endpoint: records every POST; answers ``statuses`` in turn, then ``status``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append(json.loads(body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else outer.status)
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    threading.Thread(target=r.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.01)


def query(http: requests.Session, url: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    pages, docs = [], []
    while url:
        response = http.get(url, timeout=10)
        assert response.status_code == 200, response.text
        doc = response.json()
        pages.append([i["id"] for i in doc["instances"]])
        docs.append(doc)
        url = doc["next"]
    return pages, docs


def ticks(iso: str) -> int:
    """.NET DateTime.Ticks of an ISO time (100 ns since 0001-01-01)."""
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (when - DOTNET_EPOCH) // dt.timedelta(microseconds=1) * 10


# ---------------------------------------------------------------------------------------------
# Two origins


def test_platform_and_app_host_are_two_origins_bound_before_start() -> None:
    sim = Simulator()
    try:
        assert sim.url.startswith("http://127.0.0.1:") and sim.apps_url.startswith("http://127.0.0.1:") and sim.url != sim.apps_url
        for origin in (sim.url, sim.apps_url):
            socket.create_connection(("127.0.0.1", int(origin.rsplit(":", 1)[1])), timeout=2).close()
        inst = sim.add_instance("ttd", "app")
        assert inst.app_url == f"{sim.apps_url}/ttd/app/instances/{inst.id}"
        assert inst.platform_url == f"{sim.url}/storage/api/v1/instances/{inst.id}"
        assert sim.maskinporten_issuer == sim.url + "/maskinporten/"
        # app-lib's events carry the app host's instance URL as their source.
        assert sim.cloud_event(inst)["source"] == inst.app_url
    finally:
        sim.stop()


def test_each_origin_serves_only_its_own_paths(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    element_id = inst.elements[0]["id"]
    wrong_host = [
        http.get(f"{sim.apps_url}/storage/api/v1/instances/{inst.id}", timeout=10),
        http.get(f"{sim.apps_url}/storage/api/v1/instances/{inst.id}/data/{element_id}", timeout=10),
        http.get(f"{sim.apps_url}/storage/api/v1/instances?org=ttd", timeout=10),
        http.get(f"{sim.apps_url}/events/api/v1/subscriptions", timeout=10),
        http.get(f"{sim.apps_url}/authentication/api/v1/exchange/maskinporten", timeout=10),
        requests.post(f"{sim.apps_url}/maskinporten/token", data={"grant_type": JWT_BEARER}, timeout=10),
        http.get(f"{sim.url}/ttd/app/instances/{inst.id}", timeout=10),
        http.get(f"{sim.url}/ttd/app/instances/{inst.id}/data/{element_id}", timeout=10),
        http.post(f"{sim.url}/ttd/app/instances/{inst.id}/complete", timeout=10),
    ]
    assert [r.status_code for r in wrong_host] == [404] * len(wrong_host)
    assert sim.calls["other"] == len(wrong_host) and inst.confirmed_by == []
    assert {e["host"] for e in sim.requests if e["endpoint"] == "other"} == {"platform", "apps"}


def test_a_client_on_storage_never_touches_the_app_host(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 1000, "a.pdf")])
    assert http.get(inst.platform_url, timeout=10).status_code == 200
    for element in inst.elements:
        assert http.get(inst.data_url(element["id"]), timeout=10).status_code == 200
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 200
    assert (sim.calls["instance"], sim.calls["data"], sim.calls["complete"]) == (1, 2, 1)
    assert sim.calls["app-instance"] == sim.calls["app-data"] == sim.calls["app-complete"] == 0
    assert http.get(inst.app_url, timeout=10).status_code == 200 and sim.calls["app-instance"] == 1
    assert [e["host"] for e in sim.requests if e["endpoint"].startswith("app-")] == ["apps"]


def test_app_host_faults_hit_only_the_app_host(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec("vedlegg", "application/pdf", 100)])
    element_id = inst.elements[0]["id"]
    sim.add_fault("app-instance", status=503, times=5)
    sim.add_fault("app-data", status=500, match=element_id, times=5)
    sim.add_fault("app-complete", status=502, times=5)
    sim.add_fault("substatus", status=429, retry_after=3)
    assert http.get(inst.platform_url, timeout=10).status_code == 200
    assert http.get(inst.data_url(element_id), timeout=10).status_code == 200
    assert http.get(inst.app_url, timeout=10).status_code == 503
    assert http.get(inst.app_data_url(element_id), timeout=10).status_code == 500
    assert http.post(inst.app_url + "/complete", timeout=10).status_code == 502 and sim.confirmations == []
    limited = http.put(inst.platform_url + "/substatus", json={"label": "x"}, timeout=10)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3" and inst.substatus is None
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 200
    with pytest.raises(ValueError):
        sim.add_fault("app", status=500)


# ---------------------------------------------------------------------------------------------
# App metadata and policy


def test_apps_are_registered_on_first_use_with_a_form_data_type(sim: Simulator) -> None:
    sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 10)])
    meta = sim.app("ttd", "app").metadata()
    types = {t["id"]: t for t in meta["dataTypes"]}
    assert meta["id"] == "ttd/app" and meta["org"] == "ttd" and set(types) == {"model", "vedlegg"}
    assert types["model"]["appLogic"]["classRef"] and types["model"]["allowedContentTypes"] == ["application/xml"]
    assert "appLogic" not in types["vedlegg"]
    sim.add_instance("ttd", "app", [ElementSpec("bilde", "image/png", 10)])
    assert [t["id"] for t in sim.app("ttd", "app").data_types] == ["model", "vedlegg", "bilde"]
    with pytest.raises(KeyError):
        sim.app("ttd", "unknown")


def test_an_undeployed_app_is_404_on_the_app_host_while_storage_serves_on(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 10)])
    sim.app("ttd", "app").deployed = False
    app_side = [
        http.get(inst.app_url, timeout=10),
        http.get(inst.app_data_url(inst.elements[1]["id"]), timeout=10),
        http.post(inst.app_url + "/complete", timeout=10),
    ]
    assert [r.status_code for r in app_side] == [404, 404, 404] and inst.confirmed_by == []
    assert http.get(inst.platform_url, timeout=10).status_code == 200
    assert http.get(inst.data_url(inst.elements[1]["id"]), timeout=10).status_code == 200
    assert http.post(inst.platform_url + "/complete", timeout=10).status_code == 200
    assert (sim.calls["app-instance"], sim.calls["app-data"], sim.calls["app-complete"]) == (1, 1, 1)


def test_a_data_type_gone_from_the_metadata_breaks_the_app_api(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 10, "a.pdf")])
    form_id, attachment_id = (e["id"] for e in inst.elements)
    sim.app("ttd", "app").data_types = [t for t in sim.app("ttd", "app").data_types if t["id"] != "vedlegg"]
    # app-lib: DataElementAccessChecker throws for the unknown type -> 500; its DataController -> 500 problem.
    assert http.get(inst.app_url, timeout=10).status_code == 500
    assert http.get(inst.app_data_url(attachment_id), timeout=10).status_code == 500
    # Storage serves the instance as stored, but its data GET checks the type against the metadata (400).
    assert [d["dataType"] for d in http.get(inst.platform_url, timeout=10).json()["data"]] == ["model", "vedlegg"]
    assert http.get(inst.data_url(attachment_id), timeout=10).status_code == 400
    assert http.get(inst.data_url(form_id), timeout=10).content == inst.expected_bytes(form_id)


def test_an_explicit_app_is_not_extended_by_new_instances(sim: Simulator, http: requests.Session) -> None:
    app = sim.add_app("ttd", "explicit", data_types=[form_data_type("skjema"), "vedlegg"])
    assert app.is_form("skjema") and not app.is_form("vedlegg") and sim.app("ttd", "explicit") is app
    inst = sim.add_instance("ttd", "explicit", [ElementSpec("skjema", size=300), ElementSpec("annet", "text/plain", 5)])
    assert [t["id"] for t in app.data_types] == ["skjema", "vedlegg"]
    assert http.get(inst.app_url, timeout=10).status_code == 500
    assert http.get(inst.data_url(inst.elements[1]["id"]), timeout=10).status_code == 400
    assert http.get(inst.app_data_url(inst.elements[0]["id"]), timeout=10).headers["Content-Type"].startswith("application/json")


def test_read_actions_the_policy_denies_hide_elements(sim: Simulator, http: requests.Session) -> None:
    restricted = attachment_data_type("hemmelig") | {"actionRequiredToRead": "read-secret"}
    sim.add_app("ttd", "app", data_types=[form_data_type(), restricted])
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("hemmelig", "application/pdf", 10)])
    secret = inst.elements[1]["id"]
    assert [d["dataType"] for d in http.get(inst.app_url, timeout=10).json()["data"]] == ["model"]
    assert [d["dataType"] for d in http.get(inst.platform_url, timeout=10).json()["data"]] == ["model", "hemmelig"]
    assert http.get(inst.data_url(secret), timeout=10).status_code == 403
    assert http.get(inst.app_data_url(secret), timeout=10).status_code == 403


# ---------------------------------------------------------------------------------------------
# The app API: app-lib's DTO and form models

DTO_KEYS = [
    "id",
    "instanceOwner",
    "appId",
    "org",
    "selfLinks",
    "dueBefore",
    "visibleAfter",
    "process",
    "status",
    "completeConfirmations",
    "data",
    "presentationTexts",
    "dataValues",
    "created",
    "createdBy",
    "lastChanged",
    "lastChangedBy",
]
ELEMENT_KEYS = [
    "id",
    "instanceGuid",
    "dataType",
    "filename",
    "contentType",
    "blobStoragePath",
    "selfLinks",
    "size",
    "contentHash",
    "locked",
    "refs",
    "isRead",
    "tags",
    "userDefinedMetadata",
    "metadata",
    "deleteStatus",
    "fileScanResult",
    "references",
    "created",
    "createdBy",
    "lastChanged",
    "lastChangedBy",
]


def test_app_instance_is_app_libs_dto(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 10, "Søknad.pdf", "Clean")], party_id="501337")
    inst.instance_owner["personNumber"] = "01039012345"
    inst.party_name = "Sophie Salt"
    response = http.get(inst.app_url, timeout=10)
    doc = response.json()
    assert list(doc) == DTO_KEYS and response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert doc["instanceOwner"] == {
        "partyId": "501337",
        "personNumber": "01039012345",
        "organisationNumber": None,
        "username": None,
        "externalIdentifier": None,
        "party": {
            "partyId": 501337,
            "partyUuid": None,
            "partyTypeName": 1,
            "ssn": "01039012345",
            "orgNumber": None,
            "unitType": None,
            "name": "Sophie Salt",
            "isDeleted": False,
        },
    }
    assert doc["selfLinks"] == {"apps": inst.app_url, "platform": inst.platform_url}
    assert doc["status"]["readStatus"] == 1 and doc["status"]["substatus"] is None and doc["dueBefore"] is None and doc["completeConfirmations"] is None
    assert list(doc["process"]) == ["started", "startEvent", "currentTask", "ended", "endEvent"] and doc["process"]["currentTask"] is None
    assert [list(d) for d in doc["data"]] == [ELEMENT_KEYS, ELEMENT_KEYS]
    assert doc["data"][0]["filename"] is None and doc["data"][1]["fileScanResult"] == "Clean"
    assert doc["data"][1]["selfLinks"] == {"apps": inst.app_data_url(doc["data"][1]["id"]), "platform": inst.data_url(doc["data"][1]["id"])}
    # System.Text.Json's default encoder escapes non-ASCII; storage (Newtonsoft) writes it as UTF-8.
    assert b'"S\\u00F8knad.pdf"' in response.content
    assert "Søknad.pdf".encode() in http.get(inst.platform_url, timeout=10).content
    inst.instance_owner = {"partyId": "501337", "organisationNumber": "910000001"}
    inst.party_name = None
    party = http.get(inst.app_url, timeout=10).json()["instanceOwner"]["party"]
    assert (party["partyTypeName"], party["orgNumber"], party["ssn"], party["name"]) == (2, "910000001", None, "TESTBEDRIFT AS")
    sim.register_party("501337", organisation_number="910000001", name="REGISTERET AS")
    assert http.get(inst.app_url, timeout=10).json()["instanceOwner"]["party"]["name"] == "REGISTERET AS"
    assert "party" not in http.get(inst.platform_url, timeout=10).json()["instanceOwner"]


def test_form_data_on_the_app_api_is_the_model_reserialized(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec(size=500, seed=3)])
    element_id = inst.elements[0]["id"]
    stored = inst.expected_bytes(element_id)
    fields = {child.tag: child.text for child in ET.fromstring(stored)}
    assert len(stored) == 500 and stored.startswith(b'<?xml version="1.0" encoding="utf-8"?>') and fields
    storage = http.get(inst.data_url(element_id), timeout=10)
    assert storage.content == stored and storage.headers["Content-Type"] == "application/xml" and storage.headers["Content-Length"] == "500"
    as_json = http.get(inst.app_data_url(element_id), headers={"Accept": "*/*"}, timeout=10)
    assert as_json.status_code == 200 and as_json.headers["Content-Type"] == "application/json; charset=utf-8"
    assert as_json.json() == fields and as_json.content != stored and int(as_json.headers["Content-Length"]) != 500
    as_xml = http.get(inst.app_data_url(element_id), headers={"Accept": "application/xml"}, timeout=10)
    assert as_xml.headers["Content-Type"] == "application/xml; charset=utf-8" and not as_xml.content.startswith(b"<?xml")
    assert as_xml.content != stored and len(as_xml.content) != 500
    assert {child.tag: child.text for child in ET.fromstring(as_xml.content)} == fields
    # ASP.NET ignores an Accept header with */* (RespectBrowserAcceptHeader is false): JSON.
    mixed = http.get(inst.app_data_url(element_id), headers={"Accept": "application/xml, */*"}, timeout=10)
    assert mixed.json() == fields
    assert http.get(f"{inst.app_data_url(element_id)}/type/model", timeout=10).json() == fields
    assert http.get(f"{inst.app_data_url(element_id)}/type/vedlegg", timeout=10).status_code == 400


def test_given_form_content_is_deserialized_and_bad_xml_fails_only_on_the_app_api(sim: Simulator, http: requests.Session) -> None:
    xml = '<?xml version="1.0" encoding="utf-8"?>\n<Model xmlns="urn:skjema">\n  <Navn>Ola &amp; Kari</Navn>\n  <Barn>Per</Barn><Barn>Pål</Barn>\n</Model>\n'
    inst = sim.add_instance("ttd", "app", [ElementSpec(content=xml.encode()), ElementSpec(content=b"<Model><Navn>")])
    good, bad = (e["id"] for e in inst.elements)
    as_json = http.get(inst.app_data_url(good), timeout=10)
    assert as_json.json() == {"Navn": "Ola & Kari", "Barn": ["Per", "Pål"]} and b"\\u0026" in as_json.content and b"\\u00E5" in as_json.content
    as_xml = http.get(inst.app_data_url(good), headers={"Accept": "text/xml"}, timeout=10).content.decode()
    assert as_xml.startswith("<Model xmlns:xsi=") and 'xmlns="urn:skjema"' in as_xml and "<Navn>Ola &amp; Kari</Navn><Barn>Per</Barn>" in as_xml
    assert http.get(inst.data_url(bad), timeout=10).content == b"<Model><Navn>"
    assert http.get(inst.app_data_url(bad), timeout=10).status_code == 500


def test_app_complete_proxies_storage_and_answers_app_json(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    response = http.post(inst.app_url + "/complete", timeout=10)
    doc = response.json()
    assert response.status_code == 200 and doc["status"]["readStatus"] == 1 and "party" not in doc["instanceOwner"]
    assert doc["selfLinks"] == {"apps": inst.app_url, "platform": inst.platform_url} and doc["dueBefore"] is None
    assert [c["stakeholderId"] for c in doc["completeConfirmations"]] == ["ttd"] and inst.confirmed_by == ["ttd"]
    assert sim.calls["app-complete"] == 1 and sim.calls["complete"] == 0 and len(sim.confirmations) == 1


# ---------------------------------------------------------------------------------------------
# Storage


def test_storage_serves_exactly_the_stored_bytes(sim: Simulator, http: requests.Session) -> None:
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nhello\n%%EOF\n"
    inst = sim.add_instance(
        "ttd",
        "app",
        [ElementSpec("vedlegg", "application/pdf", filename="søknad.pdf", content=pdf), ElementSpec("vedlegg", "text/plain", 10, content=b"abc")],
    )
    exact, short = inst.elements
    assert exact["size"] == len(pdf) and short["size"] == 10
    response = http.get(inst.data_url(exact["id"]), timeout=10)
    assert response.content == pdf and response.headers["Content-Length"] == str(len(pdf)) and response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == "attachment; filename=\"s_knad.pdf\"; filename*=UTF-8''s%C3%B8knad.pdf"
    assert inst.expected_bytes(exact["id"]) == pdf and sim.expected_sha256(exact["id"]) == hashlib.sha256(pdf).hexdigest()
    # The metadata says 10; the stored bytes are 3, and that is what storage sends.
    disagree = http.get(inst.data_url(short["id"]), timeout=10)
    assert disagree.content == b"abc" and disagree.headers["Content-Length"] == "3"
    assert http.get(inst.platform_url, timeout=10).json()["data"][1]["size"] == 10
    assert http.get(inst.app_data_url(exact["id"]), timeout=10).content == pdf  # an attachment: stored bytes on the app API too


@pytest.mark.parametrize("size", [17, 60, 150, 400, 3000, 200_000])
def test_a_generated_form_element_is_well_formed_xml_of_its_size(size: int) -> None:
    with Simulator() as a, Simulator() as b:
        first, second = (s.add_instance("ttd", "app", [ElementSpec(size=size, seed=11)]) for s in (a, b))
        body = first.expected_bytes(first.elements[0]["id"])
        assert len(body) == size and body == second.expected_bytes(second.elements[0]["id"])
        ET.fromstring(body)


def test_storage_ignores_the_party_id_in_the_path(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", [ElementSpec("vedlegg", "application/pdf", 10)])
    element_id = inst.elements[0]["id"]
    # GetOne(instanceGuid): the party id is not compared (it must be a number, though; 0 is refused for data).
    other = http.get(f"{sim.url}/storage/api/v1/instances/1/{inst.instance_guid}", timeout=10)
    assert other.status_code == 200 and other.json()["id"] == inst.id
    assert http.get(f"{sim.url}/storage/api/v1/instances/{inst.instance_guid}", timeout=10).json()["id"] == inst.id
    assert http.get(f"{sim.url}/storage/api/v1/instances/1/{inst.instance_guid}/data/{element_id}", timeout=10).status_code == 200
    assert http.get(f"{sim.url}/storage/api/v1/instances/0/{inst.instance_guid}/data/{element_id}", timeout=10).status_code == 400
    assert http.get(f"{sim.url}/storage/api/v1/instances/x1/{inst.instance_guid}", timeout=10).status_code == 404
    unknown = uuid.uuid4()
    missing = http.get(f"{sim.url}/storage/api/v1/instances/{inst.party_id}/{unknown}", timeout=10)
    assert missing.status_code == 404 and missing.json() == f"Unable to find instance {unknown}"  # [Produces("application/json")]


def test_hard_deleted_instances_are_served_to_the_owner_and_confirmable(sim: Simulator, http: requests.Session) -> None:
    kept = sim.add_instance("ttd", "app")
    gone = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 100)], hard_deleted=True)
    status = http.get(gone.platform_url, timeout=10).json()["status"]
    assert status["isHardDeleted"] is True and status["isSoftDeleted"] is True and status["hardDeleted"] and status["softDeleted"]
    assert all(http.get(gone.data_url(e["id"]), timeout=10).content == gone.expected_bytes(e["id"]) for e in gone.elements)
    assert http.get(gone.app_url, timeout=10).json()["status"]["isHardDeleted"] is True
    everything, _ = query(http, f"{sim.url}/storage/api/v1/instances?org=ttd&appId=ttd/app")
    assert everything == [[gone.id, kept.id]]
    filtered, _ = query(http, f"{sim.url}/storage/api/v1/instances?org=ttd&appId=ttd/app&status.isHardDeleted=false")
    assert filtered == [[kept.id]]
    confirmed = http.post(gone.platform_url + "/complete", timeout=10)
    assert confirmed.status_code == 200 and [c["stakeholderId"] for c in confirmed.json()["completeConfirmations"]] == ["ttd"]


def test_complete_is_idempotent_and_ignores_the_body(sim: Simulator, http: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app", process_ended=False)
    first = http.post(inst.platform_url + "/complete", json={"anything": True}, timeout=10)
    assert first.status_code == 200 and first.json()["lastChanged"] != inst.to_json()["created"]
    again = http.post(inst.platform_url + "/complete", data=b"\x00garbage", timeout=10)
    assert again.json() == first.json() and http.get(inst.platform_url, timeout=10).json() == first.json()


def test_substatus_is_set_by_the_org_and_validated(sim: Simulator, http: requests.Session, skd: requests.Session) -> None:
    inst = sim.add_instance("ttd", "app")
    url = inst.platform_url + "/substatus"
    before = http.get(inst.platform_url, timeout=10).json()["lastChanged"]
    rejected = [
        http.put(url, data=b"", headers={"Content-Type": "application/json"}, timeout=10),
        http.put(url, json={"description": "uten etikett"}, timeout=10),
        http.put(url, json={"label": ""}, timeout=10),
        http.put(url, json=None, headers={"Content-Type": "application/json"}, timeout=10),
        http.put(url, data=b'{"label": "x"}', headers={"Content-Type": "text/plain"}, timeout=10),
        skd.put(url, json={"label": "x"}, timeout=10),
        http.put(f"{sim.url}/storage/api/v1/instances/{inst.party_id}/{uuid.uuid4()}/substatus", json={"label": "x"}, timeout=10),
    ]
    assert [r.status_code for r in rejected] == [400, 400, 400, 400, 415, 403, 500]
    assert inst.substatus is None and sim.substatus_updates == []
    response = http.put(url, json={"label": "arkivert", "description": "Mottatt og arkivert"}, timeout=10)
    doc = response.json()
    assert response.status_code == 200 and doc["status"]["substatus"] == {"label": "arkivert", "description": "Mottatt og arkivert"}
    assert ticks(doc["lastChanged"]) > ticks(before) and inst.substatus == {"label": "arkivert", "description": "Mottatt og arkivert"}
    assert http.put(url, json={"Label": "bare etikett"}, timeout=10).json()["status"]["substatus"] == {"label": "bare etikett"}
    assert sim.substatus_updates == [(inst.id, "arkivert", "Mottatt og arkivert"), (inst.id, "bare etikett", None)]
    assert http.get(inst.app_url, timeout=10).json()["status"]["substatus"] == {"label": "bare etikett", "description": None}
    assert sim.calls["substatus"] == 9


# ---------------------------------------------------------------------------------------------
# The query


def test_query_token_is_ticks_and_internal_id_encoded_twice(sim: Simulator, http: requests.Session) -> None:
    made = [sim.add_instance("ttd", "app") for _ in range(3)]
    base = f"{sim.url}/storage/api/v1/instances?org=ttd&appId=ttd/app&size=2"
    first = http.get(base, timeout=10).json()
    assert [i["id"] for i in first["instances"]] == [made[2].id, made[1].id] and first["self"] == base
    last = first["instances"][-1]
    token = f"{ticks(last['lastChanged'])};{made[1]._seq}"
    # HttpUtility.UrlEncode ("%3b"), then QueryBuilder's UrlEncoder ("%253b"); the other parameters re-encoded.
    assert first["next"] == f"{sim.url}/storage/api/v1/instances?org=ttd&appId=ttd%2Fapp&size=2&continuationToken={token.replace(';', '%253b')}"
    assert parse_qs(urlsplit(first["next"]).query)["continuationToken"] == [token.replace(";", "%3b")]
    second = http.get(first["next"], timeout=10).json()
    assert [i["id"] for i in second["instances"]] == [made[0].id] and second["next"] is None and second["self"] == first["next"]
    # The controller decodes once more, so the token decoded once or twice lands on the same page.
    for sent in (token.replace(";", "%3b"), token):
        again = http.get(base, params={"continuationToken": sent}, timeout=10).json()
        assert [i["id"] for i in again["instances"]] == [made[0].id]
    ascending, _ = query(http, base + "&order=asc:lastChanged")
    assert ascending == [[made[0].id, made[1].id], [made[2].id]]


def test_query_keyset_skips_an_instance_that_changes_while_paging(sim: Simulator, http: requests.Session) -> None:
    made = [sim.add_instance("ttd", "app") for _ in range(5)]
    first = http.get(f"{sim.url}/storage/api/v1/instances?org=ttd&size=2", timeout=10).json()
    assert [i["id"] for i in first["instances"]] == [made[4].id, made[3].id]
    assert http.post(made[0].platform_url + "/complete", timeout=10).status_code == 200  # now the newest
    rest, _ = query(http, first["next"])
    assert rest == [[made[2].id, made[1].id], []]  # made[0] is never seen in this pass


def test_query_keyset_repeats_and_skips_ties_like_storages_sql(sim: Simulator, http: requests.Session) -> None:
    older = sim.add_instance("ttd", "app")
    t1, t2, t3 = (sim.add_instance("ttd", "app") for _ in range(3))
    for inst in (t1, t2):
        inst.last_changed = t3.last_changed
    # ORDER BY lastChanged DESC, id (ascending); next page: lastChanged < L OR (= L AND id < the last id).
    pages, _ = query(http, f"{sim.url}/storage/api/v1/instances?org=ttd&size=2")
    assert pages == [[t1.id, t2.id], [t1.id, older.id], []]
    assert t3.id not in {i for page in pages for i in page}


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ("&continuationToken=abc%3Bdef", 500),
        ("&continuationToken=5%3B", 500),
        ("&continuationToken=-5%3B1", 500),
        ("&continuationToken=99999999999999999999%3B1", 500),
        ("&continuationToken=%25%25%25", 200),
        ("&size=-1", 500),
        ("&lastChanged=bogus", 500),
        ("&lastChanged=gt:bogus", 500),
        ("&process.isComplete=yes", 400),
        ("&size=1.5", 400),
    ],
)
def test_query_rejects_what_storage_rejects(sim: Simulator, http: requests.Session, extra: str, status: int) -> None:
    sim.add_instance("ttd", "app")
    response = http.get(f"{sim.url}/storage/api/v1/instances?org=ttd{extra}", timeout=10)
    assert response.status_code == status, response.text
    if status == 200:  # a token without ";" leaves the SQL's keyset NULL: no row matches
        assert response.json()["instances"] == [] and response.json()["next"] is None


def test_query_edge_pages_and_date_filters(sim: Simulator, http: requests.Session) -> None:
    a, b = sim.add_instance("ttd", "app"), sim.add_instance("ttd", "app")
    base = f"{sim.url}/storage/api/v1/instances?org=ttd"
    # A first-page token (id 0) is the first page; size 0 is a full empty page with DateTime.MinValue and -1.
    assert [i["id"] for i in http.get(base + "&continuationToken=0%3B0", timeout=10).json()["instances"]] == [b.id, a.id]
    empty = http.get(base + "&size=0", timeout=10).json()
    assert empty["instances"] == [] and empty["next"].endswith("&continuationToken=0%253b-1")
    cut = b.to_json()["lastChanged"]
    assert [i["id"] for i in http.get(base + f"&lastChanged=lt:{cut}", timeout=10).json()["instances"]] == [a.id]
    assert [i["id"] for i in http.get(base + f"&lastChanged=gte:{cut}", timeout=10).json()["instances"]] == [b.id]
    assert http.get(base + "&lastChanged=gt:2999-01-01T00:00:00Z", timeout=10).json()["instances"] == []


# ---------------------------------------------------------------------------------------------
# Subscriptions and events


def test_subscription_endpoints_must_be_https_except_on_loopback(sim: Simulator, http: requests.Session) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    source = f"{sim.apps_url}/ttd/app"
    refused = [
        http.post(subs, json={"endPoint": "http://example.com/hook", "sourceFilter": source}, timeout=10),
        http.post(subs, json={"endPoint": "/relative/hook", "sourceFilter": source}, timeout=10),
        http.post(subs, json={"endPoint": "https://127.0.0.1:1/hook", "sourceFilter": "http://ttd.apps.example.no/ttd/app"}, timeout=10),
        http.post(subs, json={"endPoint": "https://127.0.0.1:1/hook", "resourceFilter": "urn:altinn:resource:app_TTD_app"}, timeout=10),
        http.post(subs, json={"endPoint": "https://127.0.0.1:1/hook", "sourceFilter": source, "resourceFilter": "urn:altinn:resource:app_ttd_x"}, timeout=10),
        http.post(subs, json={"endPoint": "https://127.0.0.1:1/hook", "sourceFilter": source, "includeSubunits": "yes"}, timeout=10),
    ]
    assert [r.status_code for r in refused] == [400] * len(refused) and sim.subscriptions == {}
    # [Produces("application/json")]: the controller's string comes as a JSON string.
    assert refused[0].json() == "Missing or invalid endpoint to push events towards" and refused[0].headers["Content-Type"].startswith("application/json")
    created = http.post(subs, json={"endPoint": "https://127.0.0.1:1/hook", "resourceFilter": "urn:altinn:resource:app_ttd_app"}, timeout=10)
    assert created.status_code == 201 and created.json()["endPoint"] == "https://127.0.0.1:1/hook" and "sourceFilter" not in created.json()


def test_an_identical_subscription_is_returned_and_revalidated(sim: Simulator, http: requests.Session, receiver: Receiver) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    body = {"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/app", "typeFilter": "app.instance.process.completed"}
    first = http.post(subs, json=body, timeout=10).json()
    receiver.wait(1)
    wait_until(lambda: sim.subscriptions[first["id"]]["validated"])
    second = http.post(subs, json=dict(body, includeSubunits=False), timeout=10)
    assert second.status_code == 201 and second.json()["id"] == first["id"] and second.json()["validated"] is True
    receiver.wait(2)
    assert [e["type"] for e in receiver.received] == ["platform.events.validatesubscription"] * 2
    assert receiver.received[0]["id"] != receiver.received[1]["id"]
    # Any other filter is another subscription (includeSubunits needs a subject filter).
    others = [
        dict(body, typeFilter="app.instance.created"),
        dict(body, subjectFilter="/party/50001234"),
        dict(body, subjectFilter="/party/50001234", includeSubunits=True),
        dict(body, endPoint=receiver.url + "&x=1"),
    ]
    ids = [http.post(subs, json=b, timeout=10).json()["id"] for b in others]
    assert len({first["id"], *ids}) == 5 and len(sim.subscriptions) == 5
    assert http.post(subs, json=dict(body, includeSubunits=True), timeout=10).status_code == 400


def test_alternative_subject_is_mapped_to_the_party_and_is_part_of_the_identity(sim: Simulator, http: requests.Session, receiver: Receiver) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    sim.register_party(50001234, person_number="01039012345")
    body = {"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/app", "alternativeSubjectFilter": "/person/01039012345"}
    created = http.post(subs, json=body, timeout=10).json()
    assert created["subjectFilter"] == "/party/50001234" and "alternativeSubjectFilter" not in created
    by_party = {k: v for k, v in body.items() if k != "alternativeSubjectFilter"} | {"subjectFilter": "/party/50001234"}
    same = [http.post(subs, json=body, timeout=10).json()["id"], http.post(subs, json=by_party, timeout=10).json()["id"]]
    assert same == [created["id"]] * 2 and len(sim.subscriptions) == 1
    unknown = http.post(subs, json=dict(body, alternativeSubjectFilter="/person/31129999999"), timeout=10)
    assert unknown.status_code == 400 and unknown.json() == "A valid subject to the authenticated identity is required"
    receiver.wait(3)
    wait_until(lambda: sim.subscriptions[created["id"]]["validated"])
    mine = sim.add_instance("ttd", "app", party_id="50001234")
    assert sim.publish(mine) == [(receiver.url, 200)]
    assert sim.publish(sim.add_instance("ttd", "app", party_id="50009999")) == []


def test_source_filter_matches_like_uri_is_base_of(sim: Simulator, http: requests.Session, receiver: Receiver) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    created = http.post(subs, json={"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/app"}, timeout=10).json()
    wait_until(lambda: sim.subscriptions[created["id"]]["validated"])
    inst = sim.add_instance("ttd", "app")
    # Uri.IsBaseOf compares up to the base's last "/": /ttd/app is a base of /ttd/app2/... (the resource filter still differs).
    sibling = dict(sim.cloud_event(inst), source=f"{sim.apps_url}/ttd/app2/instances/{inst.id}")
    assert sim.publish(inst, event=sibling) == [(receiver.url, 200)]
    elsewhere = dict(sim.cloud_event(inst), source=f"{sim.url}/ttd/app/instances/{inst.id}")
    assert sim.publish(inst, event=elsewhere) == []


def test_a_failed_validation_is_retried_and_then_given_up(sim: Simulator, http: requests.Session, receiver: Receiver) -> None:
    subs = sim.url + "/events/api/v1/subscriptions"
    receiver.status = 503
    failing = http.post(subs, json={"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/app"}, timeout=10).json()
    receiver.wait(4)
    time.sleep(0.3)
    assert len(receiver.received) == 4 and len({e["id"] for e in receiver.received}) == 4  # 1 + len(validation_retry_delays)
    assert sim.subscriptions[failing["id"]]["validated"] is False and sim.validation_attempts == [(failing["id"], 503)] * 4
    receiver.status, receiver.statuses = 200, [500, 500]
    recovering = http.post(subs, json={"endPoint": receiver.url, "sourceFilter": f"{sim.apps_url}/ttd/other"}, timeout=10).json()
    wait_until(lambda: sim.subscriptions[recovering["id"]]["validated"])
    assert [s for i, s in sim.validation_attempts if i == recovering["id"]] == [500, 500, 200]
    # No answer at all counts as a failure too.
    silent = http.post(subs, json={"endPoint": "https://127.0.0.1:1/hook", "sourceFilter": f"{sim.apps_url}/ttd/third"}, timeout=10).json()
    wait_until(lambda: len([s for i, s in sim.validation_attempts if i == silent["id"]]) == 4)
    assert {s for i, s in sim.validation_attempts if i == silent["id"]} == {0} and sim.subscriptions[silent["id"]]["validated"] is False


def test_cloud_event_time_has_seven_fractional_digits(sim: Simulator) -> None:
    event = sim.cloud_event(sim.add_instance("ttd", "app"))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z", event["time"]), event["time"]


# ---------------------------------------------------------------------------------------------
# Documents loaded as given


def test_an_altinn_document_is_served_as_given(sim: Simulator, http: requests.Session) -> None:
    APPLIB_INSTANCE = real_altinn.read_json(APPLIB_INSTANCE_FILE)  # noqa: N806 - a constant of the source's
    APPLIB_BLOB = real_altinn.read_bytes(APPLIB_BLOB_FILE)  # noqa: N806
    element_id = APPLIB_INSTANCE["data"][0]["id"]
    inst = sim.load_instance(APPLIB_INSTANCE, {element_id: APPLIB_BLOB})
    assert isinstance(inst, SimInstance) and inst.id == APPLIB_INSTANCE["id"] and not inst.process_ended
    served = http.get(inst.platform_url, timeout=10).json()
    expected = copy.deepcopy(APPLIB_INSTANCE)
    expected["selfLinks"] = {"platform": inst.platform_url}
    expected["data"][0]["selfLinks"] = {"platform": inst.data_url(element_id)}
    assert served == expected
    data = http.get(inst.data_url(element_id), timeout=10)
    assert data.content == APPLIB_BLOB and data.headers["Content-Length"] == "174" and served["data"][0]["size"] == 173
    # Its data type "Model" has appLogic.classRef (as in the app's own metadata): the app API deserializes it.
    assert sim.app("ttd", "service-tasks").is_form("Model")
    assert http.get(inst.app_data_url(element_id), timeout=10).json() == {"Navn": "Testnavn"}
    dto = http.get(inst.app_url, timeout=10).json()
    assert dto["instanceOwner"]["party"]["ssn"] == "01039012345" and dto["status"]["readStatus"] == 1 and dto["lastChanged"] == APPLIB_INSTANCE["lastChanged"]
    found, _ = query(http, f"{sim.url}/storage/api/v1/instances?appId=ttd/service-tasks&process.isComplete=false")
    assert found == [[inst.id]]
    confirmed = http.post(inst.platform_url + "/complete", timeout=10).json()
    assert [c["stakeholderId"] for c in confirmed["completeConfirmations"]] == ["ttd"] and confirmed["lastChanged"] != APPLIB_INSTANCE["lastChanged"]
    assert http.get(inst.platform_url, timeout=10).json()["completeConfirmations"] == confirmed["completeConfirmations"]


def test_loaded_documents_take_overrides_internal_ids_and_generated_bodies(sim: Simulator, http: requests.Session) -> None:
    APPLIB_ENDED = real_altinn.read_json(APPLIB_ENDED_FILE)  # noqa: N806
    ended = sim.load_instance(APPLIB_ENDED, org="ttd", app="task-action")
    assert ended.id == APPLIB_ENDED["id"] and ended.process_ended and ended.app_url.startswith(f"{sim.apps_url}/ttd/task-action/")
    doc = http.get(ended.platform_url, timeout=10).json()
    assert doc["appId"] == "ttd/task-action" and doc["process"] == APPLIB_ENDED["process"] and doc["status"] == APPLIB_ENDED["status"]
    assert http.get(ended.data_url(APPLIB_ENDED["data"][0]["id"]), timeout=10).content == b""
    # Storage's internal form: a bare guid id (ToExternal adds the owner's party id), a hard-deleted instance.
    guid, element_id = str(uuid.uuid4()), str(uuid.uuid4())
    internal = {
        "id": guid,
        "instanceOwner": {"partyId": "1337", "organisationNumber": "910000001"},
        "appId": "ttd/arkiv",
        "org": "ttd",
        "process": {"started": "2020-04-29T13:53:01.7020218Z", "ended": "2020-04-29T13:53:06.117891Z", "endEvent": "EndEvent_1"},
        "status": {"isArchived": True, "isHardDeleted": True, "hardDeleted": "2020-04-29T13:53:06.117891Z", "substatus": {"label": "x"}},
        "data": [{"id": element_id, "dataType": "ref-data-as-pdf", "contentType": "application/pdf", "size": 1000, "fileScanResult": "Clean"}],
        "lastChanged": "2020-04-29T13:53:09.1122622Z",
    }
    loaded = sim.load_instance(internal)
    assert loaded.id == f"1337/{guid}" and loaded.hard_deleted and loaded.substatus == {"label": "x"}
    body = http.get(loaded.data_url(element_id), timeout=10)
    assert len(body.content) == 1000 and body.content == loaded.expected_bytes(element_id)
    served = http.get(loaded.platform_url, timeout=10).json()
    assert served["status"]["hardDeleted"] == "2020-04-29T13:53:06.117891Z" and served["status"]["isSoftDeleted"] is True
    assert served["lastChanged"] == "2020-04-29T13:53:09.1122622Z"
    assert http.post(loaded.platform_url + "/complete", timeout=10).status_code == 200
    with pytest.raises(ValueError):
        sim.load_instance(internal)  # the id exists
    with pytest.raises(ValueError):
        sim.load_instance({"id": guid, "appId": "ttd/x"})  # no party id
