"""After the confirmation (shared/closing.py): one hand-off message per archived instance, never
before the confirmation; the submitter's substatus set once; and the archive write-once throughout
(the ``rt`` fixture fails a test whose run changed or removed an archive blob)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from shared import closing
from shared.config import DEFAULT_HANDOFF_QUEUE, EVENTS_QUEUE, POISON_QUEUE
from shared.models import FailureClass, Outcome
from tests.inprocess.test_pipeline import FORM, GUID, PDF, PREFIX, REF, handle, message, standard
from tests.support.fakes import FakeResponse, documents, memory_runtime


def handoffs(rt: Any) -> list[dict[str, Any]]:
    store = rt.stores.get(DEFAULT_HANDOFF_QUEUE)
    return documents(store) if store else []


def with_settings(rt: Any, altinn: Any, clock: Any, **env: str) -> Any:
    """A runtime like ``rt`` (same stand-ins) with more settings."""
    from dataclasses import replace

    from shared.config import ALTINN_SUBSTATUS_DESCRIPTION, ALTINN_SUBSTATUS_LABEL, load_settings
    from shared.config.values import _parse_per_app

    base = rt.settings
    settings = replace(
        base,
        substatus_labels=_parse_per_app(ALTINN_SUBSTATUS_LABEL, env.get("label")),
        substatus_descriptions=_parse_per_app(ALTINN_SUBSTATUS_DESCRIPTION, env.get("description")),
        handoff_queue=load_settings(
            {"ALTINN_APPS": "ttd/x", "MASKINPORTEN_CLIENT_ID": "c", "MASKINPORTEN_PRIVATE_KEY": "k", "ARCHIVE_HANDOFF_QUEUE": env.get("queue", "")}
        ).handoff_queue,
    )
    other = memory_runtime(settings, altinn, clock=clock)
    other.__dict__["container"] = rt.container  # one archive, so the fixture's write-once check covers it
    other.stores = rt.stores
    return other


def test_one_message_after_the_confirmation_with_the_manifest_it_names(rt, altinn):
    standard(altinn)
    assert handle(rt).outcome is Outcome.ARCHIVED
    (sent,) = handoffs(rt)
    manifest = rt.container.blobs[PREFIX + "manifest.json"].data
    assert sent["manifestSha256"] == hashlib.sha256(manifest).hexdigest() and sent["manifestBlob"] == PREFIX + "manifest.json"
    assert (sent["org"], sent["app"], sent["instanceId"], sent["via"]) == ("ttd", "apps-test", REF.instance_id, "webhook")
    assert sent["elementCount"] == 2 and sent["totalBytes"] == len(altinn.blobs[FORM]) + len(altinn.blobs[PDF])
    assert sent["archivedAt"] == json.loads(manifest)["archivedAt"] and sent["confirmedAt"] and sent["container"] == rt.settings.archive_container
    record = json.loads(rt.container.blobs[PREFIX + "handoff.json"].data)
    assert {k: record[k] for k in sent} == sent and record["sentAt"]
    # Duplicates (the webhook again, catch-up, the CLI) find the record: no second message.
    for via in ("webhook", "catch-up", "cli"):
        assert handle(rt, message(via=via)).outcome is Outcome.ALREADY_ARCHIVED
    assert len(handoffs(rt)) == 1


def test_nothing_is_handed_off_before_a_confirmation(rt, altinn):
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(503) if call.path.endswith("/complete") else None)
    assert handle(rt).outcome is Outcome.DEFERRED
    assert handoffs(rt) == [] and PREFIX + "confirmed.json" not in rt.container.blobs
    altinn.complete_allowed = False
    altinn.script.clear()
    (following,) = documents(rt.stores[EVENTS_QUEUE])
    result = handle(rt, json.dumps(following))
    assert result.failure_class is FailureClass.CONFIRMATION_REFUSED and handoffs(rt) == []


def test_a_replayed_message_says_so(rt, altinn):
    standard(altinn)
    doc = json.loads(message()) | {"replayed": True}
    handle(rt, json.dumps(doc))
    assert handoffs(rt)[0]["via"] == "replay"


def test_a_failed_send_is_retried_and_sent_once(rt, altinn, monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    standard(altinn)
    monkeypatch.setattr(closing, "HANDOFF_WAIT_SECONDS", 0.05)
    real = rt.queue

    def failing(name: str) -> Any:
        q = real(name)
        if name == DEFAULT_HANDOFF_QUEUE:
            q.send_message = lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError("down (test)"))
        return q

    rt.__dict__.pop("handoff_queue", None)
    monkeypatch.setattr(rt, "queue", failing)
    result = handle(rt)
    assert result.outcome is Outcome.DEFERRED and "hand-off" in result.reason and altinn.confirmations == [REF.instance_id]
    assert PREFIX + "handoff.json" not in rt.container.blobs
    monkeypatch.setattr(rt, "queue", real)
    rt.__dict__.pop("handoff_queue", None)
    (following,) = documents(rt.stores[EVENTS_QUEUE])
    assert handle(rt, json.dumps(following)).outcome is Outcome.ALREADY_ARCHIVED
    assert len(handoffs(rt)) == 1 and PREFIX + "handoff.json" in rt.container.blobs


def test_the_worker_that_lost_the_marker_leaves_the_message_to_the_winner(rt, altinn):
    """Two workers confirm at once: the one whose confirmed.json lost (If-None-Match) waits for the
    winner's record and sends nothing."""
    standard(altinn)

    def other_worker_wins(instance_id: str) -> None:
        rt.container.get_blob_client(PREFIX + "confirmed.json").upload_blob(b"{}", metadata={"confirmedAt": "2026-12-02T12:00:00Z"})
        rt.container.get_blob_client(PREFIX + "handoff.json").upload_blob(b"{}")

    altinn.on_complete = other_worker_wins
    assert handle(rt).outcome is Outcome.ARCHIVED
    assert handoffs(rt) == []


