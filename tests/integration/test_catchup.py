"""Catch-up over the simulator's instance query and real Azurite: paging, what is skipped and why,
bounds, the timer function through the local host, and catch-up racing the webhook."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from devtools.simulator import ElementSpec
from shared.config import ConfigError, load_settings
from tests.support.archive import read_manifest

FORM = ElementSpec(data_type="model", content_type="application/xml", size=700)


@pytest.fixture
def rt(env):
    from shared.runtime import get_runtime

    runtime = get_runtime()
    runtime.altinn.retry_sleep = lambda seconds: None  # injected 5xx are retried without waiting
    return runtime


def queued(queues):
    events, _ = queues
    return [json.loads(m.content) for m in events.peek_messages(max_messages=32)]


def queue_depth(queues):
    return queues[0].get_queue_properties().approximate_message_count


def manifest(container, inst):
    """(manifest, its metadata with the confirmed.json marker's time as "confirmed")."""
    doc, meta = read_manifest(container, inst)
    assert doc is not None, f"no manifest for {inst.id}"
    return doc, meta


def archive_now(rt, inst):
    from shared.events import InstanceRef
    from shared.pipeline import archive_instance

    return archive_instance(rt, InstanceRef.parse(inst.org, inst.app, inst.id))


# -- the query --------------------------------------------------------------------------------


def test_query_url_asks_for_exactly_the_unconfirmed_complete_instances(rt):
    url = rt.altinn.query_url("ttd", "apps-test", size=50, continuation_token="a b+/=")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == rt.settings.platform_url
    assert parts.path == "/storage/api/v1/instances"
    assert parse_qs(parts.query) == {
        "org": ["ttd"],
        "appId": ["ttd/apps-test"],
        "process.isComplete": ["true"],
        "excludeConfirmedBy": ["ttd"],  # hard-deleted ones included: storage keeps them for us until we confirm
        "size": ["50"],
        "continuationToken": ["a b+/="],
    }


def test_pages_skips_and_enqueues_with_the_webhook_shape(rt, sim, queues, container):
    from shared.catchup import run_catchup
    from shared.events import InstanceRef, queue_message

    missed = [sim.add_instance("ttd", "apps-test", [FORM]) for _ in range(7)]
    other_app = [sim.add_instance("ttd", "big-app", [FORM]) for _ in range(2)]
    sim.add_instance("ttd", "apps-test", [FORM], confirmed_by=["ttd"])  # confirmed: the query leaves it out
    sim.add_instance("ttd", "apps-test", [FORM], confirmed_by=["ttd"])
    deleted = sim.add_instance("ttd", "apps-test", [FORM], hard_deleted=True)  # hard deleted: ours to archive and confirm
    sim.add_instance("ttd", "apps-test", [FORM], process_ended=False)  # still being filled in: left out
    sim.add_instance("ttd", "not-ours", [FORM])  # not in ALTINN_APPS: never asked for
    # Archived, but /complete failed every time: enqueued so that it gets confirmed.
    pending = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("complete", status=503, times=3, match=pending.instance_guid)
    with pytest.raises(Exception, match="503"):
        archive_now(rt, pending)
    # Archived and confirmed by us, but Altinn's list has not caught up: skipped.
    lagging = sim.add_instance("ttd", "apps-test", [FORM])
    archive_now(rt, lagging)
    sim.instances[lagging.id].confirmed_by.clear()
    sim.reset_counters()

    pages = []
    report = run_catchup(rt, page_size=3, progress=lambda r: pages.append(sum(a.pages for a in r.apps)))

    assert report.ok and report.stopped is None
    by_app = {a.app_id: a for a in report.apps}
    assert by_app["ttd/apps-test"].found == 10  # 7 missed + hard deleted + pending + lagging
    assert by_app["ttd/apps-test"].enqueued == 9
    assert by_app["ttd/apps-test"].awaiting_confirmation == 1
    assert by_app["ttd/apps-test"].skipped == {"confirmed": 1, "confirmation-refused": 0, "duplicate": 0, "invalid": 0}
    assert by_app["ttd/apps-test"].pages == 4 and by_app["ttd/apps-test"].complete
    assert by_app["ttd/big-app"].found == 2 and by_app["ttd/big-app"].enqueued == 2 and by_app["ttd/big-app"].complete
    assert sim.calls["query"] == 5 and pages == [1, 2, 3, 4, 5]  # apps-test 4 pages (3+3+3+1), big-app 1, round robin

    messages = queued(queues)
    assert sorted(m["instance"]["instanceGuid"] for m in messages) == sorted(i.instance_guid for i in [*missed, *other_app, pending, deleted])
    template = queue_message(None, InstanceRef.parse("ttd", "apps-test", missed[0].id), via="catch-up")
    for m in messages:
        assert set(m) == set(template) and m["event"] is None and m["via"] == "catch-up" and m["version"] == template["version"]
    assert {i["state"] for i in report.instances} == {"new", "awaiting-confirmation"}
    assert report.to_dict()["enqueued"] == 11 and json.dumps(report.to_dict())


def test_a_full_last_page_is_followed_by_an_empty_one(rt, sim, queues):
    """Storage gives `next` whenever a page is full (PgInstanceRepository.GetInstancesInternal), so
    the last page may be empty; that is the end, not an error."""
    from shared.catchup import run_catchup

    for _ in range(4):
        sim.add_instance("ttd", "apps-test", [FORM])
    report = run_catchup(rt, apps=[("ttd", "apps-test")], page_size=2)
    assert report.ok and report.apps[0].complete and report.apps[0].pages == 3 and report.enqueued == 4


def test_a_hard_deleted_instance_found_by_catch_up_is_archived_and_confirmed(host, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [FORM], hard_deleted=True)
    host.run_timer("catchup")
    assert host.wait_idle(timeout=60)
    doc, meta = manifest(container, inst)
    assert doc["hardDeleted"] is True and meta.get("confirmed") and [c[0] for c in sim.confirmations] == [inst.id]


def test_a_refused_confirmation_is_left_alone_for_the_quiet_hours(host, sim, container, queues, monkeypatch):
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    sim.app("ttd", "apps-test").complete_allowed = False
    host.run_timer("catchup")
    assert host.wait_idle(timeout=60)
    assert [m["failure"]["class"] for m in (json.loads(x.content) for x in queues[1].peek_messages(max_messages=32))] == ["confirmation-refused"]
    queues[1].clear_messages()
    # The next runs leave it alone: it is not re-queued (and parked again) every hour.
    for _ in range(2):
        host.run_timer("catchup")
        assert host.wait_idle(timeout=60)
    assert queue_depth(queues) == 0 and queues[1].peek_messages(max_messages=32) == []
    assert sim.calls["complete"] == 1
    from shared.catchup import run_catchup
    from shared.runtime import get_runtime

    report = run_catchup(get_runtime(), dry_run=True)
    assert report.apps[0].skipped["confirmation-refused"] == 1
    # After the quiet hours it is tried again (here: none), and, the policy fixed, confirmed.
    monkeypatch.setenv("CATCHUP_REFUSED_QUIET_HOURS", "0")
    sim.app("ttd", "apps-test").complete_allowed = True
    host.run_timer("catchup")
    assert host.wait_idle(timeout=60)
    assert [c[0] for c in sim.confirmations] == [inst.id] and manifest(container, inst)[1].get("confirmed")


def test_the_timer_function_archives_what_the_webhook_missed(host, sim, container, queues):
    instances = [sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=20_000, filename="a.pdf")]) for _ in range(5)]
    host.run_timer("catchup")
    assert host.wait_idle(timeout=60)
    assert sorted(c[0] for c in sim.confirmations) == sorted(i.id for i in instances)
    for inst in instances:
        doc, meta = manifest(container, inst)
        assert meta.get("confirmed") and doc["eventId"] is None
        assert doc["dataElements"][1]["sha256"] == sim.expected_sha256(inst.elements[1]["id"])
    # Everything is confirmed now: the next run finds nothing.
    sim.reset_counters()
    host.run_timer("catchup")
    assert host.wait_idle(timeout=30)
    assert sim.confirmations == [] and queue_depth(queues) == 0
    assert host.stats["catchup"]["successes"] == 2


