"""Two workers archiving the same instance at the same time end with one consistent archive and one
manifest.

Why conditional writes and per-attempt block ids rather than blob leases (the design choice):

* data element blobs: every attempt stages its blocks under ids unique to that attempt and commits
  its own list only after the byte count and sha256 are verified. A commit is atomic; readers see
  the old blob or the new one, never a mix. When one worker commits, Azure discards every other
  uncommitted block of that blob, so a second worker still staging gets ``InvalidBlockList`` at its
  commit: a transient failure, the queue redelivers, and the redelivery finds the work done. Both
  workers download the same locked Altinn element, so whichever commit wins holds the same bytes.
* ``manifest.json`` is created with ``If-None-Match: *``: of any number of writers exactly one
  creates it; the others get 409, keep the winner's manifest and go on to confirm (idempotent).
  ``instance.json`` is write-once the same way, so nothing of a finished archive is rewritten.
* a lease would need a blob to exist before the first byte, renewal during a long download (a lease
  lasts at most 60 s unless infinite), and a crashed holder blocks the instance until the lease
  runs out (or for ever). The conditional writes need no cleanup after a SIGKILL (see test_crash).

Three races are run: threads started on a barrier with a client set each (two processes in all
but name), a late writer that lists the archive before the first worker starts and writes after it
has finished and confirmed, and two real worker processes fed duplicate messages.
"""

from __future__ import annotations

import collections
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from devtools.simulator import ElementSpec
from tests.support.archive import (
    MIB,
    archive_problems,
    committed_blocks,
    handoff_problems,
    install_complete_guard,
    peek_all,
    prefix,
    queue_client,
    read_manifest,
    wait_for,
)
from tests.support.workers import workers


def elements() -> list[ElementSpec]:
    return [
        ElementSpec(data_type="model", size=5000),
        ElementSpec(data_type="vedlegg", content_type="application/pdf", size=5 * MIB + 5, filename="a.pdf"),  # blocks
        ElementSpec(data_type="vedlegg", content_type="image/png", size=MIB + 77, filename="b.png"),
    ]


class CountingWorker:
    """A worker with its own clients (HTTP session, token caches, blob and queue clients)."""

    def __init__(self, name: str, wins: collections.Counter[str], lock: threading.Lock) -> None:
        from shared.config import get_settings
        from shared.runtime import Runtime

        self.name = name
        self.rt = Runtime(get_settings())
        self.outcomes: list[str] = []
        self.transient: list[str] = []
        archive = self.rt.archive
        original = archive.write_manifest

        def write_manifest(ref: Any, document: Any) -> bytes | None:
            created = original(ref, document)
            if created is not None:
                with lock:
                    wins[ref.prefix + "manifest.json"] += 1
            return created

        archive.write_manifest = write_manifest  # type: ignore[method-assign]

    def run(self, ref: Any, attempts: int = 5) -> None:
        """Like the queue: retry a transient failure, up to maxDequeueCount attempts."""
        from shared.errors import TransientError
        from shared.pipeline import archive_instance

        for _ in range(attempts):
            try:
                self.outcomes.append(archive_instance(self.rt, ref).outcome)
                return
            except TransientError as exc:
                self.transient.append(str(exc))
        raise AssertionError(f"{self.name}: no success in {attempts} attempts: {self.transient}")


def ref_of(inst: Any) -> Any:
    from shared.events import InstanceRef

    return InstanceRef.parse(inst.org, inst.app, inst.id)


