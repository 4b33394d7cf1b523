"""Upstream is untrusted input: a hostile Altinn (tests/support/hostile.py, raw sockets on
127.0.0.1, every answer scripted) against the real archive function, with Azurite as storage.

Each test names the point of the issue it pins ("Treat every answer from upstream as untrusted
input"). The invariant behind all of them: nothing is ever confirmed that was not stored whole.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest

from tests.support.hostile import HostileAltinn, StorageInstance, endless

ORG, APP = "ttd", "apps-test"
ELEMENT = "8a8a5dd2-0000-4000-8000-000000000001"


def _handle(inst: StorageInstance) -> Any:
    from shared.events import InstanceRef, queue_message
    from shared.pipeline import handle_message

    ref = InstanceRef(inst.org, inst.app, inst.party, inst.guid)
    return handle_message(json.dumps(queue_message(None, ref, via="webhook")))


def _blobs(azurite: Any) -> list[str]:
    import os

    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(azurite.connection_string, os.environ["ARCHIVE_CONTAINER"])
    try:
        return sorted(b.name for b in client.list_blobs())
    except ResourceNotFoundError:
        return []


def _serve(altinn: HostileAltinn, inst: StorageInstance, doc: Any, data: dict[str, Any] | None = None) -> None:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, body))
    altinn.on("POST", inst.path + "/complete$", lambda req: altinn.json(inst.document()))
    for element_id, handler in (data or {}).items():
        altinn.on("GET", f"{inst.path}/data/{element_id}$", handler)


def _completes(altinn: HostileAltinn, inst: StorageInstance) -> int:
    return len(altinn.calls("POST", inst.path + "/complete$"))


# -- 1. fail-open instance validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": ..., "appId": ..., "org": ..., "process": ..., "data": ..., "status": ..., "instanceOwner": ...}, "id"),  # 200 {}
        ({"data": ...}, "data"),
        ({"data": None}, "data"),
        ({"process": ...}, "process"),
        ({"process": {"started": "2025-01-01T09:00:00Z"}}, "process.ended"),
        ({"id": "50012345/11111111-2222-4333-8444-555555555555"}, "id"),
        ({"appId": "ttd/other-app"}, "appId"),
        ({"org": "skd"}, "org"),
        ({"status": "archived"}, "status"),
        ({"data": "[]"}, "data"),
    ],
)
def test_an_instance_that_does_not_fit_the_model_is_parked_with_its_field_and_never_confirmed(altinn, azurite, overrides, field):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    _serve(altinn, inst, inst.document(**overrides), {ELEMENT: lambda req: altinn.answer(200, b"0123456789", content_type="application/xml")})
    result = _handle(inst)
    assert result.outcome == "parked" and result.failure_class == "permanent"
    assert f"{field} " in result.reason, result.reason
    assert _completes(altinn, inst) == 0 and _blobs(azurite) == []
    assert altinn.calls("GET", "/data/") == []  # refused before any download


@pytest.mark.parametrize(
    ("element", "field"),
    [
        ({"size": None}, "data[0].size"),
        ({"size": "10"}, "data[0].size"),
        ({"size": True}, "data[0].size"),
        ({"size": -1}, "data[0].size"),
        ({"size": 10.0}, "data[0].size"),
        ({"id": 42}, "data[0].id"),
        ({"id": "../../x"}, "data[0].id"),
        ({"contentType": None}, "data[0].contentType"),
        ({"contentType": "application/xml\r\nX-Evil: 1"}, "data[0].contentType"),
        ({"filename": ["a.pdf"]}, "data[0].filename"),
        ({"fileScanResult": "Maybe"}, "data[0].fileScanResult"),
        ({"dataType": None}, "data[0].dataType"),
    ],
)
def test_a_data_element_that_does_not_fit_is_parked_with_its_field(altinn, azurite, element, field):
    inst = StorageInstance()
    doc = inst.element(ELEMENT, 10)
    for key, value in element.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    _serve(altinn, inst, inst.document(), {ELEMENT: lambda req: altinn.answer(200, b"0123456789")})
    result = _handle(inst)
    assert result.outcome == "parked" and result.failure_class == "permanent" and field in result.reason, result.reason
    assert _completes(altinn, inst) == 0 and _blobs(azurite) == []


def test_a_close_delimited_body_cut_short_is_not_archived_or_confirmed(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 1000)
    # HTTP/1.0, no Content-Length: the body ends when the server closes, after 18 of 1000 bytes.
    short = lambda req: altinn.answer(200, b"<short>body</short>"[:18], version="HTTP/1.0", length=None)  # noqa: E731
    _serve(altinn, inst, inst.document(), {ELEMENT: short})
    result = _handle(inst)
    assert result.outcome == "deferred" and "got 18 bytes, the instance says 1000" in result.reason
    assert _completes(altinn, inst) == 0
    assert not any(name.endswith("manifest.json") or "/data/" in name for name in _blobs(azurite))


# -- 2. duplicate data element ids ---------------------------------------------------------------


def test_duplicate_element_ids_are_refused_before_anything_is_written(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    inst.element(ELEMENT, 20, dataType="vedlegg")
    _serve(altinn, inst, inst.document(), {ELEMENT: lambda req: altinn.answer(200, b"0123456789")})
    result = _handle(inst)
    assert result.outcome == "parked" and "data[1].id is not unique" in result.reason
    assert _blobs(azurite) == [] and _completes(altinn, inst) == 0 and altinn.calls("GET", "/data/") == []


# -- 3. never read past size ----------------------------------------------------------------------


def test_an_endless_body_is_cut_off_near_the_size(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    _serve(altinn, inst, inst.document(), {ELEMENT: lambda req: altinn.answer(200, length=None, chunks=endless())})
    result = _handle(inst)
    assert result.outcome == "deferred" and "longer than the 10 bytes" in result.reason
    sent = [s for s in altinn.sent if "/data/" in s.target]
    # The client read 11 bytes and hung up; what the server got rid of is what the kernel buffers took.
    assert sent and sent[0].client_closed and sent[0].body_bytes < 8 * 1024 * 1024, sent[0].body_bytes
    assert _completes(altinn, inst) == 0 and not any("/data/" in n for n in _blobs(azurite))


def test_a_content_length_that_is_not_the_size_fails_before_the_body_is_read(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    body = b"y" * (4 * 1024 * 1024)
    pieces = [b""] + [body[i : i + 65536] for i in range(0, len(body), 65536)]
    _serve(altinn, inst, inst.document(), {ELEMENT: lambda req: altinn.answer(200, length=len(body), chunks=pieces, gap=0.01)})
    result = _handle(inst)
    assert result.outcome == "deferred" and "Content-Length is 4194304, the instance says 10; not read" in result.reason
    sent = [s for s in altinn.sent if "/data/" in s.target][0]
    assert not sent.finished and sent.body_bytes < len(body)
    assert _completes(altinn, inst) == 0


def test_data_is_asked_for_as_identity_and_an_encoded_body_is_refused(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 512 * 1024)
    packed = gzip.compress(b"\0" * (512 * 1024))
    encoded = lambda req: altinn.answer(200, packed, content_type="application/xml", headers=[("Content-Encoding", "gzip")])  # noqa: E731
    _serve(altinn, inst, inst.document(), {ELEMENT: encoded})
    result = _handle(inst)
    assert result.outcome == "deferred" and "gzip-encoded although identity was asked for" in result.reason
    asked = altinn.calls("GET", "/data/")
    assert asked and asked[0].headers.get("accept-encoding") == "identity"
    assert _completes(altinn, inst) == 0


# -- 4. caps on answers read whole ----------------------------------------------------------------


def test_an_instance_document_over_the_cap_is_refused_without_reading_it(altinn, azurite):
    inst = StorageInstance()
    huge = 20 * 1024 * 1024
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, length=huge, chunks=endless(limit=huge)))
    result = _handle(inst)
    assert result.outcome == "parked" and "more than the 16777216 bytes accepted" in result.reason
    sent = [s for s in altinn.sent if s.target.endswith(inst.guid)][0]
    assert not sent.finished


def test_an_instance_document_without_length_is_cut_at_the_cap(altinn, azurite):
    inst = StorageInstance()
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, length=None, chunks=endless(limit=64 * 1024 * 1024)))
    result = _handle(inst)
    assert result.outcome == "parked" and "more than the 16777216 bytes accepted" in result.reason
    sent = [s for s in altinn.sent if s.target.endswith(inst.guid)][0]
    assert sent.client_closed and sent.body_bytes < 24 * 1024 * 1024


def test_the_body_of_complete_is_not_read_beyond_a_small_cap(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    _serve(altinn, inst, inst.document(), {ELEMENT: lambda req: altinn.answer(200, b"0123456789")})
    altinn.on("POST", inst.path + "/complete$", lambda req: altinn.answer(200, length=None, chunks=endless(limit=512 * 1024 * 1024)))
    result = _handle(inst)
    assert result.outcome == "archived"
    sent = [s for s in altinn.sent if s.target.endswith("/complete")][0]
    assert sent.client_closed and sent.body_bytes < 16 * 1024 * 1024


def test_a_huge_exchange_answer_never_becomes_a_bearer_header(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    _serve(altinn, inst, inst.document(), {ELEMENT: lambda req: altinn.answer(200, b"0123456789")})
    altinn.on("GET", "/exchange/maskinporten", lambda req: altinn.answer(200, length=None, content_type="text/plain", chunks=endless(b"a" * 65536, 256 << 20)))
    result = _handle(inst)
    assert result.outcome == "deferred" and "Altinn token exchange" in result.reason and "bytes accepted" in result.reason
    assert altinn.calls("GET", "/storage/") == []  # no call went out with a giant header


# -- 5. deadlines -----------------------------------------------------------------------------------


def test_a_drip_fed_download_hits_its_deadline(altinn, azurite, monkeypatch):
    import shared.altinn

    monkeypatch.setattr(shared.altinn, "DATA_BASE_DEADLINE", 2.0)
    inst = StorageInstance()
    inst.element(ELEMENT, 20)
    drip = lambda req: altinn.answer(200, length=20, chunks=[b"x"] * 20, gap=0.5)  # noqa: E731 - 10 s in all, 0.5 s between bytes
    _serve(altinn, inst, inst.document(), {ELEMENT: drip})
    started = time.monotonic()
    result = _handle(inst)
    took = time.monotonic() - started
    assert result.outcome == "deferred" and "(deadline)" in result.reason, result.reason
    assert took < 6, took
    assert _completes(altinn, inst) == 0


def test_a_drip_fed_instance_document_hits_the_call_deadline(altinn, azurite, monkeypatch):
    import shared.http

    monkeypatch.setattr(shared.http, "CALL_DEADLINE", 1.5)
    inst = StorageInstance()
    body = json.dumps(inst.document()).encode()
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, length=len(body), chunks=[body[i : i + 1] for i in range(len(body))], gap=0.2))
    started = time.monotonic()
    result = _handle(inst)
    assert result.outcome == "deferred" and "get instance" in result.reason and "(deadline)" in result.reason
    assert time.monotonic() - started < 5


def test_drip_fed_headers_hit_the_deadline_too(altinn, azurite, monkeypatch):
    import shared.http

    monkeypatch.setattr(shared.http, "CALL_DEADLINE", 1.5)
    inst = StorageInstance()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 40
    from tests.support.hostile import Answer

    altinn.on("GET", inst.path + "$", lambda req: Answer(b"", [head[i : i + 1] for i in range(len(head))], gap=0.2))
    started = time.monotonic()
    result = _handle(inst)
    assert result.outcome == "deferred" and "(deadline)" in result.reason
    assert time.monotonic() - started < 5


def test_the_invocation_budget_is_inside_the_function_timeout():
    """host.json's functionTimeout leaves room around the archive's own budget."""
    from pathlib import Path

    from shared.config import INVOCATION_BUDGET_SECONDS

    doc = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    hours, minutes, seconds = (int(x) for x in doc["functionTimeout"].split(":"))
    assert INVOCATION_BUDGET_SECONDS + 5 * 60 <= hours * 3600 + minutes * 60 + seconds


# -- 6. wrongly typed members and odd headers -----------------------------------------------------


def test_deeply_nested_json_is_a_permanent_failure_with_a_reason(altinn, azurite):
    inst = StorageInstance()
    nested = b"[" * 100_000 + b"]" * 100_000
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, nested))
    result = _handle(inst)
    assert result.outcome == "parked" and "nested too deeply" in result.reason


def test_duplicate_members_in_the_instance_document_are_refused(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    text = json.dumps(inst.document())[:-1] + ', "data": []}'
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, text.encode()))
    result = _handle(inst)
    assert result.outcome == "parked" and "duplicate member" in result.reason


def test_a_malformed_content_length_is_a_clear_failure(altinn, azurite):
    inst = StorageInstance()
    inst.element(ELEMENT, 10)
    odd = lambda req: altinn.answer(200, b"0123456789", length=False, headers=[("Content-Length", "\u00b2".encode().decode("latin-1"))])  # noqa: E731
    _serve(altinn, inst, inst.document(), {ELEMENT: odd})
    result = _handle(inst)
    assert result.outcome in ("deferred", "parked") and result.reason and "Traceback" not in result.reason
    assert _completes(altinn, inst) == 0


def test_an_html_page_instead_of_json_is_transient(altinn, azurite):
    inst = StorageInstance()
    altinn.on("GET", inst.path + "$", lambda req: altinn.answer(200, b"<html>proxy login</html>", content_type="text/html"))
    result = _handle(inst)
    assert result.outcome == "deferred" and "text/html where JSON was expected" in result.reason


# -- 7. unusable tokens are not cached ---------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": "abc\r\nX-Injected: yes", "expires_in": 120},
        {"access_token": "<html>login</html>", "expires_in": 120},
        {"access_token": "a" * 20000, "expires_in": 120},
        {"access_token": "mp.fine-token-1234567890", "expires_in": "soon"},
        {"access_token": "mp.fine-token-1234567890", "expires_in": True},
    ],
)
def test_a_maskinporten_token_that_fails_validation_is_refused_and_not_cached(altinn, azurite, answer):
    from shared.errors import TransientError
    from shared.runtime import get_runtime

    altinn.on("POST", "/maskinporten/token", lambda req: altinn.json(answer))
    rt = get_runtime()
    for _ in range(2):
        with pytest.raises(TransientError):
            rt.maskinporten.token()
    assert len(altinn.calls("POST", "/maskinporten/token")) == 2  # asked again: nothing was cached


@pytest.mark.parametrize("body", ["<html>maintenance</html>", "not.a\r\n.jwt", ""])
def test_an_exchange_answer_that_is_not_a_jwt_is_refused_and_not_cached(altinn, azurite, body):
    from shared.errors import TransientError
    from shared.runtime import get_runtime

    altinn.on("GET", "/exchange/maskinporten", lambda req: altinn.text(body))
    rt = get_runtime()
    for _ in range(2):
        with pytest.raises(TransientError):
            rt.altinn.token()
    assert len(altinn.calls("GET", "/exchange/maskinporten")) == 2


def test_a_claimed_lifetime_is_capped_for_caching(altinn, azurite):
    from shared.runtime import get_runtime

    altinn.on("POST", "/maskinporten/token", lambda req: altinn.json({"access_token": "mp.long-lived-token-123456", "expires_in": 10**9}))
    altinn.on("GET", "/exchange/maskinporten", lambda req: altinn.text(altinn.altinn_token(lifetime=10**8)))
    rt = get_runtime()
    rt.altinn.token()
    now = time.time()
    assert rt.maskinporten.cache._refresh_at <= now + 3600
    assert rt.altinn.cache._refresh_at <= now + 3600


# -- 8. continuation cycles -------------------------------------------------------------------------


def test_a_continuation_cycle_stops_that_apps_run_and_is_reported(altinn, azurite):
    from shared.catchup import run_catchup
    from shared.runtime import get_runtime

    pages = {None: "tokenA", "tokenA": "tokenB", "tokenB": "tokenA"}

    def query(req: Any) -> Any:
        from urllib.parse import parse_qs, urlsplit

        token = parse_qs(urlsplit(req.target).query).get("continuationToken", [None])[0]
        nxt = pages[token]
        return altinn.json({"count": 0, "instances": [], "next": f"{altinn.url}/storage/api/v1/instances?continuationToken={nxt}"})

    altinn.on("GET", r"/storage/api/v1/instances$", query)
    report = run_catchup(get_runtime(), time_budget=30)
    assert not report.ok and "cycle" in report.apps[0].error
    assert len(altinn.calls("GET", r"/storage/api/v1/instances$")) == 3