def test_catchup_racing_the_webhook_archives_each_instance_once(host, sim, container, queues):
    def manifest_first(inst):
        if not container.get_blob_client(f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/manifest.json").exists():
            raise AssertionError("confirmed before the manifest was written")

    sim.on_complete = manifest_first
    instances = [sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=300_000, filename="b.bin")]) for _ in range(8)]
    timer = threading.Thread(target=host.run_timer, args=("catchup",))
    timer.start()
    for inst in instances:
        resp = requests.post(host.function_url("receive"), json=sim.cloud_event(inst), timeout=30)
        assert resp.status_code == 202
    timer.join(timeout=60)
    assert host.wait_idle(timeout=90)
    assert sim.complete_violations == []
    assert {c[0] for c in sim.confirmations} == {i.id for i in instances}
    for inst in instances:
        doc, meta = manifest(container, inst)
        assert meta.get("confirmed")
        assert [e["sha256"] for e in doc["dataElements"]] == [sim.expected_sha256(e["id"]) for e in inst.elements]
        blobs = list(container.list_blobs(name_starts_with=f"ttd/apps-test/{inst.party_id}/{inst.instance_guid}/"))
        assert sorted(b.name.rsplit("/", 1)[-1] for b in blobs) == sorted(
            [*(e["id"] for e in inst.elements), "instance.json", "manifest.json", "confirmed.json", "handoff.json"]
        )
    assert queues[1].peek_messages(max_messages=32) == []
    assert host.stats["archive"]["failures"] == 0
    assert host.stats["archive"]["invocations"] > len(instances)  # both paths delivered: it was a race


