"""Each fault on each Altinn and Maskinporten call, one test each, through the real function app in
the local host (real queue redelivery and poison semantics), the simulator over sockets and Azurite.

For every transient fault the outcome must be the same: the instance ends archived whole (sha256 of
every element as Altinn has it), confirmed, never confirmed before its manifest existed, nothing in
the poison queue; and the fault must really have happened as often as injected. Permanent faults
(404, 403) park the message at once with its reason, after one invocation, with nothing confirmed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from devtools.simulator import ElementSpec
from tests.support.archive import (
    MIB,
    archive_problems,
    blob_committed,
    manifest_name,
    peek_all,
    poison_report,
    queue_client,
    read_manifest,
    replay_poison,
    wait_for,
)
from tests.support.flow import deliver

FORM = ElementSpec(data_type="model", content_type="application/xml", size=3000)
# Big enough to be streamed as blocks (1 MiB in this suite), not sent in one Put Blob.
ATTACHMENT = ElementSpec(data_type="vedlegg", content_type="application/pdf", size=6 * MIB + 12345, filename="vedlegg æøå.pdf")


def faulted(sim: Any, endpoint: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["endpoint"] == endpoint and r["fault"]]


def poison_of(azurite: Any) -> list[dict[str, Any]]:
    return peek_all(queue_client(azurite.connection_string, "altinn-events-poison"))


def assert_archived(host: Any, sim: Any, container: Any, azurite: Any, inst: Any) -> None:
    assert archive_problems(container, sim, inst) == []
    assert inst.id in [c[0] for c in sim.confirmations]
    assert sim.complete_violations == []
    assert poison_of(azurite) == []


# -- the generic faults, on every call --------------------------------------------------------

# How many requests in a row a call survives in process before the attempt fails and the app
# schedules the next one: token and exchange are not retried in process, the other Altinn calls
# three times. Injecting the fault that many times makes the first attempt fail (and so proves the
# retry schedule's path) while the retry window (rel_env) has room to spare.
IN_PROCESS_ATTEMPTS = {"token": 1, "exchange": 1, "instance": 3, "data": 3, "complete": 3}
MID_BODY = {"token": 20, "exchange": 20, "instance": 20, "data": MIB + 12345, "complete": 20}

GENERIC_FAULTS = {
    "500": {"status": 500},
    "502": {"status": 502},
    "503": {"status": 503},
    "429-retry-after": {"status": 429, "retry_after": 1},
    "read-timeout": {"delay": 1.5},
    "reset-mid-body": {"reset_after": None},
    "short-body": {"truncate_at": None},
}


def fault_cases() -> list[Any]:
    cases = []
    for endpoint in IN_PROCESS_ATTEMPTS:
        for name in GENERIC_FAULTS:
            cases.append(pytest.param(endpoint, name, id=f"{endpoint}-{name}"))
    return cases


@pytest.mark.parametrize(("endpoint", "fault"), fault_cases())
def test_transient_fault_is_survived(rel_host, guarded, container, azurite, short_timeouts, endpoint, fault):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    spec = dict(GENERIC_FAULTS[fault])
    for key in ("reset_after", "truncate_at"):
        if key in spec:
            spec[key] = MID_BODY[endpoint]
    body_fault = "reset_after" in spec or "truncate_at" in spec
    # A broken body of a data download fails the attempt (the bytes are not all there); any other
    # fault is first retried in process.
    times = 1 if (endpoint == "data" and body_fault) else IN_PROCESS_ATTEMPTS[endpoint]
    # /complete's answer is not used beyond its status: a 200 whose body breaks is a confirmation.
    confirmed_anyway = endpoint == "complete" and body_fault
    times = 1 if confirmed_anyway else times
    times += 1 if endpoint in ("token", "exchange") else 0  # two failed deliveries for these
    match = inst.elements[1]["id"] if endpoint == "data" else None
    sim.add_fault(endpoint, times=times, match=match, **spec)

    deliver(rel_host, sim, inst)

    assert_archived(rel_host, sim, container, azurite, inst)
    # A delayed request is logged by the simulator when its delay ends, after the client gave up.
    wait_for(lambda: len(faulted(sim, endpoint)) >= times, timeout=10, what="the simulator's log of the faults")
    hits = faulted(sim, endpoint)
    assert len(hits) == times, f"the fault was injected {len(hits)} times, not {times}"
    stats = rel_host.stats["archive"]
    # The app deferred the failed attempt itself (no failure the host saw), and the next one finished.
    assert stats["invocations"] >= (1 if confirmed_anyway else 2), "the first attempt should have failed and been scheduled again"
    assert stats["failures"] == 0 and stats["poisoned"] == 0 and poison_of(azurite) == []
    if fault == "429-retry-after" and endpoint in ("instance", "data", "complete"):
        # Retry-After (1 s) is honoured between in-process attempts.
        gaps = [b["time"] - a["time"] for a, b in zip(hits, hits[1:], strict=False)]
        assert gaps and min(gaps) >= 0.9, gaps


def test_a_long_retry_after_is_left_to_the_queue(rel_host, guarded, container, azurite):
    """429 with Retry-After: 120 does not hold a worker for two minutes: the attempt ends at once
    (transient) and the retry schedule waits at least that long (here: bounded by the short retry
    window of the tests, so the next attempt comes when the window ends)."""
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=429, retry_after=120, times=1)
    started = time.monotonic()
    deliver(rel_host, sim, inst)
    assert time.monotonic() - started < 30
    assert_archived(rel_host, sim, container, azurite, inst)
    assert rel_host.stats["archive"]["invocations"] == 2 and len(faulted(sim, "instance")) == 1


# -- Maskinporten ---------------------------------------------------------------------------

INVALID_GRANT = '{"error":"invalid_grant","error_description":"Invalid assertion. Client authentication failed."}'


def test_invalid_grant_is_retried_on_the_schedule(rel_host, guarded, container, azurite, caplog):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    sim.add_fault("token", status=400, body=INVALID_GRANT, times=2)
    with caplog.at_level("WARNING", logger="altinn_mottak"):
        deliver(rel_host, sim, inst)
    assert_archived(rel_host, sim, container, azurite, inst)
    assert len(faulted(sim, "token")) == 2 and sim.grants == 1
    assert rel_host.stats["archive"]["invocations"] == 3 and rel_host.stats["archive"]["failures"] == 0
    deferred = [r for r in caplog.records if getattr(r, "outcome", None) == "deferred"]
    assert len(deferred) == 2 and all("invalid_grant" in r.getMessage() for r in deferred)  # the reason, for the operator


def test_invalid_grant_for_ever_parks_the_message_when_the_retry_window_ends(rel_host, guarded, container, azurite):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("token", status=400, body=INVALID_GRANT, probability=1.0, seed=1)
    deliver(rel_host, sim, inst)
    stats = rel_host.stats["archive"]
    assert stats["invocations"] >= 3 and stats["poisoned"] == 0  # parked by the app, not moved by the host
    parked = poison_of(azurite)
    assert [p["instance"]["instanceGuid"] for p in parked] == [inst.instance_guid]
    assert sim.calls["instance"] == 0 and sim.calls["data"] == 0 and sim.confirmations == []
    assert not blob_committed(container, manifest_name(inst))
    # What the operator sees: parked by the pipeline when the retries ran out, with the last reason.
    seen = poison_report()
    assert seen["count"] == 1 and seen["messages"][0]["parkedBy"] == "pipeline"
    assert seen["messages"][0]["failureClass"] == "retries-exhausted" and "invalid_grant" in seen["messages"][0]["reason"]
    assert seen["messages"][0]["instance"].endswith(inst.id)
    # The cause is fixed (key registered again, say): the operator replays, and it is archived.
    sim.clear_faults()
    assert replay_poison()["replayed"] == 1
    assert rel_host.wait_idle(timeout=60)
    assert_archived(rel_host, sim, container, azurite, inst)


# -- Altinn token exchange and token expiry -------------------------------------------------------


def test_exchange_401_gets_a_new_maskinporten_token_in_process(rel_host, guarded, container, azurite):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    sim.add_fault("exchange", status=401, times=1)
    deliver(rel_host, sim, inst)
    assert_archived(rel_host, sim, container, azurite, inst)
    assert sim.grants == 2 and sim.exchanges == 1  # the second Maskinporten token was exchanged
    assert rel_host.stats["archive"]["invocations"] == 1


def test_exchange_401_twice_is_retried_on_the_schedule(rel_host, guarded, container, azurite):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("exchange", status=401, times=2)
    deliver(rel_host, sim, inst)
    assert_archived(rel_host, sim, container, azurite, inst)
    assert rel_host.stats["archive"]["failures"] == 0 and rel_host.stats["archive"]["invocations"] == 2


@pytest.mark.parametrize("endpoint", ["instance", "data", "complete"])
def test_401_on_an_altinn_call_refreshes_the_token_once(rel_host, guarded, container, azurite, endpoint):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    sim.add_fault(endpoint, status=401, times=1, match=inst.elements[1]["id"] if endpoint == "data" else None)
    deliver(rel_host, sim, inst)
    assert_archived(rel_host, sim, container, azurite, inst)
    assert sim.exchanges == 2 and sim.grants == 1
    assert rel_host.stats["archive"]["invocations"] == 1  # recovered in process


def test_altinn_token_expires_in_the_middle_of_an_instance(rel_host, guarded, container, azurite, monkeypatch):
    """The token is revoked while the attachment's request is in flight: 401, refresh, go on."""
    sim = guarded
    monkeypatch.setenv("ARCHIVE_PARALLEL_DOWNLOADS", "1")  # form first, then the attachment
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    sim.add_fault("data", delay=0.8, times=1, match=inst.elements[1]["id"])

    def revoke_when_the_attachment_is_requested() -> None:
        wait_for(lambda: sim.calls["data"] >= 2, timeout=30, what="the attachment request")
        sim.expire_altinn_tokens()

    revoker = threading.Thread(target=revoke_when_the_attachment_is_requested, daemon=True)
    revoker.start()
    deliver(rel_host, sim, inst)
    revoker.join(5)
    assert_archived(rel_host, sim, container, azurite, inst)
    data_401 = [r for r in sim.requests if r["endpoint"] == "data" and r["status"] == 401]
    assert len(data_401) == 1, "the attachment request should have met the revoked token"
    assert sim.exchanges == 2 and sim.grants == 1
    assert rel_host.stats["archive"]["invocations"] == 1


