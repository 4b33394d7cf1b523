"""The poison queue, filled the real way (permanent failures parked by the pipeline, exhausted
retries moved by the host, unreadable messages), listed with its reasons and replayed."""

from __future__ import annotations

import base64
import json
import time

import pytest

from devtools.localhost import LocalHost
from devtools.simulator import ElementSpec
from shared import poison
from shared.errors import TransientError
from tests.support.flow import cli, deliver

FORM = ElementSpec(size=800)


@pytest.fixture
def rt(env):
    from shared.runtime import get_runtime

    runtime = get_runtime()
    runtime.altinn.retry_sleep = lambda seconds: None  # injected 5xx are retried without waiting
    return runtime


def raw_queue(azurite, name):
    from azure.storage.queue import QueueClient

    return QueueClient.from_connection_string(azurite.connection_string, name)


def raw_messages(azurite, name):
    return [m.content for m in raw_queue(azurite, name).peek_messages(max_messages=32)]


@pytest.fixture
def parked(host, sim, rt, azurite):
    """Five poison messages: a 403 (pipeline, permanent), a 503 on /complete for longer than
    ARCHIVE_RETRY_MAX_HOURS (pipeline, retries exhausted), a message that is not ours (pipeline,
    unreadable), one that is not base64 (moved by the host without an invocation), and one the host
    moved after maxDequeueCount (a crash or timeout on every attempt: written here the way the host
    writes it, the original message unchanged)."""
    from shared.events import InstanceRef, queue_message

    denied = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=403, times=1, match=denied.instance_guid)
    deliver(host, sim, denied)
    exhausted = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("complete", status=503, times=1000, match=exhausted.instance_guid)
    deliver(host, sim, exhausted)
    events = raw_queue(azurite, "altinn-events")
    events.send_message(base64.b64encode(b'{"not": "ours"}').decode())
    events.send_message("this is not base64 {")
    moved = sim.add_instance("ttd", "apps-test", [FORM])
    body = json.dumps(queue_message(None, InstanceRef.parse(moved.org, moved.app, moved.id), via="webhook"))
    raw_queue(azurite, "altinn-events-poison").send_message(base64.b64encode(body.encode()).decode())
    assert host.wait_idle(timeout=60)
    host.stop()  # from here on nothing consumes the main queue: what a replay writes stays visible
    sim.clear_faults()
    assert len(raw_messages(azurite, "altinn-events-poison")) == 5
    return denied, exhausted, moved


def test_peek_lists_each_message_with_why_it_is_there(parked, rt):
    denied, exhausted, moved = parked
    entries, count = poison.peek(rt)
    assert count == 5
    by_instance = {e.instance: e for e in entries}
    d = by_instance[f"ttd/apps-test/{denied.id}"]
    assert d.parked_by == "pipeline" and d.status == 403 and "access denied" in d.reason and d.event_id and d.via == "webhook"
    assert d.failure_class == "permanent" and d.attempts == 0
    x = by_instance[f"ttd/apps-test/{exhausted.id}"]
    assert x.parked_by == "pipeline" and x.failure_class == "retries-exhausted" and x.status == 503 and x.attempts >= 3
    assert "transient failures for" in x.reason and "HTTP 503" in x.reason
    h = by_instance[f"ttd/apps-test/{moved.id}"]
    assert h.parked_by == "host" and h.reason == poison.HOST_REASON and h.status is None
    unreadable = [e for e in entries if e.instance is None]
    assert len(unreadable) == 2 and all(e.parked_by == "unreadable" for e in unreadable)
    assert any("instance reference" in e.reason for e in unreadable)  # the pipeline's reason, kept
    assert all(json.dumps(e.to_dict()) for e in entries)


def test_replay_one_instance_strips_the_failure_and_leaves_the_rest_visible(parked, rt, azurite, sim, env, host_json, container):
    denied, exhausted, moved = parked
    before = {poison.instance_key(poison.decode(c)): c for c in raw_messages(azurite, "altinn-events-poison")}

    report = poison.replay(rt, instances=[denied.id])
    assert [e.instance for e in report.replayed] == [f"ttd/apps-test/{denied.id}"]
    assert report.left == 2 and report.unreadable == 2 and report.delete_failed == 0

    main = raw_messages(azurite, "altinn-events")
    assert len(main) == 1
    doc = json.loads(base64.b64decode(main[0]))
    original = poison.decode(before[f"ttd/apps-test/{denied.id}"])
    assert "failure" not in doc and doc == {k: v for k, v in original.items() if k != "failure"} | {"replayed": True}  # says so (hand-off `via`)
    # The others are back on the poison queue and visible at once (not held for the lease).
    _, count = poison.peek(rt)
    assert count == 4 and len(raw_messages(azurite, "altinn-events-poison")) == 4

    # All the rest: the host-moved message goes back byte for byte; the retry state of the exhausted one
    # is stripped (its schedule starts afresh); unreadable ones stay.
    report = poison.replay(rt, instances=None)
    assert sorted(e.instance for e in report.replayed) == sorted(f"ttd/apps-test/{i.id}" for i in (exhausted, moved)) and report.unreadable == 2
    main = raw_messages(azurite, "altinn-events")
    assert before[f"ttd/apps-test/{moved.id}"] in main
    replayed = [json.loads(base64.b64decode(c)) for c in main]
    assert all("retry" not in m and "failure" not in m for m in replayed)
    assert len(raw_messages(azurite, "altinn-events-poison")) == 2

    with LocalHost(__import__("function_app").app, connection_string=azurite.connection_string, host_json=host_json) as again:
        assert again.wait_idle(timeout=60)
    assert sorted(c[0] for c in sim.confirmations) == sorted([denied.id, exhausted.id, moved.id])
    assert len(raw_messages(azurite, "altinn-events-poison")) == 2  # the unreadable ones, untouched


