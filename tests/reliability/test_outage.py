"""An Altinn outage of hours heals itself: the archive function's own retry schedule
(``ARCHIVE_RETRY_SCHEDULE``, default 60, 120, 300, 900, 1800, 3600 s, the last repeating, for
``ARCHIVE_RETRY_MAX_HOURS`` = 24) carries every event through it, and nothing is parked.

Two ways: a simulated clock through six hours of outage with the default schedule (the queue's
visibility delays are the schedule's, the clock jumps over them), and short real delays through
the local host, Azurite and the simulator.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools.simulator import ElementSpec
from tests.support.archive import archive_problems, peek_all, queue_client

HOURS = 6


def test_six_hours_of_altinn_outage_on_the_default_schedule_with_a_simulated_clock(env, sim, container, azurite, monkeypatch):
    import shared.retries
    from shared.config import EVENTS_QUEUE
    from shared.pipeline import handle_message

    for name in ("ARCHIVE_RETRY_SCHEDULE", "ARCHIVE_RETRY_MAX_HOURS"):
        monkeypatch.delenv(name)  # the defaults, as in Azure
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    now = [start]
    asked: list[int] = []
    real_visibility = shared.retries.visibility_seconds

    def record(delay: float) -> int:
        """The delay the schedule asked for; the queue shows the message at once, and the simulated
        clock moves to its due time when it is taken (below)."""
        asked.append(real_visibility(delay))
        return 0

    monkeypatch.setattr(shared.retries, "visibility_seconds", record)
    instances = [
        sim.add_instance("ttd", "apps-test", [ElementSpec(size=2000), ElementSpec(data_type="vedlegg", size=30_000, filename="a.pdf")]) for _ in range(3)
    ]
    sim.add_fault("instance", status=503, probability=1.0, seed=1)  # storage is down
    queue = queue_client(azurite.connection_string, EVENTS_QUEUE)
    from shared.events import InstanceRef, queue_message

    for inst in instances:
        queue.send_message(json.dumps(queue_message(None, InstanceRef.parse(inst.org, inst.app, inst.id), via="webhook")))
    waiting: list[tuple[datetime, int, str]] = []  # (due, seq, body): the queue, in simulated time
    delays: dict[str, list[int]] = {}
    outcomes: list[str] = []
    for seq in range(500):
        for message in queue.receive_messages(max_messages=32, visibility_timeout=30):
            waiting.append((now[0] + timedelta(seconds=asked.pop(0)) if asked else now[0], seq, message.content))
            queue.delete_message(message)
        if not waiting:
            break
        waiting.sort()
        due, _, body = waiting.pop(0)
        now[0] = max(now[0], due)
        if now[0] - start >= timedelta(hours=HOURS):
            sim.clear_faults()  # Altinn is back
        before = len(asked)
        outcome = handle_message(body, dequeue_count=1, clock=lambda: now[0]).outcome.value
        outcomes.append(outcome)
        if len(asked) > before:
            delays.setdefault(json.loads(body)["instance"]["instanceGuid"], []).append(asked[-1])
    assert all(archive_problems(container, sim, inst) == [] for inst in instances)
    assert sorted(c[0] for c in sim.confirmations) == sorted(i.id for i in instances)
    assert peek_all(queue_client(azurite.connection_string, "altinn-events-poison")) == []  # nothing parked
    assert outcomes.count("archived") == 3 and outcomes.count("parked") == 0
    # The schedule as documented: growing delays, with +-10 % jitter, then hourly, until Altinn is back.
    for guid, got in delays.items():
        for value, want in zip(got, (60, 120, 300, 900, 1800, *[3600] * 10), strict=False):
            assert want * 0.9 <= value <= want * 1.1 + 1, (guid, got)
        assert 9 <= len(got) <= 11, got  # 60+120+300+900+1800 s, then hourly (+-10 %), to 6 h
    assert now[0] - start >= timedelta(hours=HOURS)
    print(
        f"\noutage: {HOURS} h simulated, {outcomes.count('deferred')} deferred attempts, {len(instances)} archived, 0 parked; "
        f"delays of one instance: {next(iter(delays.values()))}"
    )


@pytest.mark.timeout(180)
def test_an_outage_heals_itself_through_the_local_host_with_short_delays(env, sim, container, azurite, host_json, monkeypatch):
    """The same with real time: the schedule 1, 2, 3 s (the last repeating) and a window of 72 s;
    Altinn (instance and data) answers 503 for 15 s."""
    import requests

    import function_app
    from devtools.localhost import LocalHost

    monkeypatch.setenv("ARCHIVE_RETRY_SCHEDULE", "1,2,3")
    monkeypatch.setenv("ARCHIVE_RETRY_MAX_HOURS", "0.02")
    instances = [sim.add_instance("ttd", "apps-test", [ElementSpec(size=1500)]) for _ in range(5)]
    with LocalHost(function_app.app, connection_string=azurite.connection_string, host_json=host_json) as host:
        sim.add_fault("instance", status=503, probability=1.0, seed=2)
        sim.add_fault("data", status=503, probability=1.0, seed=3)
        down = time.monotonic()
        for inst in instances:
            assert requests.post(host.function_url("receive"), json=sim.cloud_event(inst), timeout=30).status_code == 202
        while time.monotonic() - down < 15:
            time.sleep(0.2)
        attempts_during = sim.calls["instance"]
        sim.clear_faults()
        deadline = time.monotonic() + 60
        while len(sim.confirmations) < len(instances) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert host.wait_idle(timeout=60)
        stats: dict[str, Any] = host.stats["archive"]
    assert sorted(c[0] for c in sim.confirmations) == sorted(i.id for i in instances)
    assert peek_all(queue_client(azurite.connection_string, "altinn-events-poison")) == []
    assert stats["failures"] == 0 and stats["poisoned"] == 0
    # Spaced out by the schedule, not hammering: each instance was tried a handful of times in 15 s.
    assert len(instances) * 3 <= attempts_during <= len(instances) * 3 * 8, attempts_during
