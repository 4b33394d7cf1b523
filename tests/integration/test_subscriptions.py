"""Altinn Events subscriptions against the simulator: create, Altinn's validation push reaching the
local webhook, delivery through the subscription, listing, deleting, and the function key kept out
of everything we print or log."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from devtools.simulator import ElementSpec
from shared import subscriptions
from shared.errors import PermanentError


@pytest.fixture
def rt(env):
    from shared.runtime import get_runtime

    return get_runtime()


def test_subscribe_is_validated_by_the_push_to_our_webhook_and_delivers(host, sim, rt, queues, container, caplog):
    endpoint = host.function_url("receive")
    caplog.set_level(logging.DEBUG)
    results = subscriptions.subscribe(rt, [("ttd", "apps-test")], endpoint, ["app.instance.process.completed"], wait=10, poll_interval=0.05)

    assert len(results) == 1
    r = results[0]
    assert r.validated and not r.existed and r.app == "ttd/apps-test"
    stored = sim.subscriptions[r.subscription.id]
    assert stored["endPoint"] == endpoint
    assert stored["sourceFilter"] == f"{sim.apps_url}/ttd/apps-test"  # {app host}/{org}/{app}, no trailing slash
    assert stored["typeFilter"] == "app.instance.process.completed" and stored["validated"] is True
    assert host.stats["receive"]["successes"] >= 1  # the validation event came through the webhook ...
    assert queues[0].peek_messages(max_messages=32) == []  # ... and was acknowledged, not queued

    # Altinn now pushes the app's events to us through the subscription.
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(size=900)])
    other = sim.add_instance("ttd", "big-app", [ElementSpec(size=900)])
    assert sim.publish(inst) == [(endpoint, 202)]
    assert sim.publish(other) == []  # another app: not subscribed
    assert host.wait_idle(timeout=60)
    assert [c[0] for c in sim.confirmations] == [inst.id]

    # The function key is a secret: nowhere in what we log or show.
    key = host.function_key
    assert key not in caplog.text and quote(key, safe="") not in caplog.text
    shown = json.dumps(r.to_dict()) + repr(r.subscription) + r.subscription.endpoint_redacted
    assert key not in shown and quote(key, safe="") not in shown and "code=***" in shown


def test_subscribe_twice_reuses_the_subscription(host, sim, rt):
    endpoint = host.function_url("receive")
    first = subscriptions.subscribe(rt, [("ttd", "apps-test"), ("ttd", "big-app")], endpoint, ["app.instance.process.completed"], wait=10, poll_interval=0.05)
    posts = sum(1 for r in sim.requests if r["endpoint"] == "subscriptions" and r["method"] == "POST")
    again = subscriptions.subscribe(rt, [("ttd", "apps-test"), ("ttd", "big-app")], endpoint, ["app.instance.process.completed"], wait=10)
    assert [r.existed for r in first] == [False, False] and [r.existed for r in again] == [True, True]
    assert [r.subscription.id for r in again] == [r.subscription.id for r in first]
    assert sum(1 for r in sim.requests if r["endpoint"] == "subscriptions" and r["method"] == "POST") == posts
    assert len(sim.subscriptions) == 2


def test_a_wrong_function_key_leaves_the_subscription_unvalidated(host, sim, rt, caplog):
    endpoint = host.function_url("receive").split("?")[0] + "?code=wrong-key"
    with caplog.at_level(logging.WARNING):
        results = subscriptions.subscribe(rt, [("ttd", "apps-test")], endpoint, ["app.instance.process.completed"], wait=1.0, poll_interval=0.1)
    assert not results[0].validated
    assert sim.subscriptions[results[0].subscription.id]["validated"] is False
    assert any("not validated" in r.getMessage() for r in caplog.records)
    assert "wrong-key" not in caplog.text


def test_list_filters_by_app_and_delete(host, sim, rt):
    endpoint = host.function_url("receive")
    created = subscriptions.subscribe(rt, [("ttd", "apps-test"), ("ttd", "big-app")], endpoint, ["app.instance.process.completed"], wait=5, poll_interval=0.05)
    # A subscription of our org for a source that is not one of our apps.
    foreign = rt.altinn.create_subscription({"endPoint": "https://example.com/hook", "sourceFilter": f"{sim.apps_url}/ttd/legacy-app"})

    ours = subscriptions.list_subscriptions(rt, ours_only=True)
    assert [s.app for s in ours] == ["ttd/apps-test", "ttd/big-app"] and all(s.validated for s in ours)
    assert [s.id for s in subscriptions.list_subscriptions(rt, ["ttd/big-app"])] == [created[1].subscription.id]
    everything = subscriptions.list_subscriptions(rt)
    assert {s.id for s in everything} == {*(r.subscription.id for r in created), foreign["id"]}
    assert next(s for s in everything if s.id == foreign["id"]).app is None

    subscriptions.unsubscribe(rt, created[0].subscription.id)
    assert [s.app for s in subscriptions.list_subscriptions(rt, ours_only=True)] == ["ttd/big-app"]
    with pytest.raises(PermanentError) as err:
        subscriptions.unsubscribe(rt, created[0].subscription.id)
    assert err.value.status == 404


def test_subscribe_refuses_apps_we_do_not_serve(host, rt, sim):
    with pytest.raises(ValueError, match="ttd/other"):
        subscriptions.subscribe(rt, [("ttd", "other")], host.function_url("receive"), ["app.instance.process.completed"], wait=0)
    assert sim.subscriptions == {}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/api/events?code=k", "https"),
        ("ftp://example.com/api/events?code=k", "https"),
        ("https://user:pw@example.com/api/events?code=k", "user information"),
        ("https://example.com/api/events?code=k#x", "fragment"),
        ("https://example.com/api/events", "function key"),
        ("https://example.com/api/events?code=", "function key"),
        ("https://example.com:99999/api/events?code=k", "valid URL"),
        ("/api/events?code=k", "https"),
    ],
)
def test_endpoint_checks(url, problem):
    with pytest.raises(ValueError, match=problem) as err:
        subscriptions.check_endpoint(url)
    assert "pw" not in str(err.value)


def test_endpoint_checks_accept_https_loopback_and_keyless_when_asked():
    assert subscriptions.check_endpoint(" https://mottak.example/api/events?code=abc ") == "https://mottak.example/api/events?code=abc"
    assert subscriptions.check_endpoint("http://127.0.0.1:7071/api/events?code=abc")
    assert subscriptions.check_endpoint("https://gateway.example/altinn", require_key=False)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/api/events?code=s3cr3t", "https://h.example/api/events?code=***"),
        ("https://u:p@h.example:8443/x?a=1&CODE=s3cr3t&sig=zz", "https://h.example:8443/x?a=1&CODE=***&sig=***"),
        ("https://h.example/api/events?code=s3cr3t#frag", "https://h.example/api/events?code=***"),
        (None, ""),
    ],
)
def test_redact_endpoint(url, shown):
    assert subscriptions.redact_endpoint(url) == shown


def test_an_unvalidated_identical_subscription_is_posted_again_for_a_new_validation(host, sim, rt, monkeypatch):
    """Altinn gives up on a failed validation after a few minutes and re-sends the validation event
    only when the identical subscription is posted again (SubscriptionService.CompleteSubscriptionCreation):
    running `subscribe` again, once the endpoint is fixed, must repair it."""
    import time

    good = host.function_url("receive")
    apps = __import__("os").environ["ALTINN_APPS"]
    monkeypatch.setenv("ALTINN_APPS", "")  # the webhook is misconfigured while Altinn validates: it answers 500
    first = subscriptions.subscribe(rt, [("ttd", "apps-test")], good, ["app.instance.process.completed"], wait=0)
    sub_id = first[0].subscription.id
    deadline = time.monotonic() + 15
    while len([a for a in sim.validation_attempts if a[0] == sub_id]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    attempts = [status for i, status in sim.validation_attempts if i == sub_id]
    assert len(attempts) == 4 and set(attempts) == {500} and not sim.subscriptions[sub_id]["validated"]  # Altinn gave up
    monkeypatch.setenv("ALTINN_APPS", apps)  # fixed
    again = subscriptions.subscribe(rt, [("ttd", "apps-test")], good, ["app.instance.process.completed"], wait=10, poll_interval=0.05)
    assert again[0].existed and again[0].reposted and again[0].subscription.id == sub_id
    assert again[0].validated and sim.subscriptions[sub_id]["validated"] is True and len(sim.subscriptions) == 1


def test_identity_includes_the_subject_filters_and_subunits(host, sim, rt):
    """An existing subscription with a subject filter is not ours to reuse (findsubscription.sql)."""
    endpoint = host.function_url("receive")
    rt.altinn.create_subscription(
        {"endPoint": endpoint, "sourceFilter": f"{sim.apps_url}/ttd/apps-test", "typeFilter": "app.instance.process.completed", "subjectFilter": "/party/50001"}
    )
    results = subscriptions.subscribe(rt, [("ttd", "apps-test")], endpoint, ["app.instance.process.completed"], wait=10, poll_interval=0.05)
    assert not results[0].existed and len(sim.subscriptions) == 2
