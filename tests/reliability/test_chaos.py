"""The seeded chaos run: hundreds of instances of mixed sizes through the whole service while more
than a fifth of all calls to Altinn and Maskinporten fail, events arrive twice and out of order,
and tokens are revoked under the workers' feet.

* Instances: ``CHAOS_INSTANCES`` (default 220) of mixed sizes (forms of a few KB, attachments up to
  12 MiB, streamed in 1 MiB blocks), two hard-deleted ones (archived and confirmed like the rest:
  storage keeps them for us), plus a few that fail permanently: removed in Altinn (404 in a row),
  access denied (403).
* Faults: every endpoint (token, exchange, instance, data, complete) gets seeded probability faults
  drawn from the fault list: 500, 502, 503, 429 with Retry-After, read timeouts, connection resets
  mid-body, bodies shorter than Content-Length, Maskinporten invalid_grant, exchange 401, 401 on
  Altinn calls (an expired token); every few seconds all Altinn tokens (and less often all
  Maskinporten tokens) are revoked.
* Delivery: every completed event through the real webhook over HTTP, 10 % of them twice (half
  shuffled in, half after everything settled), the order shuffled, ``app.instance.created`` events
  for some instances mixed in. The local host gives real queue semantics; the app schedules its own
  retries (immediate, then every second, for up to 6 minutes here).
* An instance whose faults outlast that window is parked (``retries-exhausted``); at the default
  rate none is, since the retries and the reuse of stored elements absorb them
  (``CHAOS_FAULT_SCALE=3.5``, about 64 % of calls failing, can exhaust some). The operator's answer
  is a replay (``altinn-mottak replay-poison --instance ...``), done here while the faults go on;
  the replays are counted and printed.

Afterwards: lost = 0 (every instance that can be archived is, with its manifest, and confirmed),
early confirmations = 0 (the simulator checked at every /complete that the archive was whole),
corrupt = 0 (every stored byte hashed against what Altinn has), and the poison queue holds exactly
the instances that failed permanently, each with its reason. ``CHAOS_SEED`` changes the seed.
"""

from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from devtools.simulator import ElementSpec
from tests.support.archive import (
    MIB,
    archive_problems,
    blob_committed,
    handoff_problems,
    install_complete_guard,
    manifest_name,
    peek_all,
    queue_client,
    replay_poison,
)
from tests.support.network import SocketGuard

SEED = int(os.environ.get("CHAOS_SEED", "20261130"))
INSTANCES = int(os.environ.get("CHAOS_INSTANCES", "220"))
FAULT_SCALE = float(os.environ.get("CHAOS_FAULT_SCALE", "1"))  # e.g. 2: about 45 % of calls fail
READ_TIMEOUT = 2.0
SLOW = READ_TIMEOUT + 0.5

