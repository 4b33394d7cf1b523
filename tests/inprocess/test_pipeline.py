"""Every outcome and failure class of the archive function, and the order of its steps, on the
in-memory stand-ins."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import EVENTS_QUEUE, POISON_QUEUE
from shared.events import queue_message
from shared.models import FailureClass, InstanceRef, Outcome
from shared.pipeline import handle_message
from tests.support.fakes import FakeResponse, documents

GUID = "428a4575-2c04-4400-89a3-1aaadd2579cd"
REF = InstanceRef("ttd", "apps-test", "50001", GUID)
PREFIX = REF.prefix
FORM, PDF = "8a8a5dd2-0000-4000-8000-000000000001", "8a8a5dd2-0000-4000-8000-000000000002"


def message(ref: InstanceRef = REF, via: str = "webhook") -> str:
    return json.dumps(queue_message(None, ref, via=via))


def standard(altinn: Any, **status: Any) -> dict[str, Any]:
    return altinn.add_instance("50001", GUID, [(FORM, b"<Skjema/>", "model"), (PDF, b"%PDF-1.7 " * 100, "vedlegg")], **status)


def handle(rt: Any, body: str | None = None, **kw: Any) -> Any:
    return handle_message(body or message(), rt=rt, **kw)


def parked(rt: Any) -> list[dict[str, Any]]:
    return documents(rt.stores[POISON_QUEUE])


def test_archived_then_already_archived(rt, altinn):
    standard(altinn)
    assert handle(rt).outcome is Outcome.ARCHIVED
    blobs = rt.container.blobs
    assert blobs[PREFIX + f"data/{PDF}"].data == altinn.blobs[PDF] and blobs[PREFIX + f"data/{FORM}"].metadata["dataType"] == "model"
    manifest = json.loads(blobs[PREFIX + "manifest.json"].data)
    assert [e["dataElementId"] for e in manifest["dataElements"]] == [FORM, PDF] and manifest["hardDeleted"] is False
    assert blobs[PREFIX + "confirmed.json"].metadata["confirmedAt"] and altinn.confirmations == [REF.instance_id]
    calls = len(altinn.calls)
    assert handle(rt).outcome is Outcome.ALREADY_ARCHIVED and len(altinn.calls) == calls  # no call to Altinn at all


def test_the_order_of_steps(rt, altinn):
    """Data, then instance.json, then the manifest (write-once), then /complete, then the marker, the
    hand-off message and its record: every write a first write."""
    standard(altinn)
    seen: list[list[tuple[str, str]]] = []
    altinn.on_complete = lambda instance_id: seen.append(list(rt.container.writes))
    handle(rt)
    (before,) = seen
    names = [name.removeprefix(PREFIX) for _, name in before]
    assert names[-2:] == ["instance.json", "manifest.json"] and set(names[:-2]) == {f"data/{FORM}", f"data/{PDF}"}
    assert [op for op, name in before if name.endswith(("instance.json", "manifest.json"))] == ["put-once", "put-once"]
    after = rt.container.writes[len(before) :]
    assert after == [("put-once", PREFIX + "confirmed.json"), ("put-once", PREFIX + "handoff.json")]  # after /complete
    assert {op for op, _ in rt.container.writes} == {"put-once"}


def test_confirmed_only_when_the_archive_exists(rt, altinn):
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(503) if call.path.endswith("/complete") else None)
    assert handle(rt).outcome is Outcome.DEFERRED
    altinn.script.clear()
    data_calls = altinn.count("GET", "/data/")
    (following,) = documents(rt.stores[EVENTS_QUEUE])
    assert handle(rt, json.dumps(following)).outcome is Outcome.CONFIRMED_ONLY
    assert altinn.count("GET", "/data/") == data_calls and altinn.confirmations == [REF.instance_id]


def test_a_partial_archive_reuses_what_is_stored(rt, altinn):
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(500) if call.path.endswith(PDF) else None)
    assert handle(rt).outcome is Outcome.DEFERRED
    assert PREFIX + f"data/{FORM}" in rt.container.blobs and PREFIX + "manifest.json" not in rt.container.blobs
    altinn.script.clear()
    assert handle(rt).outcome is Outcome.ARCHIVED
    assert altinn.count("GET", f"/data/{FORM}") == 1  # stored whole the first time: not fetched again


def test_hard_deleted_is_archived_and_marked(rt, altinn):
    standard(altinn, isHardDeleted=True)
    assert handle(rt).outcome is Outcome.ARCHIVED
    assert json.loads(rt.container.blobs[PREFIX + "manifest.json"].data)["hardDeleted"] is True


@pytest.mark.parametrize(
    ("answer", "failure_class", "status"),
    [
        (lambda call: FakeResponse(403, content_type=None) if call.path.endswith(GUID) else None, FailureClass.PERMANENT, 403),
        (lambda call: FakeResponse(410) if call.path.endswith(GUID) else None, FailureClass.PERMANENT, 410),
        (lambda call: FakeResponse(302, headers={"Location": "http://evil"}) if call.path.endswith(GUID) else None, FailureClass.PERMANENT, 302),
        (lambda call: FakeAltinnJson({"id": "x"}) if call.path.endswith(GUID) else None, FailureClass.PERMANENT, None),
    ],
    ids=["403", "410", "redirect", "not-the-model"],
)
def test_permanent_failures_are_parked_at_once(rt, altinn, answer, failure_class, status):
    standard(altinn)
    altinn.script.append(answer)
    result = handle(rt)
    assert result.outcome is Outcome.PARKED and result.failure_class is failure_class
    (doc,) = parked(rt)
    assert doc["failure"]["class"] == failure_class.value and doc["failure"]["status"] == status and doc["failure"]["permanent"] is True
    assert rt.stores[POISON_QUEUE].sent[0]["time_to_live"] == -1 and altinn.confirmations == []


def FakeAltinnJson(doc: Any) -> FakeResponse:  # noqa: N802 - reads like a response
    return FakeResponse(200, json.dumps(doc).encode())


def test_an_app_not_served_is_permanent_without_a_call(rt, altinn):
    result = handle(rt, message(InstanceRef("ttd", "other-app", "50001", GUID)))
    assert result.failure_class is FailureClass.PERMANENT and "ALTINN_APPS" in result.reason and altinn.calls == []


def test_unreadable_is_parked(rt, altinn):
    result = handle(rt, "{not json")
    assert result.outcome is Outcome.PARKED and result.failure_class is FailureClass.UNREADABLE
    assert parked(rt)[0]["raw"] == "{not json" and altinn.calls == []


def test_confirmation_refused_is_recorded_and_parked_once(rt, altinn):
    standard(altinn)
    altinn.complete_allowed = False
    result = handle(rt)
    assert result.failure_class is FailureClass.CONFIRMATION_REFUSED
    refusals = [n for n in rt.container.blobs if n.startswith(PREFIX + "confirmation-refused/")]
    assert len(refusals) == 1 and json.loads(rt.container.blobs[refusals[0]].data)["status"] == 403
    assert PREFIX + "manifest.json" in rt.container.blobs and "confirmed" not in rt.container.blobs[PREFIX + "manifest.json"].metadata


def test_transient_is_deferred_with_the_schedule_and_recorded(rt, altinn):
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(503) if call.path.endswith(GUID) else None)
    result = handle(rt)
    assert result.outcome is Outcome.DEFERRED and result.failure_class is FailureClass.TRANSIENT
    (sent,) = rt.stores[EVENTS_QUEUE].sent
    assert 54 <= sent["visibility_timeout"] <= 67 and sent["time_to_live"] == -1  # 60 s +-10 %, no expiry
    (following,) = documents(rt.stores[EVENTS_QUEUE])
    assert following["retry"]["attempt"] == 1 and following["retry"]["lastStatus"] == 503
    (record,) = rt.state_container.blobs.values()
    assert json.loads(record.data)["attempt"] == 1
    # The next attempt succeeds: the record goes.
    altinn.script.clear()
    assert handle(rt, json.dumps(following)).outcome is Outcome.ARCHIVED and rt.state_container.blobs == {}


def test_config_failure_is_deferred_as_config(rt, altinn, monkeypatch):
    from shared.errors import UnresolvedKeyVaultReference

    standard(altinn)

    def unresolved() -> Any:
        raise UnresolvedKeyVaultReference("MASKINPORTEN_PRIVATE_KEY")

    monkeypatch.setattr(rt.maskinporten, "_signing_key", unresolved)
    result = handle(rt)
    assert result.outcome is Outcome.DEFERRED and result.failure_class is FailureClass.CONFIG


def test_retries_exhausted_after_the_window(rt, altinn):
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(503) if call.path.endswith(GUID) else None)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert handle(rt, clock=lambda: start).outcome is Outcome.DEFERRED
    (following,) = documents(rt.stores[EVENTS_QUEUE])
    result = handle(rt, json.dumps(following), clock=lambda: start + timedelta(hours=24, seconds=1))
    assert result.outcome is Outcome.PARKED and result.failure_class is FailureClass.RETRIES_EXHAUSTED
    (doc,) = parked(rt)
    assert doc["failure"]["permanent"] is False and doc["failure"]["attempts"] == 2 and "HTTP 503" in doc["failure"]["reason"]


def test_404s_in_a_row_are_permanent(rt, altinn):
    body = message()
    for _ in range(3):
        assert handle(rt, body).outcome is Outcome.DEFERRED
        (following,) = documents(rt.stores[EVENTS_QUEUE])
        rt.stores[EVENTS_QUEUE].messages.clear()
        body = json.dumps(following)
    result = handle(rt, body)
    assert result.outcome is Outcome.PARKED and result.failure_class is FailureClass.PERMANENT and "gone" in result.reason


def test_a_pending_scan_waits_on_the_schedule(rt, altinn):
    doc = standard(altinn)
    doc["data"][1]["fileScanResult"] = "Pending"
    result = handle(rt)
    assert result.outcome is Outcome.DEFERRED and "scan pending" in result.reason and altinn.count("GET", "/data/") == 0


def test_the_token_goes_only_to_the_platform(rt, altinn):
    standard(altinn)
    handle(rt)
    with_token = {c.url.split("/")[2] for c in altinn.calls if c.headers.get("Authorization")}
    assert with_token == {"platform.localhost"}