# -- bounds -----------------------------------------------------------------------------------


def test_max_instances_and_a_queue_backlog_bound_a_run(rt, sim, queues):
    from shared.catchup import run_catchup

    for _ in range(10):
        sim.add_instance("ttd", "apps-test", [FORM])
    first = run_catchup(rt, apps=[("ttd", "apps-test")], max_instances=4, page_size=3)
    assert first.enqueued == 4 and first.stopped == "max-instances" and first.ok
    assert queue_depth(queues) == 4
    # Those 4 are still waiting: a run with the same bound adds nothing to the backlog.
    second = run_catchup(rt, apps=[("ttd", "apps-test")], max_instances=4, page_size=3)
    assert second.stopped == "queue-backlog" and second.enqueued == 0 and second.backlog == 4
    assert queue_depth(queues) == 4
    # A dry run reports without writing, whatever the backlog.
    dry = run_catchup(rt, apps=[("ttd", "apps-test")], dry_run=True, max_instances=100)
    assert dry.found == 10 and dry.enqueued == 10 and dry.dry_run
    assert queue_depth(queues) == 4


def test_time_budget_stops_between_pages(rt, sim, queues):
    from shared.catchup import run_catchup

    for _ in range(9):
        sim.add_instance("ttd", "apps-test", [FORM])
    ticks = iter(range(1000))
    report = run_catchup(rt, apps=[("ttd", "apps-test")], page_size=2, time_budget=2.5, clock=lambda: float(next(ticks)))
    assert report.stopped == "time-budget"
    assert 1 <= report.apps[0].pages < 5 and not report.apps[0].complete
    assert report.enqueued == 2 * report.apps[0].pages == queue_depth(queues)


def test_a_next_link_to_another_host_is_not_followed(rt, sim, queues):
    """Only the continuation token of `next` is used; the URL is rebuilt on the configured platform."""
    from shared.catchup import run_catchup

    for _ in range(4):
        sim.add_instance("ttd", "apps-test", [FORM])
    first = rt.altinn.query_instances("ttd", "apps-test", size=2)  # a real first page and its real token
    sim.reset_counters()
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.2)
    try:
        page = {
            "count": 2,
            "instances": first.instances,
            "next": f"http://127.0.0.1:{trap.getsockname()[1]}/storage/api/v1/instances?org=ttd&continuationToken={quote(first.continuation_token)}",
        }
        sim.add_fault("query", status=200, body=json.dumps(page), times=1)
        report = run_catchup(rt, apps=[("ttd", "apps-test")], page_size=2)
        with pytest.raises(TimeoutError):
            trap.accept()  # nobody called the other host
    finally:
        trap.close()
    assert report.ok and report.found == 4 and report.enqueued == 4
    assert sim.calls["query"] == 3  # the faked first page, the real second (full), the empty third


def test_an_instance_on_two_pages_is_enqueued_once(rt, sim, queues):
    """Pages shift while instances get confirmed: the same instance may come back on the next page."""
    from shared.catchup import run_catchup

    a, b, c = (sim.add_instance("ttd", "apps-test", [FORM]) for _ in range(3))
    # Newest first: c, b, a. A page [c, b] whose token points just after c: the next page starts again at b.
    after_c = rt.altinn.query_instances("ttd", "apps-test", size=1).continuation_token
    sim.reset_counters()
    page = {
        "count": 2,
        "instances": [c.to_json(omit_nulls=True), b.to_json(omit_nulls=True)],
        "next": f"{sim.url}/storage/api/v1/instances?continuationToken={quote(after_c)}",
    }
    sim.add_fault("query", status=200, body=json.dumps(page), times=1)
    report = run_catchup(rt, apps=[("ttd", "apps-test")], page_size=2)
    assert report.found == 4 and report.enqueued == 3 and report.apps[0].skipped["duplicate"] == 1
    assert sorted(m["instance"]["instanceGuid"] for m in queued(queues)) == sorted(i.instance_guid for i in (a, b, c))