def test_two_workers_started_together_on_each_of_eight_instances(rel_env, sim, container, azurite):
    install_complete_guard(sim, container)
    wins: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    a, b = CountingWorker("a", wins, lock), CountingWorker("b", wins, lock)
    instances = [sim.add_instance("ttd", "apps-test", elements()) for _ in range(8)]
    for inst in instances:
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def go(worker: CountingWorker, inst: Any = inst, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            try:
                barrier.wait(10)
                worker.run(ref_of(inst))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(w,)) for w in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []

    for inst in instances:
        assert archive_problems(container, sim, inst) == []
        assert wins[prefix(inst) + "manifest.json"] == 1, "exactly one worker creates the manifest"
        for element in inst.elements[1:]:
            committed, _ = committed_blocks(container, f"{prefix(inst)}data/{element['id']}")
            assert len({c.split("-", 1)[0] for c in committed}) <= 1, "a blob mixes blocks of two attempts"  # none: one Put Blob
    assert sim.complete_violations == []
    confirmed = collections.Counter(c[0] for c in sim.confirmations)
    assert set(confirmed) == {i.id for i in instances}
    assert handoff_problems(azurite.connection_string, sim, instances) == []
    both = len(a.outcomes) + len(b.outcomes)
    assert both == 2 * len(instances)
    lost_block_races = [t for t in a.transient + b.transient if "blob storage failed" in t]
    overlapped = sum(1 for i in instances if len([r for r in sim.requests if r["endpoint"] == "instance" and i.instance_guid in r["path"]]) >= 2)
    print(
        f"\nrace: {len(instances)} instances x 2 workers; manifest created once each; outcomes {collections.Counter(a.outcomes + b.outcomes)}; "
        f"{len(lost_block_races)} commits lost to the other worker's commit (InvalidBlockList, retried); {overlapped} instances fetched by both"
    )


def test_a_late_writer_cannot_change_a_finished_archive(rel_env, sim, container):
    """B lists the archive (nothing there), A then archives and confirms everything, then B goes on
    with the plan it made from its stale listing. The manifest and instance.json stay A's, and the
    data B would write are refused by the blobs A committed (If-None-Match), which hold the same
    verified bytes."""
    install_complete_guard(sim, container)
    wins: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    a, b = CountingWorker("a", wins, lock), CountingWorker("b", wins, lock)
    inst = sim.add_instance("ttd", "apps-test", elements())
    listed, a_done = threading.Event(), threading.Event()
    original_state = b.rt.archive.state

    def stale_state(ref: Any) -> Any:
        state = original_state(ref)
        listed.set()
        assert a_done.wait(60)
        return state

    b.rt.archive.state = stale_state  # type: ignore[method-assign]
    b_thread = threading.Thread(target=b.run, args=(ref_of(inst),))
    b_thread.start()
    assert listed.wait(30)
    a.run(ref_of(inst))
    manifest_a, meta_a = read_manifest(container, inst)
    props = {name: container.get_blob_client(prefix(inst) + name).get_blob_properties() for name in ("manifest.json", "instance.json")}
    a_done.set()
    b_thread.join(120)

    assert a.outcomes == ["archived"] and len(b.outcomes) == 1
    manifest_b, meta_b = read_manifest(container, inst)
    assert manifest_b == manifest_a and wins[prefix(inst) + "manifest.json"] == 1
    for name, before in props.items():
        after = container.get_blob_client(prefix(inst) + name).get_blob_properties()
        assert after.etag == before.etag, f"{name} was changed after the archive was finished"  # write-once, metadata too
    assert json.loads(container.get_blob_client(prefix(inst) + "instance.json").download_blob().readall())["id"] == inst.id
    assert archive_problems(container, sim, inst) == []
    assert sim.complete_violations == []


@pytest.mark.timeout(300)
def test_two_worker_processes_fed_duplicate_messages(rel_env, sim, container, azurite, host_json, tmp_path: Path):
    """Real processes, real queue: every event is queued twice; two workers take the copies."""
    from shared.pipeline import receive_event

    install_complete_guard(sim, container)
    instances = [sim.add_instance("ttd", "apps-test", elements()) for _ in range(10)]
    for inst in instances:
        body = json.dumps(sim.cloud_event(inst)).encode()
        assert receive_event(body, "application/json").status == 202
        assert receive_event(body, "application/json").status == 202  # the same event again
    with workers(2, host_json, tmp_path, lease=10.0, concurrency=2):
        wait_for(lambda: {c[0] for c in sim.confirmations} >= {i.id for i in instances}, timeout=180, interval=0.1, what="every confirmation")
        wait_for(
            lambda: queue_client(azurite.connection_string, "altinn-events").get_queue_properties().approximate_message_count == 0,
            timeout=60,
            what="the queue to drain",
        )
    for inst in instances:
        assert archive_problems(container, sim, inst) == []
    assert sim.complete_violations == []
    assert peek_all(queue_client(azurite.connection_string, "altinn-events-poison")) == []
    assert handoff_problems(azurite.connection_string, sim, instances) == []
