"""The webhook's rules, one case each: pure code, no I/O."""

from __future__ import annotations

import json

import pytest

from shared.config import load_settings
from shared.errors import InvalidEvent
from shared.events import MAX_BODY_BYTES, InstanceRef, evaluate, parse_message

GUID = "428a4575-2c04-4400-89a3-1aaadd2579cd"
HOST = "https://ttd.apps.tt02.altinn.no"
SOURCE = f"{HOST}/ttd/apps-test/instances/50660768/{GUID}"


@pytest.fixture(scope="module")
def settings():
    return load_settings(
        {
            "ALTINN_APPS": "ttd/apps-test,ttd/other-app",
            "MASKINPORTEN_CLIENT_ID": "client",
            "MASKINPORTEN_PRIVATE_KEY": "not parsed here",
        }
    )


def event(**overrides) -> dict:
    base = {
        "specversion": "1.0",
        "id": "7d0a5e2c-5ad1-4bd3-9f4f-8f4b1b1bb7a1",
        "time": "2025-01-01T10:00:00.1234567Z",
        "type": "app.instance.process.completed",
        "source": SOURCE,
        "resource": "urn:altinn:resource:app_ttd_apps-test",
        "resourceinstance": f"50660768/{GUID}",
        "subject": "/party/50660768",
    }
    for key, value in overrides.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def test_accepted_event_becomes_a_queue_message(settings):
    out = evaluate(settings, body(event()), "application/json; charset=utf-8")
    assert out.status == 202
    assert out.message["instance"] == {"org": "ttd", "app": "apps-test", "partyId": "50660768", "instanceGuid": GUID}
    assert out.message["event"]["id"] == "7d0a5e2c-5ad1-4bd3-9f4f-8f4b1b1bb7a1"
    assert out.message["event"]["source"] == SOURCE
    assert out.message["event"]["time"] == "2025-01-01T10:00:00.1234567Z"
    msg = parse_message(json.dumps(out.message).encode())
    assert msg.ref == InstanceRef("ttd", "apps-test", "50660768", GUID)
    assert msg.event_id == "7d0a5e2c-5ad1-4bd3-9f4f-8f4b1b1bb7a1" and msg.via == "webhook" and msg.retry is None


def test_validation_event_is_acknowledged_not_queued(settings):
    doc = {
        "id": "694caa35",
        "source": "https://platform.tt02.altinn.no/events/api/v1/subscriptions/1234",
        "type": "platform.events.validatesubscription",
        "specversion": "1.0",
    }
    out = evaluate(settings, body(doc))
    assert out.status == 200 and out.message is None


def test_unlisted_type_is_ignored(settings):
    out = evaluate(settings, body(event(type="app.instance.created")))
    assert out.status == 200 and out.message is None and out.body["status"] == "ignored"


def test_too_large_is_413(settings):
    doc = event(extra="x" * MAX_BODY_BYTES)
    with pytest.raises(InvalidEvent) as err:
        evaluate(settings, body(doc))
    assert err.value.status == 413


BAD_BODIES = {
    "not json": b"hello",
    "empty": b"",
    "array": b"[]",
    "scalar": b"42",
    "null": b"null",
    "not utf-8": b'{"id": "\xff"}',
    "NaN": b'{"specversion": "1.0", "x": NaN}',
    "duplicate key": b'{"specversion": "1.0", "specversion": "1.0"}',
    "deep nesting": b"[" * 5000 + b"]" * 5000,
}