def test_a_marker_without_a_record_is_handed_off_after_the_wait(rt, altinn, monkeypatch):
    """The confirming worker stopped between its marker and the message: a later run sends it."""
    standard(altinn)
    monkeypatch.setattr(closing, "HANDOFF_WAIT_SECONDS", 0.05)
    altinn.on_complete = lambda instance_id: rt.container.get_blob_client(PREFIX + "confirmed.json").upload_blob(b"{}")
    assert handle(rt).outcome is Outcome.ARCHIVED
    assert len(handoffs(rt)) == 1


def test_hand_off_off(rt, altinn, clock):
    other = with_settings(rt, altinn, clock, queue="off")
    standard(altinn)
    assert handle(other).outcome is Outcome.ARCHIVED
    assert handoffs(other) == [] and PREFIX + "handoff.json" not in rt.container.blobs


def test_substatus_set_once_per_app_and_not_when_equal(rt, altinn, clock):
    other = with_settings(rt, altinn, clock, label="Mottatt;ttd/apps-test=Mottatt av etaten", description="ttd/apps-test=Vi har fått innsendingen")
    standard(altinn)
    assert handle(other).outcome is Outcome.ARCHIVED
    assert altinn.substatus_updates == [(REF.instance_id, "Mottatt av etaten", "Vi har fått innsendingen")]
    assert json.loads(rt.container.blobs[PREFIX + "substatus.json"].data)["result"] == "set"
    calls = len(altinn.calls)
    assert handle(other).outcome is Outcome.ALREADY_ARCHIVED and len(altinn.calls) == calls  # recorded: not asked again
    # Another instance whose substatus storage already shows: read, not set again.
    guid = GUID[:-4] + "beef"
    altinn.add_instance("50001", guid, [], substatus={"label": "Mottatt av etaten", "description": "Vi har fått innsendingen"})
    from shared.models import InstanceRef

    assert handle(other, message(InstanceRef("ttd", "apps-test", "50001", guid))).outcome is Outcome.ARCHIVED
    assert len(altinn.substatus_updates) == 1
    assert json.loads(rt.container.blobs[f"ttd/apps-test/50001/{guid}/substatus.json"].data)["result"] == "unchanged"


def test_substatus_not_for_hard_deleted(rt, altinn, clock):
    other = with_settings(rt, altinn, clock, label="Mottatt")
    standard(altinn, isHardDeleted=True)
    assert handle(other).outcome is Outcome.ARCHIVED and altinn.substatus_updates == []
    assert json.loads(rt.container.blobs[PREFIX + "substatus.json"].data)["result"] == "skipped"


def test_substatus_transient_failure_is_retried_and_never_undoes_the_archive(rt, altinn, clock):
    other = with_settings(rt, altinn, clock, label="Mottatt")
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(503) if call.path.endswith("/substatus") else None)
    result = handle(other)
    assert result.outcome is Outcome.DEFERRED and altinn.confirmations == [REF.instance_id] and len(handoffs(rt)) == 1
    altinn.script.clear()
    (following,) = documents(rt.stores[EVENTS_QUEUE])
    assert handle(other, json.dumps(following)).outcome is Outcome.ALREADY_ARCHIVED
    assert [label for _, label, _ in altinn.substatus_updates] == ["Mottatt"] and len(handoffs(rt)) == 1


@pytest.mark.parametrize("status", [400, 403])
def test_substatus_refused_is_said_once_and_not_retried(rt, altinn, clock, status, caplog):
    other = with_settings(rt, altinn, clock, label="Mottatt")
    standard(altinn)
    altinn.script.append(lambda call: FakeResponse(status, content_type=None) if call.path.endswith("/substatus") else None)
    assert handle(other).outcome is Outcome.ARCHIVED and documents(rt.stores[POISON_QUEUE]) == []
    assert json.loads(rt.container.blobs[PREFIX + "substatus.json"].data)["result"] == "failed"
    assert any("substatus not set" in r.getMessage() for r in caplog.records)


def test_an_element_stored_with_other_bytes_is_refused_not_overwritten(rt, altinn):
    standard(altinn)
    rt.container.exists = True
    rt.container.get_blob_client(PREFIX + f"data/{PDF}").upload_blob(b"other bytes", metadata={"sha256": "0" * 64})
    result = handle(rt)
    assert result.failure_class is FailureClass.PERMANENT and "write-once" in result.reason
    assert rt.container.blobs[PREFIX + f"data/{PDF}"].data == b"other bytes" and altinn.confirmations == []
