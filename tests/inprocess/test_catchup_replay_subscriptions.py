"""Catch-up, replay and subscriptions on the in-memory stand-ins: every kind of skip, every bound,
every stop; replay's selection and its skips; subscribe's reuse, repost and wait."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import poison, subscriptions
from shared.catchup import run_catchup
from shared.config import EVENTS_QUEUE, POISON_QUEUE
from shared.pipeline import handle_message
from tests.support.fakes import FakeResponse, documents

GUIDS = [f"428a4575-2c04-4400-89a3-1aaadd25{n:04d}" for n in range(20)]


def instances(altinn: Any, n: int, app: str = "apps-test") -> list[str]:
    out = []
    for i in range(n):
        doc = altinn.add_instance(str(50001 + i), GUIDS[i], [(f"8a8a5dd2-0000-4000-8000-0000000{i:05d}", b"x" * 10, "model")], app=app)
        out.append(doc["id"])
    return out


# -- catch-up ---------------------------------------------------------------------------------------


def test_catchup_enqueues_what_is_missing_and_skips_what_is_done(rt, altinn):
    ids = instances(altinn, 5)
    altinn.add_instance("60001", GUIDS[10], [], ended=False)  # not complete: the fake's query leaves it out
    handle_message(
        json.dumps(
            {
                "version": 1,
                "event": None,
                "instance": {"org": "ttd", "app": "apps-test", "partyId": "50001", "instanceGuid": GUIDS[0]},
                "via": "webhook",
                "queuedAt": "x",
            }
        ),
        rt=rt,
    )
    altinn.instances[ids[0]]["completeConfirmations"] = []  # Altinn's list lags behind: ours says confirmed
    report = run_catchup(rt, page_size=2)
    by_app = {a.app_id: a for a in report.apps}
    assert report.ok and by_app["ttd/apps-test"].found == 5 and by_app["ttd/apps-test"].enqueued == 4
    assert by_app["ttd/apps-test"].skipped["confirmed"] == 1 and by_app["ttd/apps-test"].pages == 3 and by_app["ttd/apps-test"].complete
    assert {d["instance"]["partyId"] for d in documents(rt.stores[EVENTS_QUEUE])} == {i.split("/")[0] for i in ids[1:]}
    assert all(d["via"] == "catch-up" and d["event"] is None for d in documents(rt.stores[EVENTS_QUEUE]))


def test_a_dry_run_writes_nothing(rt, altinn):
    instances(altinn, 3)
    report = run_catchup(rt, dry_run=True)
    assert report.enqueued == 3 and report.dry_run and rt.stores[EVENTS_QUEUE].messages == []
    assert {i["state"] for i in report.instances} == {"new"}


def test_bounds_max_instances_backlog_and_time(rt, altinn, clock):
    instances(altinn, 6)
    first = run_catchup(rt, max_instances=4, page_size=3)
    assert first.enqueued == 4 and first.stopped == "max-instances"
    second = run_catchup(rt, max_instances=4)
    assert second.stopped == "queue-backlog" and second.enqueued == 0 and second.backlog == 4
    rt.stores[EVENTS_QUEUE].messages.clear()
    ticks = iter(range(100))
    third = run_catchup(rt, page_size=1, time_budget=2.5, clock=lambda: float(next(ticks)))
    assert third.stopped == "time-budget" and 1 <= third.enqueued < 6


def test_a_refused_confirmation_is_left_alone_for_the_quiet_hours(rt, altinn):
    (instance_id,) = instances(altinn, 1)
    altinn.complete_allowed = False
    body = json.dumps(
        {
            "version": 1,
            "event": None,
            "instance": {"org": "ttd", "app": "apps-test", "partyId": "50001", "instanceGuid": GUIDS[0]},
            "via": "webhook",
            "queuedAt": "x",
        }
    )
    assert handle_message(body, rt=rt).failure_class == "confirmation-refused"
    now = datetime.now(UTC)
    report = run_catchup(rt, now=lambda: now + timedelta(hours=1))
    assert report.apps[0].skipped["confirmation-refused"] == 1 and report.enqueued == 0
    later = run_catchup(rt, now=lambda: now + timedelta(hours=25))
    assert later.enqueued == 1 and later.instances[0]["state"] == "awaiting-confirmation"


def test_a_failing_query_and_a_cycle_are_errors_of_their_app(rt, altinn):
    instances(altinn, 2)
    instances(altinn, 0, app="big-app")
    altinn.script.append(lambda call: FakeResponse(500) if "appId=ttd%2Fbig-app" in call.url else None)
    report = run_catchup(rt)
    by_app = {a.app_id: a for a in report.apps}
    assert not report.ok and "HTTP 500" in by_app["ttd/big-app"].error and by_app["ttd/apps-test"].enqueued == 2
    altinn.script = [
        lambda call: (
            altinn.json({"count": 0, "instances": [], "next": f"{altinn.platform}/storage/api/v1/instances?continuationToken=same"})
            if call.path.endswith("/instances")
            else None
        )
    ]
    rt.stores[EVENTS_QUEUE].messages.clear()
    cycled = run_catchup(rt, apps=[("ttd", "apps-test")])
    assert not cycled.ok and "cycle" in cycled.apps[0].error and altinn.count("GET", r"/instances$") <= 8


# -- replay -----------------------------------------------------------------------------------------


def park(rt: Any, doc: dict[str, Any], *, raw: bool = False) -> None:
    text = json.dumps(doc)
    rt.raw_queue(POISON_QUEUE).send_message(text if raw else base64.b64encode(text.encode()).decode())


def poison_doc(guid: str, **failure: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "event": None,
        "instance": {"org": "ttd", "app": "apps-test", "partyId": "50001", "instanceGuid": guid},
        "via": "webhook",
        "queuedAt": "x",
        "retry": {"attempt": 3, "firstFailureAt": "2025-01-01T10:00:00Z", "lastReason": "r"},
        "failure": {"reason": "r", "class": "retries-exhausted", **failure},
    }


def test_replay_by_instance_all_and_dry_run(rt):
    for guid in GUIDS[:3]:
        park(rt, poison_doc(guid))
    rt.raw_queue(POISON_QUEUE).send_message("not ours at all")
    dry = poison.replay(rt, dry_run=True)
    assert len(dry.replayed) == 3 and dry.unreadable == 1 and rt.stores[EVENTS_QUEUE].messages == []
    one = poison.replay(rt, instances=[f"50001/{GUIDS[1]}"])
    assert [e.instance for e in one.replayed] == [f"ttd/apps-test/50001/{GUIDS[1]}"] and one.left == 2
    (moved,) = documents(rt.stores[EVENTS_QUEUE])
    assert "failure" not in moved and "retry" not in moved  # the schedule starts afresh
    rest = poison.replay(rt)
    assert len(rest.replayed) == 2 and rest.unreadable == 1 and len(rt.stores[POISON_QUEUE].messages) == 1


def test_replay_skips_what_cannot_go_back_and_goes_on(rt):
    park(rt, poison_doc(GUIDS[0]) | {"pad": "p" * 60_000}, raw=True)
    park(rt, poison_doc(GUIDS[1]))
    report = poison.replay(rt)
    assert len(report.skipped) == 1 and "too large" in report.skipped[0]["reason"] and len(report.replayed) == 1 and not report.ok
    assert report.to_dict()["skipped"] == report.skipped and report.to_dict()["replayed"] == 1


def test_a_poison_listing_describes_each_kind(rt):
    park(rt, poison_doc(GUIDS[0], status=503))
    rt.raw_queue(POISON_QUEUE).send_message(
        base64.b64encode(json.dumps({k: v for k, v in poison_doc(GUIDS[1]).items() if k not in ("failure", "retry")}).encode()).decode()
    )
    entries, count = poison.peek(rt)
    assert count == 2
    by_kind = {e.parked_by: e for e in entries}
    assert by_kind["pipeline"].failure_class == "retries-exhausted" and by_kind["pipeline"].status == 503
    assert by_kind["host"].reason == poison.HOST_REASON and by_kind["host"].to_dict()["parkedBy"] == "host"


# -- subscriptions ----------------------------------------------------------------------------------


def test_subscribe_creates_reuses_and_reposts(rt, altinn, monkeypatch):
    monkeypatch.setattr(subscriptions.time, "sleep", lambda s: None)
    endpoint = "https://mottak.example/api/events?code=secret"
    first = subscriptions.subscribe(rt, [("ttd", "apps-test")], endpoint, ["app.instance.process.completed"], wait=0)
    assert not first[0].existed and altinn.count("POST", "/subscriptions") == 1
    again = subscriptions.subscribe(rt, [("ttd", "apps-test")], endpoint, ["app.instance.process.completed"], wait=0)
    assert again[0].existed and again[0].reposted and altinn.count("POST", "/subscriptions") == 2  # not validated: posted again
    altinn.subscriptions[1]["validated"] = True
    third = subscriptions.subscribe(rt, [("ttd", "apps-test")], endpoint, ["app.instance.process.completed"], wait=0)
    assert third[0].existed and not third[0].reposted and altinn.count("POST", "/subscriptions") == 2
    assert "secret" not in json.dumps(third[0].to_dict()) and third[0].to_dict()["sourceFilter"] == "http://apps.localhost/ttd/apps-test"


def test_subscribe_waits_for_the_validation(rt, altinn, monkeypatch):
    polls = []

    def validate_on_the_second_poll(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            altinn.subscriptions[1]["validated"] = True

    monkeypatch.setattr(subscriptions.time, "sleep", validate_on_the_second_poll)
    (result,) = subscriptions.subscribe(
        rt, [("ttd", "apps-test")], "https://m.example/api/events?code=k", ["app.instance.process.completed"], wait=30, poll_interval=1
    )
    assert result.validated and polls[:2] == [0.1, 0.2]
