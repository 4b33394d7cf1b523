"""The archive function end to end: webhook -> queue -> archive -> manifest -> /complete, over
real sockets to the simulator and real Azurite, run by the local host with the host's retry and
poison semantics."""

from __future__ import annotations

import hashlib
import json
import logging
from urllib.parse import unquote

import pytest
import requests

from devtools.simulator import ElementSpec
from tests.support.archive import confirmed_at
from tests.support.flow import deliver


def manifest_of(container, inst):
    """(manifest, its properties with the confirmed.json marker's time as metadata["confirmed"])."""
    blob = container.get_blob_client(f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/manifest.json")
    props = blob.get_blob_properties()
    props.metadata = dict(props.metadata or {}, **({"confirmed": at} if (at := confirmed_at(container, inst)) else {}))
    return json.loads(blob.download_blob().readall()), props


def blob_exists(container, name):
    return container.get_blob_client(name).exists()


def poison(queues):
    return [json.loads(m.content) for m in queues[1].peek_messages(max_messages=32)]


@pytest.fixture
def manifest_guard(sim, container):
    """The simulator checks, at the moment /complete arrives, that the manifest is already stored."""

    def check(inst):
        name = f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/manifest.json"
        if not container.get_blob_client(name).exists():
            raise AssertionError(f"/complete for {inst.id} before its manifest was written")

    sim.on_complete = check
    return sim


FORM = ElementSpec(data_type="model", content_type="application/xml", size=5000)


def test_full_flow_form_and_attachments(host, sim, container, queues, manifest_guard):
    inst = sim.add_instance(
        "ttd",
        "apps-test",
        [
            FORM,
            ElementSpec(data_type="vedlegg", content_type="application/pdf", size=3 * 1024 * 1024 + 17, filename="søknad ærlig åpen.pdf"),
            ElementSpec(data_type="vedlegg", content_type="image/png", size=0, filename="empty.png"),
            ElementSpec(data_type="vedlegg", content_type="text/plain", size=9 * 1024 * 1024 + 5, filename="plain.txt"),
        ],
    )
    deliver(host, sim, inst)

    manifest, props = manifest_of(container, inst)
    assert props.metadata.get("confirmed")
    assert [c[0] for c in sim.confirmations] == [inst.id]
    assert sim.complete_violations == []
    assert manifest["org"] == "ttd" and manifest["app"] == "apps-test"
    assert manifest["partyId"] == inst.party_id and manifest["instanceGuid"] == inst.instance_guid
    assert manifest["eventId"] and manifest["archivedAt"]
    assert len(manifest["dataElements"]) == 4
    prefix = f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/"
    for element, entry in zip(inst.elements, manifest["dataElements"], strict=True):
        assert entry["dataElementId"] == element["id"]
        assert entry["dataType"] == element["dataType"]
        assert entry["contentType"] == element["contentType"]
        assert entry["filename"] == element.get("filename")
        assert entry["size"] == element["size"]
        assert entry["blob"] == f"{prefix}data/{element['id']}"
        assert entry["sha256"] == sim.expected_sha256(element["id"])
        blob = container.get_blob_client(entry["blob"])
        data = blob.download_blob().readall()
        assert len(data) == element["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        bprops = blob.get_blob_properties()
        assert bprops.content_settings.content_type == element["contentType"]
        assert bprops.metadata["sha256"] == entry["sha256"]
        assert bprops.metadata["dataType"] == element["dataType"]
        assert bprops.metadata["dataElementId"] == element["id"]
        if element.get("filename"):
            disposition = bprops.content_settings.content_disposition
            assert "filename*=UTF-8''" in disposition
            assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == element["filename"]
    instance_doc = json.loads(container.get_blob_client(prefix + "instance.json").download_blob().readall())
    assert instance_doc["id"] == inst.id
    assert poison(queues) == []


def test_grant_with_kid_is_verified_by_the_simulator(host, sim, container):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    deliver(host, sim, inst)
    assert sim.grants == 1 and sim.exchanges == 1
    assert sim.rejected_grants == []
    assert [c[0] for c in sim.confirmations] == [inst.id]


def test_grant_with_x5c_certificate(host, sim, container, rsa_key, monkeypatch):
    sim.register_client("cert-client", certificate_pem=rsa_key["cert_pem"], org="ttd")
    monkeypatch.setenv("MASKINPORTEN_CLIENT_ID", "cert-client")
    monkeypatch.delenv("MASKINPORTEN_KID")
    monkeypatch.setenv("MASKINPORTEN_CERTIFICATE", rsa_key["cert_pem"])
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    deliver(host, sim, inst)
    assert sim.grants == 1 and sim.rejected_grants == []
    assert [c[0] for c in sim.confirmations] == [inst.id]


def test_wrong_key_is_rejected_and_nothing_is_confirmed(host, sim, container, queues, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", pem)
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    deliver(host, sim, inst)
    assert sim.grants == 0 and len(sim.rejected_grants) >= 2
    assert sim.confirmations == []
    # Retried on the app's schedule until ARCHIVE_RETRY_MAX_HOURS, then parked by the app: nothing lost.
    parked = poison(queues)
    assert [p["instance"]["instanceGuid"] for p in parked] == [inst.instance_guid]
    assert parked[0]["failure"]["class"] == "retries-exhausted" and "invalid_grant" in parked[0]["failure"]["reason"]
    assert parked[0]["failure"]["attempts"] >= 2 and "retry" in parked[0]


def test_one_grant_and_one_exchange_for_50_instances(host, sim, container, queues):
    instances = [sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=2000, filename="a.txt")]) for _ in range(50)]
    for inst in instances:
        deliver(host, sim, inst, wait=False)
    assert host.wait_idle(timeout=120)
    assert sorted(c[0] for c in sim.confirmations) == sorted(i.id for i in instances)
    assert sim.grants == 1
    assert sim.exchanges == 1