# -- permanent failures -----------------------------------------------------------------------------


def assert_parked_at_once(host: Any, sim: Any, azurite: Any, inst: Any, status: int, *, attempts: int = 1) -> dict[str, Any]:
    parked = poison_of(azurite)
    assert len(parked) == 1, parked
    failure = parked[0]["failure"]
    assert parked[0]["instance"]["instanceGuid"] == inst.instance_guid
    assert failure["permanent"] is True and failure["status"] == status and failure["reason"]
    stats = host.stats["archive"]
    assert stats["invocations"] == attempts and stats["failures"] == 0, "a permanent failure must not be retried"
    assert inst.id not in [c[0] for c in sim.confirmations]
    return parked[0]


def test_instance_404_in_a_row_is_permanent(rel_host, guarded, container, azurite):
    from shared.pipeline import NOT_FOUND_ATTEMPTS

    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.remove_instance(inst)
    deliver(rel_host, sim, inst)
    parked = assert_parked_at_once(rel_host, sim, azurite, inst, 404, attempts=NOT_FOUND_ATTEMPTS)
    assert "gone" in parked["failure"]["reason"]
    assert not blob_committed(container, manifest_name(inst))


def test_instance_403_is_permanent(rel_host, guarded, container, azurite):
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=403, times=10)
    deliver(rel_host, sim, inst)
    parked = assert_parked_at_once(rel_host, sim, azurite, inst, 403)
    assert "denied" in parked["failure"]["reason"]
    assert sim.calls["data"] == 0
    assert not blob_committed(container, manifest_name(inst))


