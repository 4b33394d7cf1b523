"""The receive function over HTTP through the local host, with the queue in Azurite."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import requests

from tests.support.flow import queued

GUID = "428a4575-2c04-4400-89a3-1aaadd2579cd"


def cloud_event(sim, **overrides):
    doc = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "time": "2025-01-01T10:00:00.1234567Z",
        "type": "app.instance.process.completed",
        "source": f"{sim.apps_url}/ttd/apps-test/instances/50660768/{GUID}",
        "resource": "urn:altinn:resource:app_ttd_apps-test",
        "resourceinstance": f"50660768/{GUID}",
        "subject": "/party/50660768",
    }
    doc.update(overrides)
    return doc


def post(host, body, content_type="application/json; charset=utf-8", **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(host.function_url("receive"), data=data, headers={"Content-Type": content_type}, timeout=30, **kwargs)


def test_an_event_naming_the_platform_host_as_source_is_refused(host, sim, queues):
    """The source must be the app host: the platform (where our token goes) is not an event source."""
    events, _ = queues
    resp = post(host, cloud_event(sim, source=f"{sim.url}/ttd/apps-test/instances/50660768/{GUID}"))
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_source"
    assert queued(events) == []


def test_accepted_event_is_queued_before_the_answer(host, sim, queues):
    events, _ = queues
    doc = cloud_event(sim)
    resp = post(host, doc)
    assert resp.status_code == 202, resp.text
    # The message is in the queue the moment the answer arrives: it was written first.
    messages = queued(events)
    assert len(messages) == 1
    assert messages[0]["event"] == {"id": doc["id"], "type": doc["type"], "source": doc["source"], "time": doc["time"]}
    assert messages[0]["instance"] == {"org": "ttd", "app": "apps-test", "partyId": "50660768", "instanceGuid": GUID}


def test_validation_event_answers_200_and_queues_nothing(host, sim, queues):
    events, _ = queues
    doc = {"id": str(uuid.uuid4()), "source": f"{sim.url}/events/api/v1/subscriptions/1", "type": "platform.events.validatesubscription", "specversion": "1.0"}
    resp = post(host, doc)
    assert resp.status_code == 200
    assert queued(events) == []


def test_unlisted_type_is_ignored_with_200(host, sim, queues):
    events, _ = queues
    resp = post(host, cloud_event(sim, type="app.instance.created"))
    assert resp.status_code == 200
    assert resp.json()["status"] == "ignored"
    assert queued(events) == []


REJECTIONS = {
    "not json": (b"{nope", 400),
    "array": (b"[1,2]", 400),
    "wrong specversion": ({"specversion": "0.3"}, 400),
    "missing id": ("drop:id", 400),
    "source other host": ("source:https://evil.example/ttd/apps-test/instances/50660768/" + GUID, 400),
    "source other app": ("source:{sim}/ttd/other/instances/50660768/" + GUID, 400),
    "source other port": ("source:http://127.0.0.1:1/ttd/apps-test/instances/50660768/" + GUID, 400),
    "source userinfo": ("source:http://x@127.0.0.1/ttd/apps-test/instances/50660768/" + GUID, 400),
    "source encoded slash": ("source:{sim}/ttd/apps-test/instances/50660768%2F" + GUID, 400),
    "party not digits": ("source:{sim}/ttd/apps-test/instances/abc/" + GUID, 400),
    "bad guid": ("source:{sim}/ttd/apps-test/instances/50660768/xyz", 400),
    "too large": (b'{"specversion":"1.0","pad":"' + b"x" * 70000 + b'"}', 413),
}


@pytest.mark.parametrize("case", REJECTIONS.values(), ids=REJECTIONS.keys())
def test_rejections_get_a_problem_body_and_queue_nothing(host, sim, queues, case):
    events, _ = queues
    spec, status = case
    if isinstance(spec, str) and spec.startswith("drop:"):
        body = cloud_event(sim)
        body.pop(spec[5:])
    elif isinstance(spec, str) and spec.startswith("source:"):
        body = cloud_event(sim, source=spec[7:].replace("{sim}", sim.url))
    elif isinstance(spec, dict):
        body = cloud_event(sim, **spec)
    else:
        body = spec
    resp = post(host, body)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["status"] == status and problem["detail"] and problem["title"]
    assert queued(events) == []


def test_wrong_content_type_is_415(host, sim, queues):
    resp = post(host, cloud_event(sim), content_type="text/plain")
    assert resp.status_code == 415
    assert queued(queues[0]) == []


def test_function_key_is_required(host, sim, queues):
    resp = requests.post(f"{host.url}/api/events", json=cloud_event(sim), timeout=10)
    assert resp.status_code == 401
    assert queued(queues[0]) == []


def test_queue_write_failure_answers_5xx(host, sim, monkeypatch):
    # Point the storage setting at a port where nothing listens: the write fails, so must the answer.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
    )
    monkeypatch.setenv("AzureWebJobsStorage", dead)
    resp = post(host, cloud_event(sim))
    assert 500 <= resp.status_code < 600
    assert resp.json()["code"] == "queue_unavailable"