@pytest.mark.parametrize("raw", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_bodies_are_400(settings, raw):
    with pytest.raises(InvalidEvent) as err:
        evaluate(settings, raw)
    assert err.value.status == 400


BAD_EVENTS = {
    "no specversion": event(specversion=...),
    "specversion 0.3": event(specversion="0.3"),
    "specversion number": event(specversion=1.0),
    "no id": event(id=...),
    "empty id": event(id=""),
    "id not string": event(id=5),
    "id with space": event(id="a b"),
    "id too long": event(id="a" * 300),
    "no type": event(type=...),
    "type not string": event(type=["app.instance.process.completed"]),
    "no source": event(source=...),
    "empty source": event(source=""),
    "source not string": event(source={"url": SOURCE}),
    "bad time": event(time="yesterday"),
    "time without zone": event(time="2025-01-01T10:00:00"),
}


@pytest.mark.parametrize("doc", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_invalid_cloud_events_are_400(settings, doc):
    with pytest.raises(InvalidEvent) as err:
        evaluate(settings, body(doc))
    assert err.value.status == 400


BAD_SOURCES = {
    "other host": f"https://evil.example/ttd/apps-test/instances/50660768/{GUID}",
    "lookalike host": f"https://ttd.apps.tt02.altinn.no.evil.example/ttd/apps-test/instances/50660768/{GUID}",
    "lookalike suffix": f"https://ttd.apps.tt02.altinn.nо/ttd/apps-test/instances/50660768/{GUID}",
    "userinfo": f"https://user@ttd.apps.tt02.altinn.no/ttd/apps-test/instances/50660768/{GUID}",
    "userinfo trick": f"https://ttd.apps.tt02.altinn.no@169.254.169.254/ttd/apps-test/instances/50660768/{GUID}",
    "other port": f"https://ttd.apps.tt02.altinn.no:8443/ttd/apps-test/instances/50660768/{GUID}",
    "explicit 443": f"https://ttd.apps.tt02.altinn.no:443/ttd/apps-test/instances/50660768/{GUID}",
    "http": f"http://ttd.apps.tt02.altinn.no/ttd/apps-test/instances/50660768/{GUID}",
    "metadata address": f"http://169.254.169.254/ttd/apps-test/instances/50660768/{GUID}",
    "production host": f"https://ttd.apps.altinn.no/ttd/apps-test/instances/50660768/{GUID}",
    "other org's host": f"https://skd.apps.tt02.altinn.no/ttd/apps-test/instances/50660768/{GUID}",
    "other org": f"{HOST}/skd/apps-test/instances/50660768/{GUID}",
    "other app": f"{HOST}/ttd/not-ours/instances/50660768/{GUID}",
    "app prefix": f"{HOST}/ttd/apps-test2/instances/50660768/{GUID}",
    "party not digits": f"{HOST}/ttd/apps-test/instances/abc/{GUID}",
    "party negative": f"{HOST}/ttd/apps-test/instances/-5/{GUID}",
    "guid malformed": f"{HOST}/ttd/apps-test/instances/50660768/not-a-guid",
    "guid uppercase": f"{HOST}/ttd/apps-test/instances/50660768/{GUID.upper()}",
    "extra segment": f"{HOST}/ttd/apps-test/instances/50660768/{GUID}/data",
    "trailing slash": f"{HOST}/ttd/apps-test/instances/50660768/{GUID}/",
    "query": f"{HOST}/ttd/apps-test/instances/50660768/{GUID}?x=1",
    "fragment": f"{HOST}/ttd/apps-test/instances/50660768/{GUID}#f",
    "dot segments": f"{HOST}/ttd/apps-test/instances/../../../evil/instances/50660768/{GUID}",
    "encoded slash": f"{HOST}/ttd/apps-test/instances/50660768%2F..%2F/{GUID}",
    "double slash": f"{HOST}//ttd/apps-test/instances/50660768/{GUID}",
    "missing instances": f"{HOST}/ttd/apps-test/50660768/{GUID}",
    "relative": f"/ttd/apps-test/instances/50660768/{GUID}",
    "whitespace": f" {SOURCE}",
    "newline": f"{SOURCE}\n",
}


@pytest.mark.parametrize("source", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_sources_outside_the_allow_list_are_400(settings, source):
    with pytest.raises(InvalidEvent) as err:
        evaluate(settings, body(event(source=source)))
    assert err.value.status == 400 and err.value.code == "invalid_source"


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"])
def test_wrong_content_type_is_415(settings, ctype):
    with pytest.raises(InvalidEvent) as err:
        evaluate(settings, body(event()), ctype)
    assert err.value.status == 415


def test_cloudevents_content_type_is_accepted(settings):
    assert evaluate(settings, body(event()), "application/cloudevents+json").status == 202


def test_simulator_style_apps_url_without_org(settings):
    local = load_settings(
        {"ALTINN_APPS": "ttd/apps-test", "ALTINN_APPS_URL": "http://127.0.0.1:8070", "MASKINPORTEN_CLIENT_ID": "c", "MASKINPORTEN_PRIVATE_KEY": "k"}
    )
    out = evaluate(local, body(event(source=f"http://127.0.0.1:8070/ttd/apps-test/instances/1/{GUID}")))
    assert out.status == 202
    with pytest.raises(InvalidEvent):
        evaluate(local, body(event(source=f"http://127.0.0.1:8071/ttd/apps-test/instances/1/{GUID}")))


def test_queue_message_parsing_rejects_foreign_messages():
    for raw in (b"hello", b"{}", b'{"instance": {"org": "ttd"}}', b'{"instance": {"org": "TTD", "app": "a", "partyId": "1", "instanceGuid": "x"}}'):
        with pytest.raises(ValueError):
            parse_message(raw)