INVALID_GRANT = '{"error":"invalid_grant","error_description":"Invalid assertion. Client authentication failed."}'
# (endpoint, kind, probability, fault). Probabilities are per request and checked in this order.
FAULTS: list[tuple[str, str, float, dict[str, Any]]] = [
    ("token", "invalid_grant", 0.10, {"status": 400, "body": INVALID_GRANT}),
    ("token", "503", 0.05, {"status": 503}),
    ("token", "429+Retry-After", 0.03, {"status": 429, "retry_after": 1}),
    ("token", "reset", 0.03, {"reset_after": 20}),
    ("token", "timeout", 0.02, {"delay": SLOW}),
    ("exchange", "401", 0.08, {"status": 401}),
    ("exchange", "500", 0.06, {"status": 500}),
    ("exchange", "502", 0.04, {"status": 502}),
    ("exchange", "short body", 0.03, {"truncate_at": 20}),
    ("exchange", "timeout", 0.02, {"delay": SLOW}),
    ("instance", "500", 0.07, {"status": 500}),
    ("instance", "502", 0.05, {"status": 502}),
    ("instance", "503", 0.04, {"status": 503}),
    ("instance", "429+Retry-After", 0.03, {"status": 429, "retry_after": 1}),
    ("instance", "401 (expired token)", 0.02, {"status": 401}),
    ("instance", "reset", 0.03, {"reset_after": 20}),
    ("instance", "short body", 0.03, {"truncate_at": 20}),
    ("instance", "timeout", 0.01, {"delay": SLOW}),
    ("data", "500", 0.07, {"status": 500}),
    ("data", "502", 0.04, {"status": 502}),
    ("data", "503", 0.04, {"status": 503}),
    ("data", "429+Retry-After", 0.02, {"status": 429, "retry_after": 1}),
    ("data", "401 (expired token)", 0.02, {"status": 401}),
    ("data", "reset mid-body", 0.04, {"reset_after": 1000}),
    ("data", "short body", 0.04, {"truncate_at": 1000}),
    ("data", "reset mid-block", 0.02, {"reset_after": MIB + 4321}),
    ("data", "timeout", 0.01, {"delay": SLOW}),
    ("complete", "500", 0.08, {"status": 500}),
    ("complete", "502", 0.03, {"status": 502}),
    ("complete", "503", 0.06, {"status": 503}),
    ("complete", "429+Retry-After", 0.03, {"status": 429, "retry_after": 1}),
    ("complete", "401 (expired token)", 0.02, {"status": 401}),
    ("complete", "reset", 0.03, {"reset_after": 20}),
    ("complete", "timeout", 0.02, {"delay": SLOW}),
]