def test_expired_altinn_token_is_refreshed_once(host, sim, container):
    first = sim.add_instance("ttd", "apps-test", [FORM])
    deliver(host, sim, first)
    sim.expire_altinn_tokens()
    second = sim.add_instance("ttd", "apps-test", [FORM])
    deliver(host, sim, second)
    assert [c[0] for c in sim.confirmations] == [first.id, second.id]
    assert sim.exchanges == 2
    assert sim.grants == 1  # the Maskinporten token was still good


def test_duplicate_event_downloads_nothing_again(host, sim, container):
    inst = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=100_000, filename="x.bin")])
    deliver(host, sim, inst)
    calls = dict(sim.calls)
    deliver(host, sim, inst)
    assert sim.calls["data"] == calls["data"]
    assert sim.calls["instance"] == calls["instance"]
    assert sim.calls["complete"] == calls["complete"]


def test_archived_but_not_confirmed_is_only_confirmed(host, sim, container, queues, manifest_guard):
    inst = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=50_000, filename="x.bin")])
    sim.add_fault("complete", status=503, times=100)
    deliver(host, sim, inst)
    # Every attempt failed at /complete: the archive is whole but not confirmed, and parked.
    manifest, props = manifest_of(container, inst)
    assert not props.metadata.get("confirmed")
    assert sim.confirmations == []
    assert [p["failure"]["class"] for p in poison(queues)] == ["retries-exhausted"]
    sim.clear_faults()
    data_calls, instance_calls = sim.calls["data"], sim.calls["instance"]
    deliver(host, sim, inst)
    assert [c[0] for c in sim.confirmations] == [inst.id]
    assert sim.calls["data"] == data_calls and sim.calls["instance"] == instance_calls
    assert manifest_of(container, inst)[1].metadata.get("confirmed")


def test_truncated_download_is_retried_and_never_confirmed_early(host, sim, container, queues, manifest_guard):
    big = ElementSpec(data_type="vedlegg", size=6 * 1024 * 1024, filename="big.bin")
    inst = sim.add_instance("ttd", "apps-test", [FORM, big])
    sim.add_fault("data", truncate_at=1024 * 1024, times=1, match=inst.elements[1]["id"])
    deliver(host, sim, inst)
    stats = host.stats
    assert [c[0] for c in sim.confirmations] == [inst.id]
    assert sim.complete_violations == []
    manifest, _ = manifest_of(container, inst)
    assert manifest["dataElements"][1]["sha256"] == sim.expected_sha256(inst.elements[1]["id"])
    assert poison(queues) == []
    assert stats["archive"]["failures"] == 0  # the app deferred the failed attempt itself ...
    assert sim.calls["instance"] == 2  # ... and the next attempt, scheduled on the queue, finished it


def test_missing_instance_is_parked_after_404_in_a_row(host, sim, container, queues):
    """Storage answers 404 for any internal error on the instance GET (InstancesController.Get's
    catch), so one 404 is weak evidence: parked as gone after NOT_FOUND_ATTEMPTS in a row."""
    from shared.pipeline import NOT_FOUND_ATTEMPTS

    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.remove_instance(inst)
    deliver(host, sim, inst)
    parked = poison(queues)
    assert len(parked) == 1
    assert parked[0]["failure"]["status"] == 404 and parked[0]["failure"]["permanent"] is True
    assert "404" in parked[0]["failure"]["reason"] and "gone" in parked[0]["failure"]["reason"]
    assert host.stats["archive"]["invocations"] == NOT_FOUND_ATTEMPTS
    assert sim.confirmations == []


