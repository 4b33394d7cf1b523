"""Storage unavailable for a while: blob and queue writes fail (or hang), then storage comes back.

Two kinds of outage:

* unreachable: the app talks to Azurite through a TCP proxy that resets every connection while
  "down" (the Functions host itself, i.e. LocalHost, keeps its direct connection, as the real
  platform's queue listener is not ours to test);
* hanging: ``Azurite.pause()`` freezes the process (SIGSTOP): connections are accepted, nothing
  answers, until ``resume()``.

Nothing may be lost: the webhook answers 2xx only once the event is stored (otherwise 503, so
Altinn retries), and an archive interrupted by storage is redone by the queue, or parked and
replayed, never confirmed early.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests

from devtools.simulator import ElementSpec
from tests.support.archive import MIB, archive_problems, peek_all, queue_client, queue_length, replay_poison, wait_for
from tests.support.network import TcpProxy, proxied_connection_string

FORM = ElementSpec(data_type="model", content_type="application/xml", size=3000)
ATTACHMENT = ElementSpec(data_type="vedlegg", content_type="application/pdf", size=5 * MIB + 999, filename="a.pdf")  # streamed as blocks


@pytest.fixture
def proxies(azurite: Any, rel_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app's storage (AzureWebJobsStorage) goes through proxies that can be taken down."""
    blob, queue = TcpProxy(azurite.blob_port), TcpProxy(azurite.queue_port)
    monkeypatch.setenv("AzureWebJobsStorage", proxied_connection_string(azurite, blob, queue))
    yield blob, queue
    blob.close()
    queue.close()


@pytest.fixture
def fast_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Storage SDK retries in tenths of seconds rather than seconds, so an attempt fails fast."""
    import shared.runtime

    monkeypatch.setattr(shared.runtime, "_retry", lambda total, policy: policy(initial_backoff=0.05, increment_base=1.2, retry_total=1, random_jitter_range=0))


def post(host: Any, event: dict[str, Any]) -> requests.Response:
    return requests.post(host.function_url("receive"), json=event, timeout=120)


def test_webhook_answers_503_while_the_queue_is_unreachable_then_accepts_the_retry(rel_host, guarded, container, azurite, proxies):
    sim = guarded
    _, queue = proxies
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    event = sim.cloud_event(inst)
    events = queue_client(azurite.connection_string, "altinn-events")

    queue.down()
    started = time.monotonic()
    resp = post(rel_host, event)
    took = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json") and resp.json()["code"] == "queue_unavailable"
    assert took < 45, f"the webhook took {took:.1f} s; Altinn gives up after 45 s"  # a contract, not a speed figure
    assert queue_length(events) == 0 and sim.calls["instance"] == 0

    queue.up()  # Altinn retries the same event (after 10 s, 30 s, ...): now it is stored
    resp = post(rel_host, event)
    assert resp.status_code == 202, resp.text
    assert rel_host.wait_idle(timeout=60)
    assert archive_problems(container, sim, inst) == []
    assert sim.complete_violations == []


def test_blob_storage_lost_in_the_middle_of_an_instance_then_back(rel_host, guarded, container, azurite, proxies, fast_storage_retries):
    sim = guarded
    blob, _ = proxies
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    # The attachment's download starts 0.5 s late; storage goes away while it is on its way.
    sim.add_fault("data", delay=0.5, times=1, match=inst.elements[1]["id"])
    resp = post(rel_host, sim.cloud_event(inst))
    assert resp.status_code == 202
    wait_for(lambda: sim.calls["data"] >= 2, timeout=30, what="the attachment download")
    blob.down()
    wait_for(lambda: rel_host.stats["archive"]["invocations"] >= 3, timeout=60, what="two deferred attempts")
    assert sim.confirmations == []
    blob.up()
    assert rel_host.wait_idle(timeout=90)

    assert archive_problems(container, sim, inst) == []
    assert [c[0] for c in sim.confirmations] == [inst.id]
    assert sim.complete_violations == []
    stats = rel_host.stats["archive"]
    # The attempts during the outage were deferred by the app (the queue was up), none failed for the host.
    assert stats["poisoned"] == 0 and stats["failures"] == 0 and stats["invocations"] >= 3
    assert peek_all(queue_client(azurite.connection_string, "altinn-events-poison")) == []
    assert blob.refused > 0


def test_storage_down_longer_than_every_attempt_parks_the_message_and_a_replay_finishes_it(
    rel_host, guarded, container, azurite, proxies, fast_storage_retries
):
    sim = guarded
    blob, _ = proxies
    inst = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
    blob.down()
    assert post(rel_host, sim.cloud_event(inst)).status_code == 202  # the queue is up
    assert rel_host.wait_idle(timeout=90)
    stats = rel_host.stats["archive"]
    assert stats["invocations"] >= 3 and stats["poisoned"] == 0  # parked by the app when its retry window ended
    parked = peek_all(queue_client(azurite.connection_string, "altinn-events-poison"))
    assert [p["instance"]["instanceGuid"] for p in parked] == [inst.instance_guid]
    assert parked[0]["failure"]["class"] == "retries-exhausted" and "blob storage failed" in parked[0]["failure"]["reason"]
    assert sim.confirmations == []

    blob.up()
    assert replay_poison(instance=inst.id)["replayed"] == 1
    assert rel_host.wait_idle(timeout=60)
    assert archive_problems(container, sim, inst) == []
    assert sim.complete_violations == []
    assert peek_all(queue_client(azurite.connection_string, "altinn-events-poison")) == []


def test_azurite_frozen_mid_archive_and_during_a_webhook_call_then_thawed(rel_host, guarded, container, azurite):
    """SIGSTOP: requests hang instead of failing. Everything waits and then completes."""
    sim = guarded
    first = sim.add_instance("ttd", "apps-test", [FORM, ElementSpec(data_type="vedlegg", size=6 * MIB + 1, filename="b.bin")])
    second = sim.add_instance("ttd", "apps-test", [FORM])
    sim.add_fault("data", delay=0.3, times=1, match=first.elements[1]["id"])
    assert post(rel_host, sim.cloud_event(first)).status_code == 202
    wait_for(lambda: sim.calls["data"] >= 2, timeout=30, what="the attachment download")
    answers: list[int] = []
    azurite.pause()
    try:
        webhook = threading.Thread(target=lambda: answers.append(post(rel_host, sim.cloud_event(second)).status_code), daemon=True)
        webhook.start()
        time.sleep(3)
        assert answers == [], "the webhook must not answer while the queue write hangs"
        assert sim.confirmations == []
    finally:
        azurite.resume()
    webhook.join(60)
    assert answers == [202]
    assert rel_host.wait_idle(timeout=90)
    for inst in (first, second):
        assert archive_problems(container, sim, inst) == []
    assert sorted(c[0] for c in sim.confirmations) == sorted([first.id, second.id])
    assert sim.complete_violations == []
    assert json.loads(json.dumps(rel_host.stats["archive"]["poisoned"])) == 0