def test_dry_run_moves_nothing(parked, rt, azurite):
    before = sorted(raw_messages(azurite, "altinn-events-poison"))
    report = poison.replay(rt, instances=None, dry_run=True)
    assert len(report.replayed) == 3 and report.dry_run
    assert raw_messages(azurite, "altinn-events") == []
    assert sorted(raw_messages(azurite, "altinn-events-poison")) == before  # all there, all visible


def test_a_replay_that_fails_again_does_not_loop(host, sim, rt, azurite):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("instance", status=403, times=100, match=inst.instance_guid)  # the cause is not fixed
    deliver(host, sim, inst)
    assert host.wait_idle(timeout=30)
    assert len(raw_messages(azurite, "altinn-events-poison")) == 1

    def wait_for_it_to_fail_again(report):
        # After the first batch: let the archive function take the replayed message and park it again.
        deadline = time.monotonic() + 20
        while report.repeated == 0 and time.monotonic() < deadline and host.stats["archive"]["poisoned"] + host.stats["archive"]["successes"] < 2:
            time.sleep(0.02)

    report = poison.replay(rt, instances=None, progress=wait_for_it_to_fail_again)
    assert len(report.replayed) == 1 and report.repeated == 1
    assert host.wait_idle(timeout=30)
    assert len(raw_messages(azurite, "altinn-events-poison")) == 1  # parked again, once, for the next replay


def test_a_failed_write_to_the_main_queue_keeps_the_message_on_the_poison_queue(rt, azurite, env):
    # Plain JSON (not base64) under the 64 KiB limit, with a failure record: replaying it means
    # base64-encoding it, which makes it too large. It is skipped and reported, and nothing is lost.
    instance = {"org": "ttd", "app": "apps-test", "partyId": "50001", "instanceGuid": "428a4575-2c04-4400-89a3-1aaadd2579cd"}
    doc = {
        "version": 1,
        "event": None,
        "instance": instance,
        "via": "webhook",
        "queuedAt": "2025-01-01T10:00:00Z",
        "pad": "x" * 55_000,
        "failure": {"reason": "r", "status": 403},
    }
    q = raw_queue(azurite, "altinn-events-poison")
    q.send_message(json.dumps(doc))
    report = poison.replay(rt, instances=None)
    assert report.replayed == [] and len(report.skipped) == 1 and not report.ok
    assert raw_messages(azurite, "altinn-events") == []
    assert [json.loads(c)["pad"] == doc["pad"] for c in raw_messages(azurite, "altinn-events-poison")] == [True]


def test_a_storage_failure_during_a_replay_stops_it_and_loses_nothing(rt, azurite, env, monkeypatch):
    from azure.core.exceptions import ServiceRequestError
    from azure.storage.queue import QueueClient

    instance = {"org": "ttd", "app": "apps-test", "partyId": "50001", "instanceGuid": "428a4575-2c04-4400-89a3-1aaadd2579cd"}
    body = base64.b64encode(json.dumps({"version": 1, "event": None, "instance": instance, "via": "webhook"}).encode()).decode()
    raw_queue(azurite, "altinn-events-poison").send_message(body)
    real_send = QueueClient.send_message

    def failing(self, *args, **kwargs):
        if self.queue_name == "altinn-events":
            raise ServiceRequestError("connection refused")
        return real_send(self, *args, **kwargs)

    monkeypatch.setattr(QueueClient, "send_message", failing)
    with pytest.raises(TransientError, match="replay stopped"):
        poison.replay(rt, instances=None)
    monkeypatch.setattr(QueueClient, "send_message", real_send)
    assert raw_messages(azurite, "altinn-events-poison") == [body]


def test_selectors():
    guid = "428a4575-2c04-4400-89a3-1aaadd2579cd"
    assert poison.parse_selector(f"50001/{guid.upper()}") == f"50001/{guid}"
    assert poison.parse_selector(f"/ttd/apps-test/50001/{guid}/") == f"ttd/apps-test/50001/{guid}"
    for bad in ["50001", f"x/{guid}", "50001/not-a-guid", f"ttd/50001/{guid}"]:
        with pytest.raises(ValueError):
            poison.parse_selector(bad)


# -- through the CLI ------------------------------------------------------------------------


def test_cli_poison_and_replay(parked, rt, azurite):
    denied, exhausted, moved = parked
    code, out, _ = cli("poison", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["count"] == 5 and len(doc["messages"]) == 5
    assert {m["parkedBy"] for m in doc["messages"]} == {"pipeline", "host", "unreadable"}
    assert {m["failureClass"] for m in doc["messages"]} == {"permanent", "retries-exhausted", "unreadable", None}

    code, out, _ = cli("poison")
    assert code == 0 and "HTTP 403" in out and "about 5 message(s)" in out

    code, out, err = cli("replay-poison", "--json")  # neither --all nor --instance
    assert code == 2 and json.loads(out)["ok"] is False and "required" in err

    code, out, err = cli("replay-poison", "--instance", "nonsense")
    assert code == 2 and "not an instance" in err

    code, out, _ = cli("replay-poison", "--instance", f"ttd/apps-test/{exhausted.id}", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["replayed"] == 1 and raw_messages(azurite, "altinn-events") == []

    code, out, _ = cli("replay-poison", "--all", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["replayed"] == 3 and doc["unreadable"] == 2 and doc["ok"]
    assert len(raw_messages(azurite, "altinn-events")) == 3

    code, out, _ = cli("replay-poison", "--instance", denied.id)
    assert code == 0 and "would replay" not in out and "replayed 0" in out and "no poison message matched" in out
