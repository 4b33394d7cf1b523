"""Closing the loop over real Azurite and the simulator: the hand-off message on its queue, checked
against docs/handoff.schema.json and read by the example consumer in docs/examples; the substatus
as altinn-storage's UpdateSubstatus takes it (devtools/simulator/storage.py)."""

from __future__ import annotations

import base64
import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.simulator import ElementSpec
from tests.support.flow import cli_json, deliver

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "handoff.schema.json").read_text(encoding="utf-8"))


def consumer_module() -> Any:
    spec = importlib.util.spec_from_file_location("handoff_consumer", ROOT / "docs" / "examples" / "handoff_consumer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handoff(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], azurite: Any) -> Any:
    """A hand-off queue of this test's own (the receiver creates it on its first message)."""
    from azure.storage.queue import QueueClient

    name = f"handoff-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("ARCHIVE_HANDOFF_QUEUE", name)
    return QueueClient.from_connection_string(azurite.connection_string, name)


def messages(queue: Any) -> list[dict[str, Any]]:
    return [json.loads(base64.b64decode(m.content)) for m in queue.peek_messages(max_messages=32)]


def validate(message: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(message)


def test_one_message_per_archive_valid_and_consumable(host, sim, container, handoff, azurite, monkeypatch):
    monkeypatch.setenv("ALTINN_SUBSTATUS_LABEL", "Mottatt; ttd/big-app=Annen tekst")
    monkeypatch.setenv("ALTINN_SUBSTATUS_DESCRIPTION", "Etaten har mottatt innsendingen din.")
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(data_type="model", size=4000), ElementSpec(data_type="vedlegg", size=3 * 1024 * 1024 + 3)])
    deliver(host, sim, inst)
    deliver(host, sim, inst)  # Altinn Events delivers again: no second message
    code, report, _ = cli_json("archive", "ttd/apps-test", inst.id)
    assert code == 0, report

    (sent,) = messages(handoff)
    validate(sent)
    assert (sent["instanceId"], sent["via"], sent["elementCount"]) == (inst.id, "webhook", 2)
    assert sent["eventId"] and sent["totalBytes"] == 4000 + 3 * 1024 * 1024 + 3
    assert sim.substatus_updates == [(inst.id, "Mottatt", "Etaten har mottatt innsendingen din.")]
    assert inst.substatus == {"label": "Mottatt", "description": "Etaten har mottatt innsendingen din."}

    from azure.storage.blob import BlobServiceClient

    consumer = consumer_module()
    started: list[str] = []
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert consumer.consume_one(handoff, blobs, lambda message, manifest: started.append(message["instanceId"])) == inst.id
    assert started == [inst.id] and messages(handoff) == []  # verified, handed over, deleted


def test_the_schema_refuses_what_is_not_a_hand_off():
    from jsonschema import ValidationError

    good = {
        "version": 1, "org": "ttd", "app": "a", "instanceId": "1/" + str(uuid.uuid4()), "partyId": "1", "instanceGuid": str(uuid.uuid4()),
        "container": "altinn-data", "manifestBlob": "ttd/a/1/" + str(uuid.uuid4()) + "/manifest.json", "manifestSha256": "0" * 64,
        "archivedAt": "2026-12-02T12:00:00Z", "confirmedAt": None, "elementCount": 0, "totalBytes": 0, "hardDeleted": False,
        "eventId": None, "via": "catch-up",
    }  # fmt: skip
    validate(good)
    for broken in ({"manifestSha256": "x"}, {"via": "email"}, {"extra": 1}, {"elementCount": -1}, {"archivedAt": "yesterday"}):
        with pytest.raises(ValidationError):
            validate(good | broken)


def test_the_consumer_refuses_an_archive_that_does_not_match(host, sim, container, handoff, azurite):
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(data_type="model", size=100)])
    deliver(host, sim, inst)
    (sent,) = messages(handoff)
    from azure.storage.blob import BlobServiceClient

    consumer = consumer_module()
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    with pytest.raises(consumer.Mismatch):
        consumer.verify(blobs, sent | {"manifestSha256": "0" * 64})
    assert len(messages(handoff)) == 1


def test_substatus_refused_by_storage_does_not_undo_the_archive(host, sim, container, handoff, monkeypatch):
    """A substatus storage refuses (403: not the instance's org) is said once; archive, confirmation
    and hand-off stand."""
    monkeypatch.setenv("ALTINN_SUBSTATUS_LABEL", "Mottatt")
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(data_type="model", size=100)])
    sim.add_fault("substatus", status=403, times=5)
    deliver(host, sim, inst)
    assert [c[0] for c in sim.confirmations] == [inst.id] and len(messages(handoff)) == 1
    record = json.loads(container.get_blob_client(f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/substatus.json").download_blob().readall())
    assert record["result"] == "failed" and sim.substatus_updates == []