def element_specs(rng: random.Random) -> list[ElementSpec]:
    specs = [ElementSpec(data_type="model", content_type="application/xml", size=rng.randint(800, 20_000))]
    tier = rng.random()
    if tier < 0.6:
        sizes = [rng.randint(0, 300_000) for _ in range(rng.randint(0, 2))]
    elif tier < 0.9:
        sizes = [rng.randint(MIB // 2, 3 * MIB) for _ in range(rng.randint(1, 2))]
    else:
        sizes = [rng.randint(4 * MIB, 12 * MIB)]
    for i, size in enumerate(sizes):
        name = rng.choice(["vedlegg.pdf", "Søknad – bilag.pdf", "scan 01.png", "data.bin", "ærlig.txt"])
        specs.append(
            ElementSpec(
                data_type="vedlegg", content_type=rng.choice(["application/pdf", "image/png", "application/octet-stream"]), size=size, filename=f"{i}-{name}"
            )
        )
    return specs


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_chaos(rel_env, sim, container, azurite, write_once, host_json, monkeypatch):
    import function_app
    import shared.altinn
    import shared.maskinporten
    import shared.pipeline
    from devtools.localhost import LocalHost

    rng = random.Random(SEED)
    # The app's retry schedule: immediate, then every second, for up to 6 minutes (in Azure: 60 s
    # growing to an hour, for 24 hours). Long enough that the faults below never exhaust it.
    monkeypatch.setenv("ARCHIVE_RETRY_SCHEDULE", "0,0,1")
    monkeypatch.setenv("ARCHIVE_RETRY_MAX_HOURS", "0.1")
    monkeypatch.setattr(shared.altinn, "TIMEOUT", (2, READ_TIMEOUT))
    monkeypatch.setattr(shared.maskinporten, "TIMEOUT", (2, READ_TIMEOUT))
    # Short token lifetimes, so that the token and exchange calls (and their faults) happen often.
    sim.maskinporten_token_lifetime = 12
    sim.altinn_token_lifetime = 8
    install_complete_guard(sim, container)

    # -- instances ------------------------------------------------------------------------------
    good = [sim.add_instance("ttd", rng.choice(["apps-test", "big-app"]), element_specs(rng)) for _ in range(INSTANCES)]
    gone = [sim.add_instance("ttd", "apps-test", [ElementSpec(size=1000)]) for _ in range(6)]
    denied = [sim.add_instance("ttd", "apps-test", [ElementSpec(size=1000)]) for _ in range(4)]
    # Hard deleted by the submitter: storage keeps them for us until we confirm; archived like any other.
    good += [sim.add_instance("ttd", "apps-test", [ElementSpec(size=1000)], hard_deleted=True) for _ in range(2)]
    events_gone = {i.id: sim.cloud_event(i) for i in gone}
    for inst in gone:
        sim.remove_instance(inst)
    for inst in denied:  # before the probability faults: these are checked first
        sim.add_fault("instance", status=403, times=10_000, match=inst.instance_guid)
    permanent = {i.id: (404, i) for i in gone} | {i.id: (403, i) for i in denied}
    for n, (endpoint, _kind, probability, fault) in enumerate(FAULTS):
        sim.add_fault(endpoint, probability=min(1.0, probability * FAULT_SCALE), seed=SEED + n, **fault)

    # -- what to deliver ------------------------------------------------------------------------
    completed = {i.id: sim.cloud_event(i) for i in good + denied} | events_gone
    deliveries = list(completed.values())
    twice = rng.sample(list(completed), k=max(1, len(completed) // 10))
    late = twice[: len(twice) // 2]
    deliveries += [completed[i] for i in twice[len(twice) // 2 :]]
    ignored = [sim.cloud_event(i, "app.instance.created") for i in rng.sample(good, k=len(good) // 10)]
    deliveries += ignored
    rng.shuffle(deliveries)

    invocations: collections.Counter[int] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    original_handle = shared.pipeline.handle_message

    def counting_handle(body: Any, *, dequeue_count: int | None = None, **kwargs: Any) -> Any:
        with lock:
            invocations[int(dequeue_count or 0)] += 1
        result = original_handle(body, dequeue_count=dequeue_count, **kwargs)
        with lock:
            outcomes[result.outcome] += 1
        return result

    monkeypatch.setattr(shared.pipeline, "handle_message", counting_handle)

    stop_monkey = threading.Event()
    revocations = collections.Counter()

    def token_monkey() -> None:
        tick = 0
        while not stop_monkey.wait(2.0):
            tick += 1
            sim.expire_altinn_tokens()
            revocations["altinn"] += 1
            if tick % 3 == 0:
                sim.expire_maskinporten_tokens()
                revocations["maskinporten"] += 1

    started = time.monotonic()
    answers: collections.Counter[int] = collections.Counter()
    replays = []
    sim_port = int(sim.url.rsplit(":", 1)[1])
    guard = SocketGuard({azurite.blob_port, azurite.queue_port, sim_port, write_once.port})  # the app's blobs go through the write-once guard
    with guard, LocalHost(function_app.app, connection_string=azurite.connection_string, host_json=host_json, concurrency=8) as host:
        guard.allowed_ports.add(host.port)
        url = host.function_url("receive")
        monkey = threading.Thread(target=token_monkey, daemon=True)
        monkey.start()

        def post(event: dict[str, Any]) -> None:
            for _ in range(12):  # Altinn retries a non-2xx answer
                status = requests.post(url, json=event, timeout=60).status_code
                with lock:
                    answers[status] += 1
                if 200 <= status < 300:
                    return
                time.sleep(0.2)
            raise AssertionError(f"the webhook never accepted {event['id']}")

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(post, deliveries))
        delivered_at = time.monotonic()
        assert host.wait_idle(timeout=900, settle=1.0), "the run did not settle"

        # Late duplicates, after everything settled.
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(post, [completed[i] for i in late]))
        assert host.wait_idle(timeout=300, settle=1.0)

        # The operator: replay what was parked for exhausted retries (none, if the schedule held up;
        # the faults go on), by instance; the permanent failures stay parked.
        for _ in range(5):
            parked = peek_all(queue_client(azurite.connection_string, "altinn-events-poison"))
            exhausted = [p for p in parked if (p.get("failure") or {}).get("class", "host") in ("host", "retries-exhausted")]
            retries_exhausted = sorted({f"{p['instance']['partyId']}/{p['instance']['instanceGuid']}" for p in exhausted})
            if not retries_exhausted:
                break
            report = replay_poison(instances=retries_exhausted)
            replays.append({"instances parked by the host": len(retries_exhausted), "messages replayed": report["replayed"]})
            assert host.wait_idle(timeout=600, settle=1.0)
        stop_monkey.set()
        monkey.join(10)
        stats = host.stats["archive"]
    run_seconds = time.monotonic() - started

    # -- verification ---------------------------------------------------------------------------
    confirmed = collections.Counter(c[0] for c in sim.confirmations)
    problems = {inst.id: archive_problems(container, sim, inst, download=True) for inst in good}
    lost = [i for i, p in problems.items() if any("no manifest" in x or "no confirmed.json marker" in x for x in p) or confirmed[i] == 0]
    corrupt = [i for i, p in problems.items() if p and i not in lost]
    handoff = handoff_problems(azurite.connection_string, sim, good)
    parked = peek_all(queue_client(azurite.connection_string, "altinn-events-poison"))
    parked_ids = collections.Counter(f"{p['instance']['partyId']}/{p['instance']['instanceGuid']}" for p in parked)
    faulted = [r for r in sim.requests if r["fault"]]
    calls = [r for r in sim.requests if r["endpoint"] in ("token", "exchange", "instance", "data", "complete")]
    kinds = collections.Counter()
    for r in faulted:
        kinds[f"{r['endpoint']} {r['fault']}"] += 1
    redeliveries = sum(n for dq, n in invocations.items() if dq > 1)
    figures = {
        "seed": SEED,
        "instances": len(good) + len(permanent),
        "archivable instances": len(good),
        "permanent failures (404 in a row, 403)": len(permanent),
        "hard-deleted instances (archived)": sum(1 for i in good if i.hard_deleted),
        "data elements": sum(len(i.elements) for i in good),
        "bytes archived": sum(inst._specs[e["id"]].size for inst in good for e in inst.elements),
        "webhook deliveries (incl. duplicates and ignored types)": sum(answers.values()),
        "duplicates (inline, late)": (len(twice) - len(late), len(late)),
        "ignored-type events": len(ignored),
        "calls to Altinn/Maskinporten": len(calls),
        "faults injected": len(faulted),
        "fault rate": round(len(faulted) / max(1, len(calls)), 3),
        "token revocations (altinn, maskinporten)": (revocations["altinn"], revocations["maskinporten"]),
        "archive invocations": stats["invocations"],
        "redeliveries (dequeueCount > 1)": redeliveries,
        "parked for exhausted retries, replayed": replays,
        "outcomes": dict(outcomes),
        "confirmations (incl. repeats)": len(sim.confirmations),
        "lost": len(lost),
        "early confirmations": len(sim.complete_violations),
        "corrupt": len(corrupt),
        "hand-off problems (not exactly one message per archive, or before its confirmation)": len(handoff),
        "left in poison": len(parked),
        "outbound connections outside 127.0.0.1 (simulator, Azurite, host)": len(guard.violations),
        "seconds (delivery, total)": (round(delivered_at - started, 1), round(run_seconds, 1)),
    }
    print("\nchaos figures:\n" + "\n".join(f"  {k}: {v}" for k, v in figures.items()))
    print("  faults by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))

    assert guard.violations == [], guard.violations[:5]
    assert lost == [], {i: problems[i] for i in lost[:5]}
    assert sim.complete_violations == [], sim.complete_violations[:3]
    assert corrupt == [], {i: problems[i] for i in corrupt[:5]}
    assert handoff == [], handoff[:5]
    assert figures["fault rate"] >= 0.20, figures["fault rate"]
    # The poison queue holds exactly the permanent failures, once each, with their reasons.
    assert set(parked_ids) == set(permanent), set(parked_ids) ^ set(permanent)
    for p in parked:
        key = f"{p['instance']['partyId']}/{p['instance']['instanceGuid']}"
        status, inst = permanent[key]
        assert p["failure"]["permanent"] is True and p["failure"]["reason"]
        assert p["failure"]["status"] == status, (key, p["failure"])
        assert confirmed[key] == 0 and not blob_committed(container, manifest_name(inst))
    assert all(confirmed[i.id] >= 1 for i in good)
    assert answers.keys() <= {200, 202}, answers
    json.dumps(figures)  # printable as JSON too