def test_a_404_that_passes_is_archived(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=404, times=2)  # storage's 404 for a passing internal error
    deliver(host, sim, inst)
    assert [c[0] for c in sim.confirmations] == [inst.id] and poison(queues) == []


def test_access_denied_is_permanent(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=403, times=10)
    deliver(host, sim, inst)
    parked = poison(queues)
    assert len(parked) == 1 and parked[0]["failure"]["status"] == 403
    assert host.stats["archive"]["invocations"] == 1


def test_pending_scan_is_retried_until_clean(host, sim, container, queues, monkeypatch):
    monkeypatch.setenv("ARCHIVE_RETRY_MAX_HOURS", "1")  # a scan may stay Pending for long: the schedule waits
    inst = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=1000, filename="scan.pdf", file_scan_result="Pending")])
    deliver(host, sim, inst, wait=False)
    # Let it be deferred a few times while pending.
    import time

    deadline = time.time() + 20
    while sim.calls["instance"] < 4 and time.time() < deadline:
        time.sleep(0.05)
    assert sim.calls["instance"] >= 4 and host.stats["archive"]["failures"] == 0
    assert sim.calls["data"] == 0  # nothing is downloaded while a scan is pending
    assert poison(queues) == []
    sim.set_scan_result(inst, inst.elements[1]["id"], "Clean")
    assert host.wait_idle(timeout=60)
    assert [c[0] for c in sim.confirmations] == [inst.id]


def test_infected_file_is_archived_and_flagged(host, sim, container, caplog):
    inst = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=1000, filename="virus.exe", file_scan_result="Infected")])
    with caplog.at_level(logging.WARNING):
        deliver(host, sim, inst)
    manifest, _ = manifest_of(container, inst)
    flagged = manifest["dataElements"][1]
    assert flagged["infected"] is True and flagged["fileScanResult"] == "Infected"
    assert manifest["infected"] == [flagged["dataElementId"]]
    assert manifest["dataElements"][0]["infected"] is False
    meta = container.get_blob_client(flagged["blob"]).get_blob_properties().metadata
    assert meta["infected"] == "true"
    assert any("infected" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert [c[0] for c in sim.confirmations] == [inst.id]


def test_size_mismatch_is_transient(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    inst.elements[0]["size"] = 4999  # the instance claims a size the download does not have
    deliver(host, sim, inst)
    assert sim.confirmations == []
    assert sim.calls["instance"] >= 3 and sim.calls["data"] >= 3  # retried on the app's schedule ...
    parked = poison(queues)  # ... then parked, with the last reason
    assert len(parked) == 1 and parked[0]["failure"]["class"] == "retries-exhausted"
    assert "Content-Length is 5000, the instance says 4999; not read" in parked[0]["failure"]["reason"]
    assert not blob_exists(container, f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/manifest.json")


def test_process_not_ended_is_permanent_and_nothing_is_archived(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM], process_ended=False)
    deliver(host, sim, inst)
    parked = poison(queues)
    assert len(parked) == 1 and "not ended" in parked[0]["failure"]["reason"]
    assert sim.confirmations == [] and sim.calls["data"] == 0
    assert not blob_exists(container, f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/manifest.json")


def test_event_for_an_app_removed_from_the_allow_list_is_parked(host, sim, container, queues, monkeypatch):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    resp = requests.post(host.function_url("receive"), json=sim.cloud_event(inst), timeout=30)
    assert resp.status_code == 202
    monkeypatch.setenv("ALTINN_APPS", "ttd/big-app")  # the app was dropped between queueing and archiving
    assert host.wait_idle(timeout=60)
    parked = poison(queues)
    assert len(parked) == 1 and "ALTINN_APPS" in parked[0]["failure"]["reason"]
    assert sim.calls["instance"] == 0  # no token, no call to Altinn for an app we do not serve


# -- Altinn's real behaviour: storage, not the app API ---------------------------------------------


def test_form_data_is_archived_as_stored_although_the_app_api_reserializes_it(host, sim, container, queues):
    """A data type with appLogic.classRef is a form model: app-lib's data GET deserializes and
    re-serializes it (JSON for */*), so only storage has the bytes the submitter's app stored."""
    xml = b'<?xml version="1.0" encoding="utf-8"?>\n<Skjema xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><Navn>\xc3\x85se</Navn></Skjema>\n'
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(data_type="model", content_type="application/xml", content=xml)])
    assert sim.app("ttd", "apps-test").is_form("model")
    element_id = inst.elements[0]["id"]
    via_app = requests.get(inst.app_data_url(element_id), headers={"Authorization": f"Bearer {_token()}"}, timeout=10)
    assert via_app.status_code == 200 and via_app.content != xml  # what a client of the app API would have got
    sim.reset_counters()
    deliver(host, sim, inst)
    prefix = f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/"
    assert container.get_blob_client(f"{prefix}data/{element_id}").download_blob().readall() == xml
    assert [c[0] for c in sim.confirmations] == [inst.id]
    assert sim.calls["app-instance"] == sim.calls["app-data"] == sim.calls["app-complete"] == 0
    stored = json.loads(container.get_blob_client(prefix + "instance.json").download_blob().readall())
    assert "party" not in stored["instanceOwner"]  # storage's document, not the app DTO with the submitter's name
    assert stored["selfLinks"]["platform"] == inst.platform_url


def _token():
    from shared.runtime import get_runtime

    return get_runtime().altinn.token()


def test_an_app_that_is_no_longer_deployed_is_still_archived(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.app("ttd", "apps-test").deployed = False  # the app host answers 404 for it; storage keeps the instance
    deliver(host, sim, inst)
    assert [c[0] for c in sim.confirmations] == [inst.id] and poison(queues) == []


def test_a_hard_deleted_instance_is_archived_confirmed_and_marked(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=3000, filename="a.pdf")], hard_deleted=True)
    deliver(host, sim, inst)
    manifest, props = manifest_of(container, inst)
    assert manifest["hardDeleted"] is True and props.metadata.get("confirmed")
    assert [c[0] for c in sim.confirmations] == [inst.id] and poison(queues) == []