def test_data_element_404_in_a_row_is_permanent_and_no_manifest_is_written(rel_host, guarded, container, azurite):
    from shared.pipeline import NOT_FOUND_ATTEMPTS

    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    sim.add_fault("data", status=404, times=10, match=inst.elements[1]["id"])
    deliver(rel_host, sim, inst)
    assert_parked_at_once(rel_host, sim, azurite, inst, 404, attempts=NOT_FOUND_ATTEMPTS)
    assert not blob_committed(container, manifest_name(inst))


def test_complete_403_parks_a_whole_archive_and_a_replay_only_confirms(rel_host, guarded, container, azurite):
    """The archive is written, Altinn refuses the confirmation: parked, archive kept, not marked
    confirmed. After the cause is fixed the operator replays: confirmed, nothing downloaded again."""
    sim = guarded
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    sim.add_fault("complete", status=403, times=10)
    deliver(rel_host, sim, inst)
    assert_parked_at_once(rel_host, sim, azurite, inst, 403)
    assert archive_problems(container, sim, inst, require_confirmed=False) == []
    assert not read_manifest(container, inst)[1].get("confirmed")

    sim.clear_faults()
    calls = dict(sim.calls)
    assert replay_poison(instance=inst.id)["replayed"] == 1
    assert rel_host.wait_idle(timeout=60)
    assert_archived(rel_host, sim, container, azurite, inst)
    assert sim.calls["data"] == calls["data"] and sim.calls["instance"] == calls.get("instance", 0)


def test_replay_by_instance_leaves_the_others_parked(rel_host, guarded, container, azurite):
    sim = guarded
    a = sim.add_instance("ttd", "apps-test", [FORM])
    b = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=403, times=2)
    deliver(rel_host, sim, a)
    deliver(rel_host, sim, b)
    assert sorted(p["instance"]["instanceGuid"] for p in poison_of(azurite)) == sorted([a.instance_guid, b.instance_guid])
    seen = poison_report()["messages"]
    assert {m["parkedBy"] for m in seen} == {"pipeline"} and {m["status"] for m in seen} == {403}
    assert all("denied" in m["reason"] for m in seen)
    assert replay_poison(instance=b.id)["replayed"] == 1
    assert rel_host.wait_idle(timeout=60)
    assert archive_problems(container, sim, b) == []
    assert [p["instance"]["instanceGuid"] for p in poison_of(azurite)] == [a.instance_guid]
