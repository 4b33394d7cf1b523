"""SIGKILL in the middle of a large data element, twice, then a clean run.

The archiving process is a worker of its own (``tests.reliability.worker``: the function app in a
local host). It is killed while the 160 MiB attachment is being streamed into Blob Storage, i.e.
with blocks staged and not yet committed; restarted, killed again in the same place on the
redelivery, restarted again. Proven along the way, by a watcher that looks at the archive every
few milliseconds from the first byte to the end, and by the simulator at the moment of /complete:

* at the kill the attachment's blob does not exist as a blob: only uncommitted blocks (those are
  invisible to readers and to listings, and are discarded when another block list is committed);
* no manifest exists until the archive is whole, and a manifest never references a blob that is
  missing, of another size or of another sha256 than the manifest says;
* after the restart the instance is archived completely (sha256 of every element as Altinn has it)
  and confirmed; the committed attachment consists of the blocks of exactly one attempt (the last),
  none of the killed attempts' blocks;
* the small form element, committed before the first kill, is not downloaded again.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.simulator import ElementSpec
from tests.support.archive import (
    MIB,
    archive_problems,
    blob_committed,
    committed_blocks,
    install_complete_guard,
    manifest_name,
    peek_all,
    prefix,
    queue_client,
    queue_length,
    wait_for,
)
from tests.support.workers import Worker

BIG = 160 * MIB + 7
KILL_AFTER_BLOCKS = 12  # staged 1 MiB blocks before the kill: well inside the element


class Watcher(threading.Thread):
    """Looks at the archive continuously; records any moment a manifest exists for an incomplete archive."""

    def __init__(self, container: Any, sim: Any, inst: Any) -> None:
        super().__init__(daemon=True, name="archive-watcher")
        self.container, self.sim, self.inst = container, sim, inst
        self.violations: list[str] = []
        self.looks = 0
        self.manifest_seen_at: float | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                names = {b.name for b in self.container.list_blobs(name_starts_with=prefix(self.inst))}
            except Exception:  # noqa: BLE001 - the container may not exist yet
                names = set()
            self.looks += 1
            if manifest_name(self.inst) in names:
                if self.manifest_seen_at is None:
                    self.manifest_seen_at = time.monotonic()
                problems = archive_problems(self.container, self.sim, self.inst, download=False, require_confirmed=False)
                if problems:
                    self.violations.extend(problems)
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def kill_mid_element(worker: Worker, container: Any, blob_name: str, known_attempts: set[str]) -> set[str]:
    """Wait until the worker has staged KILL_AFTER_BLOCKS blocks of a new attempt, SIGKILL it.
    Returns the attempt prefixes of the uncommitted blocks at the kill."""

    def staged_by_new_attempt() -> bool:
        _, uncommitted = committed_blocks(container, blob_name)
        fresh = [b for b in uncommitted if b.split("-", 1)[0] not in known_attempts]
        return len(fresh) >= KILL_AFTER_BLOCKS

    wait_for(staged_by_new_attempt, timeout=120, interval=0.005, what="blocks of the attachment being staged")
    worker.kill()
    committed, uncommitted = committed_blocks(container, blob_name)
    assert committed == [], "a block list was committed before the element was complete"
    assert not blob_committed(container, blob_name), "the partial attachment is visible as a blob"
    assert len(uncommitted) >= KILL_AFTER_BLOCKS
    return {b.split("-", 1)[0] for b in uncommitted}


@pytest.mark.timeout(600)
def test_sigkill_mid_element_twice_then_archived_whole(rel_env, sim, container, azurite, host_json, tmp_path: Path):
    from shared.pipeline import receive_event

    install_complete_guard(sim, container)
    inst = sim.add_instance(
        "ttd",
        "big-app",
        [ElementSpec(data_type="model", size=4000), ElementSpec(data_type="vedlegg", content_type="application/pdf", size=BIG, filename="stor.pdf")],
    )
    form_id, big_id = inst.elements[0]["id"], inst.elements[1]["id"]
    big_blob = f"{prefix(inst)}data/{big_id}"
    watcher = Watcher(container, sim, inst)
    watcher.start()
    reply = receive_event(json.dumps(sim.cloud_event(inst)).encode(), "application/json")
    assert reply.status == 202

    killed_attempts: set[str] = set()
    form_committed_at_first_kill = False
    try:
        for round_ in (1, 2):
            worker = Worker(host_json, tmp_path / f"worker-{round_}.log", lease=2.0)
            try:
                killed_attempts |= kill_mid_element(worker, container, big_blob, killed_attempts)
            finally:
                worker.kill()
            assert not blob_committed(container, manifest_name(inst)), "a manifest exists for a partial archive"
            assert sim.confirmations == []
            if round_ == 1:
                form_committed_at_first_kill = blob_committed(container, f"{prefix(inst)}data/{form_id}")
            time.sleep(0.3)  # a dead process writes nothing more
            assert committed_blocks(container, big_blob)[0] == [] and not blob_committed(container, manifest_name(inst))
        assert len(killed_attempts) == 2, killed_attempts

        # The message the dead workers held comes back when its lease ends; a third worker finishes.
        worker = Worker(host_json, tmp_path / "worker-3.log", lease=2.0)
        try:
            wait_for(lambda: inst.id in [c[0] for c in sim.confirmations], timeout=180, interval=0.1, what="the confirmation")
            wait_for(lambda: queue_length(queue_client(azurite.connection_string, "altinn-events")) == 0, timeout=30, what="the queue to drain")
        finally:
            worker.stop()
            log_tail = worker.log_tail()
    finally:
        watcher.stop()

    assert archive_problems(container, sim, inst, download=True) == [], log_tail
    assert sim.complete_violations == []
    assert watcher.violations == [], watcher.violations[:5]
    assert watcher.looks > 100 and watcher.manifest_seen_at is not None
    committed, uncommitted = committed_blocks(container, big_blob)
    final_attempts = {b.split("-", 1)[0] for b in committed}
    assert len(final_attempts) == 1 and not (final_attempts & killed_attempts), "blocks of a killed attempt were committed"
    assert len(committed) == -(-BIG // MIB) and uncommitted == [], "the killed attempts' blocks were not discarded"
    assert peek_all(queue_client(azurite.connection_string, "altinn-events-poison")) == []
    downloads = {e: len([r for r in sim.requests if r["endpoint"] == "data" and r["path"].endswith(e)]) for e in (form_id, big_id)}
    assert downloads[big_id] == 3
    if form_committed_at_first_kill:
        assert downloads[form_id] == 1, "a committed element was downloaded again"
    print(
        f"\ncrash test: {BIG / MIB:.0f} MiB attachment, killed twice mid-element (attempts {sorted(killed_attempts)}), "
        f"archived whole by attempt {final_attempts.pop()}; watcher looked {watcher.looks} times, 0 violations; "
        f"form committed before the first kill: {form_committed_at_first_kill}, downloads {downloads}"
    )