def test_a_refused_confirmation_is_recorded_and_parked_once(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.app("ttd", "apps-test").complete_allowed = False  # the app's policy does not grant complete to the org
    deliver(host, sim, inst)
    manifest, props = manifest_of(container, inst)
    assert manifest and not props.metadata.get("confirmed")
    parked = poison(queues)
    assert len(parked) == 1 and parked[0]["failure"]["class"] == "confirmation-refused" and parked[0]["failure"]["status"] == 403
    assert host.stats["archive"]["invocations"] == 1
    prefix = f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/confirmation-refused/"
    records = list(container.list_blobs(name_starts_with=prefix))
    assert len(records) == 1
    record = json.loads(container.get_blob_client(records[0].name).download_blob().readall())
    assert record["status"] == 403 and "policy" in record["reason"] and record["refusedAt"]
    # Fixed in the app: the next delivery only confirms.
    sim.app("ttd", "apps-test").complete_allowed = True
    data_calls = sim.calls["data"]
    deliver(host, sim, inst)
    assert [c[0] for c in sim.confirmations] == [inst.id] and sim.calls["data"] == data_calls


def test_a_data_type_removed_from_the_app_is_parked_with_storages_reason(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="gammel-vedlegg", size=100, filename="x.pdf")])
    app = sim.app("ttd", "apps-test")
    app.data_types = [t for t in app.data_types if t["id"] != "gammel-vedlegg"]
    deliver(host, sim, inst)
    # Storage's data GET checks the element's type against the app's metadata too (DataController.Get
    # -> GetDataTypeAsync: 400 "Requested element type is not declared in application metadata").
    parked = poison(queues)
    assert len(parked) == 1 and parked[0]["failure"]["status"] == 400 and sim.confirmations == []


def test_a_stale_instance_document_from_a_stopped_attempt_is_kept_and_the_manifest_names_this_attempts(host, sim, container, queues):
    """An attempt that stopped after instance.json but before its manifest left the instance as it
    was then; the instance changed since (hard deleted). Nothing is overwritten: this attempt's view
    goes beside it, and the manifest names the one it was built from."""
    from shared.archive import ArchiveState
    from shared.events import InstanceRef
    from shared.runtime import get_runtime

    inst = sim.add_instance("ttd", "apps-test", [FORM])
    ref = InstanceRef.parse(inst.org, inst.app, inst.id)
    rt = get_runtime()
    rt.archive.ensure_container()
    stale = {"id": inst.id, "note": "as an earlier attempt saw it"}
    assert rt.archive.write_instance(ref, stale, ArchiveState())[0] == ref.prefix + "instance.json"
    inst.hard_deleted = True
    deliver(host, sim, inst)
    manifest, _ = manifest_of(container, inst)
    assert manifest["instanceBlob"].startswith(ref.prefix + "instance-") and manifest["hardDeleted"] is True
    body = container.get_blob_client(manifest["instanceBlob"]).download_blob().readall()
    assert hashlib.sha256(body).hexdigest() == manifest["instanceSha256"] and json.loads(body)["status"]["isHardDeleted"] is True
    assert json.loads(container.get_blob_client(ref.prefix + "instance.json").download_blob().readall()) == stale  # untouched