def test_a_failing_query_is_reported_and_the_timer_fails(host, sim, queues):
    from shared.catchup import run_catchup
    from shared.runtime import get_runtime

    ok_app = sim.add_instance("ttd", "big-app", [FORM])
    sim.add_fault("query", status=500, times=100, match="appId=ttd%2Fapps-test")
    rt = get_runtime()
    rt.altinn.retry_sleep = lambda seconds: None
    report = run_catchup(rt)
    assert not report.ok
    by_app = {a.app_id: a for a in report.apps}
    assert "HTTP 500" in by_app["ttd/apps-test"].error
    assert by_app["ttd/big-app"].enqueued == 1  # one app failing does not stop the others
    assert [m["instance"]["instanceGuid"] for m in queued(queues)] == [ok_app.instance_guid]
    from shared.errors import TransientError

    with pytest.raises(TransientError, match="ttd/apps-test"):
        host.run_timer("catchup")
    assert host.stats["catchup"]["failures"] == 1


# -- settings ---------------------------------------------------------------------------------

BASE = {"ALTINN_APPS": "ttd/apps-test", "MASKINPORTEN_CLIENT_ID": "client", "MASKINPORTEN_PRIVATE_KEY": "key"}


def test_catchup_settings_defaults_and_validation():
    s = load_settings(BASE)
    assert (s.catchup_schedule, s.catchup_max_instances, s.catchup_time_budget) == ("0 7 * * * *", 5000, 600)
    s = load_settings(BASE | {"CATCHUP_SCHEDULE": " 0  */15 * * * * ", "CATCHUP_MAX_INSTANCES": "10", "CATCHUP_TIME_BUDGET_SECONDS": "60"})
    assert (s.catchup_schedule, s.catchup_max_instances, s.catchup_time_budget) == ("0 */15 * * * *", 10, 60)
    for name, value in [
        ("CATCHUP_SCHEDULE", "0 9 * * *"),  # five fields: Azure Functions needs six
        ("CATCHUP_SCHEDULE", "every hour"),
        ("CATCHUP_SCHEDULE", "0 7 * * * * *"),
        ("CATCHUP_MAX_INSTANCES", "0"),
        ("CATCHUP_MAX_INSTANCES", "many"),
        ("CATCHUP_TIME_BUDGET_SECONDS", "1800"),  # not below the 30 minute function timeout
    ]:
        with pytest.raises(ConfigError) as err:
            load_settings(BASE | {name: value})
        assert err.value.setting == name
        assert len(value) < 4 or value not in str(err.value)  # the message never echoes the value


def test_the_timer_schedule_resolves_from_settings(env, sim, azurite, monkeypatch, host_json):
    import function_app
    from devtools.localhost import LocalHost
    from shared.config import CATCHUP_SCHEDULE, DEFAULT_CATCHUP_SCHEDULE, load_settings

    example = json.loads((Path(function_app.__file__).parent / "local.settings.json.example").read_text())
    assert example["Values"][CATCHUP_SCHEDULE] == DEFAULT_CATCHUP_SCHEDULE  # `func start` needs it
    monkeypatch.delenv(CATCHUP_SCHEDULE, raising=False)
    with pytest.raises(ValueError, match="CATCHUP_SCHEDULE"):
        LocalHost(function_app.app, connection_string=azurite.connection_string, host_json=host_json, run_timers=True).start()
    assert load_settings().catchup_schedule == DEFAULT_CATCHUP_SCHEDULE
    monkeypatch.setenv(CATCHUP_SCHEDULE, "*/1 * * * * *")  # every second: the host runs it on its own
    inst = sim.add_instance("ttd", "apps-test", [FORM])
    with LocalHost(function_app.app, connection_string=azurite.connection_string, host_json=host_json, run_timers=True) as runner:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sim.confirmations:
            time.sleep(0.05)
        assert runner.stats["catchup"]["successes"] >= 1
    assert [c[0] for c in sim.confirmations] == [inst.id]
