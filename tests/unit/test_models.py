"""The typed models of what crosses our boundaries: storage's instance document (fail closed, every
refusal naming the member) and the queue message. Pure, table-driven."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import InvalidInstance, PermanentError
from shared.models import InstanceRef, Outcome, QueueMessage, RetryState, ScanResult, parse_instance, parse_message

REF = InstanceRef("ttd", "apps-test", "50660768", "428a4575-2c04-4400-89a3-1aaadd2579cd")
DOC = {
    "id": "50660768/428a4575-2c04-4400-89a3-1aaadd2579cd",
    "appId": "ttd/apps-test",
    "org": "ttd",
    "process": {"started": "2025-01-01T09:00:00Z", "ended": "2025-01-01T10:00:00.1234567Z", "endEvent": "EndEvent_1"},
    "status": {"isArchived": True, "isHardDeleted": True},
    "completeConfirmations": [{"stakeholderId": "skd", "confirmedOn": "2025-01-01T11:00:00Z"}],
    "data": [
        {"id": "8a8a5dd2-0000-4000-8000-000000000001", "dataType": "model", "contentType": "application/xml", "size": 401, "fileScanResult": "NotApplicable"},
        {
            "id": "8a8a5dd2-0000-4000-8000-000000000002",
            "dataType": "vedlegg",
            "contentType": "application/pdf; name=x",
            "filename": "Søknad.pdf",
            "size": 0,
            "fileScanResult": "Infected",
        },
    ],
}


def test_a_good_document_parses_into_the_model():
    inst = parse_instance(copy.deepcopy(DOC), REF)
    assert inst.ref == REF and inst.hard_deleted and not inst.confirmed_by_org and inst.confirmed_by == {"skd"}
    assert [e.size for e in inst.data] == [401, 0] and inst.data[1].infected and inst.data[1].filename == "Søknad.pdf"
    assert inst.data[0].file_scan_result is ScanResult.NOT_APPLICABLE and inst.end_event == "EndEvent_1" and inst.pending == []
    assert inst.document == DOC


def _broken(path: str, value: object) -> dict:
    doc = copy.deepcopy(DOC)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("id", KeyError, "id"),
        ("id", "50660768/00000000-0000-4000-8000-000000000000", "id"),
        ("appId", "ttd/other", "appId"),
        ("org", None, "org"),
        ("process", KeyError, "process"),
        ("process", [], "process"),
        ("process.ended", KeyError, "process.ended"),
        ("process.ended", "yesterday", "process.ended"),
        ("status", "x", "status"),
        ("status.isHardDeleted", "true", "status.isHardDeleted"),
        ("data", KeyError, "data"),
        ("data", None, "data"),
        ("data", {}, "data"),
        ("data.0", "element", "data[0]"),
        ("data.0.id", KeyError, "data[0].id"),
        ("data.0.id", "a/b", "data[0].id"),
        ("data.0.size", KeyError, "data[0].size"),
        ("data.0.size", "401", "data[0].size"),
        ("data.0.size", False, "data[0].size"),
        ("data.0.size", -1, "data[0].size"),
        ("data.0.size", 1.5, "data[0].size"),
        ("data.1.contentType", KeyError, "data[1].contentType"),
        ("data.1.contentType", "pdf", "data[1].contentType"),
        ("data.1.contentType", "text/plain\r\nSet-Cookie: x", "data[1].contentType"),
        ("data.1.filename", 7, "data[1].filename"),
        ("data.1.fileScanResult", "Unknown", "data[1].fileScanResult"),
        ("data.1.id", "8a8a5dd2-0000-4000-8000-000000000001", "data[1].id"),
        ("data.1.id", "8A8A5DD2-0000-4000-8000-000000000001", "data[1].id"),
        ("completeConfirmations", "ttd", "completeConfirmations"),
    ],
)
def test_what_does_not_fit_is_refused_naming_the_member(path, value, field):
    with pytest.raises(InvalidInstance) as err:
        parse_instance(_broken(path, value), REF)
    assert err.value.field == field and isinstance(err.value, PermanentError)
    assert str(err.value).startswith(f"the instance document from Altinn is refused: {field} ")


def test_not_an_object_is_refused():
    for doc in ({}, [], "x", None, 3):
        with pytest.raises(InvalidInstance):
            parse_instance(doc, REF)


def test_pending_scans_are_listed():
    inst = parse_instance(_broken("data.0.fileScanResult", "Pending"), REF)
    assert inst.pending == ["8a8a5dd2-0000-4000-8000-000000000001"]


def test_queue_message_round_trip_with_retry_state():
    first = datetime(2025, 1, 1, 10, tzinfo=UTC)
    msg = QueueMessage(REF, "catch-up", "2025-01-01T10:00:00Z", retry=RetryState(3, first, "Altinn answered HTTP 503", 503, 0))
    again = parse_message(msg.to_json().encode())
    assert again == msg and again.attempt == 3 and again.retry.first_failure_at == first
    assert parse_message(json.dumps(msg.to_dict())) == msg


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"instance": "x"}',
        b'{"instance": {"org": "ttd", "app": "apps-test", "partyId": 5, "instanceGuid": "x"}}',
        b'{"instance": {"org": "ttd", "app": "apps-test", "partyId": "5", "instanceGuid": "not-a-guid"}}',
        b'{"instance": {"org": "ttd", "app": "apps-test", "partyId": "5", "instanceGuid": "428a4575-2c04-4400-89a3-1aaadd2579cd"}, "event": 1}',
        b'{"instance": {"org": "ttd", "app": "apps-test", "partyId": "5", "instanceGuid": "428a4575-2c04-4400-89a3-1aaadd2579cd"}, "retry": {"attempt": 0}}',
        b"\xff\xfe",
        b"[" * 50_000,
    ],
)
def test_a_queue_message_that_is_not_ours_is_a_value_error(body):
    with pytest.raises(ValueError):
        parse_message(body)


def test_outcomes_are_the_documented_names():
    assert [o.value for o in Outcome] == ["archived", "confirmed-only", "already-archived", "deferred", "parked"]
    assert Outcome.ARCHIVED == "archived"


def test_retry_decisions():
    import random

    from shared.config import load_settings
    from shared.retries import decide

    s = load_settings({"ALTINN_APPS": "ttd/apps-test", "MASKINPORTEN_CLIENT_ID": "c", "MASKINPORTEN_PRIVATE_KEY": "k"})
    now = datetime(2025, 1, 1, 10, tzinfo=UTC)
    msg = QueueMessage(REF, "webhook", "x")
    first = decide(s, msg, "HTTP 503", status=503, retry_after=None, now=now, rng=random.Random(1))
    assert not first.park and 54 <= first.delay <= 66 and first.retry.attempt == 1 and first.retry.first_failure_at == now
    later = QueueMessage(REF, "webhook", "x", retry=RetryState(9, now - timedelta(hours=5), "r", 503))
    step = decide(s, later, "HTTP 503", status=503, retry_after=None, now=now)
    assert not step.park and 3240 <= step.delay <= 3960 and step.retry.attempt == 10
    slow = decide(s, msg, "HTTP 429", status=429, retry_after=600, now=now)
    assert slow.delay >= 600  # Retry-After is honoured
    capped = decide(s, msg, "HTTP 429", status=429, retry_after=10**6, now=now)
    assert capped.delay <= 3600 * 1.1
    over = QueueMessage(REF, "webhook", "x", retry=RetryState(30, now - timedelta(hours=24), "r", 503))
    assert decide(s, over, "HTTP 503", status=503, retry_after=None, now=now).park
    near = QueueMessage(REF, "webhook", "x", retry=RetryState(20, now - timedelta(hours=23, minutes=59), "r", 503))
    assert decide(s, near, "HTTP 503", status=503, retry_after=None, now=now).delay <= 61  # not beyond the window
    gone = decide(s, QueueMessage(REF, "webhook", "x", retry=RetryState(2, now, "r", 404, 2)), "404", status=404, retry_after=None, now=now)
    assert gone.retry.not_found == 3
    recovered = decide(s, QueueMessage(REF, "webhook", "x", retry=RetryState(2, now, "r", 404, 2)), "503", status=503, retry_after=None, now=now)
    assert recovered.retry.not_found == 0
