"""Checking an archive the way an auditor would: from Blob Storage, against what the simulator
says the bytes must be (``sim.expected_sha256``), never against what our code believes; queue
readers; the operator's CLI in a process of its own; the /complete guard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def prefix(inst: Any) -> str:
    return f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"


def manifest_name(inst: Any) -> str:
    return prefix(inst) + "manifest.json"


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; its value. AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- archive verification ---------------------------------------------------------------------


def read_manifest(container: Any, inst: Any) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """(manifest document or None, manifest blob metadata)."""
    from azure.core.exceptions import ResourceNotFoundError

    blob = container.get_blob_client(manifest_name(inst))
    try:
        downloader = blob.download_blob()
        doc, meta = json.loads(downloader.readall()), dict(downloader.properties.metadata or {})
    except ResourceNotFoundError:
        return None, {}
    at = confirmed_at(container, inst)
    if at:
        meta["confirmed"] = at  # the confirmed.json marker beside the manifest
    return doc, meta


def confirmed_at(container: Any, inst: Any) -> str | None:
    """The ``confirmedAt`` of the write-once ``confirmed.json`` marker, None without one."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return (container.get_blob_client(prefix(inst) + "confirmed.json").get_blob_properties().metadata or {}).get("confirmedAt")
    except ResourceNotFoundError:
        return None


def archive_problems(container: Any, sim: Any, inst: Any, *, download: bool = True, require_confirmed: bool = True) -> list[str]:
    """Everything wrong with an instance's archive; [] when it is complete and correct.

    Complete and correct: a manifest listing exactly the instance's data elements, each with the
    size and sha256 the simulator generated, each blob committed with that size and that sha256 in
    its metadata, and (``download``) the blob's bytes hashing to it. With ``require_confirmed`` the
    ``confirmed.json`` marker must be there.
    """
    from azure.core.exceptions import ResourceNotFoundError

    manifest, meta = read_manifest(container, inst)
    if manifest is None:
        return [f"{inst.id}: no manifest"]
    problems = []
    if require_confirmed and not meta.get("confirmed"):
        problems.append(f"{inst.id}: no confirmed.json marker")
    if (manifest.get("partyId"), manifest.get("instanceGuid")) != (inst.party_id, inst.instance_guid):
        problems.append(f"{inst.id}: manifest names another instance")
    entries = {e["dataElementId"]: e for e in manifest.get("dataElements", [])}
    expected_ids = [e["id"] for e in inst.elements]
    if sorted(entries) != sorted(expected_ids) or len(manifest.get("dataElements", [])) != len(expected_ids):
        problems.append(f"{inst.id}: manifest lists {sorted(entries)}, the instance has {sorted(expected_ids)}")
    for element in inst.elements:
        entry = entries.get(element["id"])
        if entry is None:
            continue
        want_sha = sim.expected_sha256(element["id"])
        want_size = inst._specs[element["id"]].size
        if entry["sha256"] != want_sha or entry["size"] != want_size:
            problems.append(
                f"{inst.id}/{element['id']}: manifest says {entry['size']} bytes sha256 {entry['sha256'][:12]}, Altinn has {want_size} {want_sha[:12]}"
            )
        blob = container.get_blob_client(entry["blob"])
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            problems.append(f"{inst.id}/{element['id']}: the manifest references a blob that does not exist")
            continue
        if props.size != entry["size"] or (props.metadata or {}).get("sha256") != entry["sha256"]:
            stored = (props.metadata or {}).get("sha256")
            problems.append(f"{inst.id}/{element['id']}: blob has {props.size} bytes sha256 {stored}, manifest {entry['size']} {entry['sha256']}")
        if download:
            digest = hashlib.sha256()
            for chunk in blob.download_blob().chunks():
                digest.update(chunk)
            if digest.hexdigest() != want_sha:
                problems.append(f"{inst.id}/{element['id']}: stored bytes hash to {digest.hexdigest()[:12]}, expected {want_sha[:12]}")
    return problems


def install_complete_guard(sim: Any, container: Any) -> None:
    """At the moment /complete reaches the simulator, the archive must already be whole.

    The check runs on the simulator's request thread before it records the confirmation; a
    failure lands in ``sim.complete_violations`` (an early confirmation). Metadata only (no
    download): the manifest exists, names every element with the bytes Altinn has, and every
    referenced blob is committed with that size and sha256.
    """

    def check(inst: Any) -> None:
        problems = archive_problems(container, sim, inst, download=False, require_confirmed=False)
        if problems:
            raise AssertionError(f"/complete for {inst.id} before its archive was whole: {problems}")

    sim.on_complete = check


def committed_blocks(container: Any, name: str) -> tuple[list[str], list[str]]:
    """(committed block ids, uncommitted block ids) of a blob."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        committed, uncommitted = container.get_blob_client(name).get_block_list("all")
    except ResourceNotFoundError:
        return [], []
    return [b.id for b in committed], [b.id for b in uncommitted]


def blob_committed(container: Any, name: str) -> bool:
    return bool(container.get_blob_client(name).exists())


# -- queues -----------------------------------------------------------------------------------


def queue_client(connection_string: str, name: str) -> Any:
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    return QueueClient.from_connection_string(
        connection_string, name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
    )


def handoff_problems(connection_string: str, sim: Any, archived: list[Any]) -> list[str]:
    """What is wrong with the hand-off queue (``ARCHIVE_HANDOFF_QUEUE`` of this test) after a run:
    [] when every archived instance has exactly one message, no other instance has one, and every
    message was put on the queue after Altinn recorded that instance's confirmation."""
    from azure.core.exceptions import ResourceNotFoundError

    name = os.environ.get("ARCHIVE_HANDOFF_QUEUE", "altinn-archived")
    client = queue_client(connection_string, name)
    found: list[tuple[Any, dict[str, Any]]] = []
    try:
        for msg in client.receive_messages(messages_per_page=32, visibility_timeout=60, max_messages=10_000):
            found.append((msg, json.loads(msg.content)))
    except ResourceNotFoundError:
        pass
    counts: dict[str, int] = {}
    for _, doc in found:
        counts[doc["instanceId"]] = counts.get(doc["instanceId"], 0) + 1
    problems = [f"{iid}: {n} hand-off messages" for iid, n in counts.items() if n != 1]
    wanted = {inst.id for inst in archived}
    problems += [f"{iid}: archived, no hand-off message" for iid in sorted(wanted - set(counts))]
    problems += [f"{iid}: a hand-off message for an instance not archived" for iid in sorted(set(counts) - wanted)]
    first_confirmed: dict[str, float] = {}
    for iid, at in sim.confirmations:
        first_confirmed[iid] = min(at, first_confirmed.get(iid, at))
    for msg, doc in found:
        confirmed = first_confirmed.get(doc["instanceId"])
        # Queue insertion times have whole seconds: 1 s of slack.
        if confirmed is None or msg.inserted_on.timestamp() + 1.0 < confirmed:
            problems.append(f"{doc['instanceId']}: hand-off message before Altinn recorded the confirmation")
    return problems


def peek_all(client: Any) -> list[dict[str, Any]]:
    """Every message of a queue (visible ones), decoded from base64 JSON, without taking them."""
    # peek returns at most 32; receive with a short lease and give back to see more.
    messages = []
    seen = set()
    for msg in client.receive_messages(messages_per_page=32, visibility_timeout=30, max_messages=5000):
        if msg.id in seen:
            break
        seen.add(msg.id)
        messages.append((msg, json.loads(msg.content)))
    for msg, _ in messages:
        client.update_message(msg.id, pop_receipt=msg.pop_receipt, visibility_timeout=0)
    return [doc for _, doc in messages]


def queue_length(client: Any) -> int:
    return int(client.get_queue_properties().approximate_message_count or 0)


def replay_poison(*, instance: str | None = None, instances: list[str] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Move messages from the poison queue back, as an operator would: the operations command
    ``python -m shared.cli replay-poison --json`` in a process of its own, with the app's settings
    (the environment); ``--all`` unless instances are given. Its JSON report (``replayed``: how many)."""
    args = [sys.executable, "-m", "shared.cli", "replay-poison", "--json"]
    selected = ([instance] if instance else []) + list(instances or [])
    args += [a for i in selected for a in ("--instance", i)] if selected else ["--all"]
    if dry_run:
        args.append("--dry-run")
    out = subprocess.run(args, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, f"replay-poison failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return json.loads(out.stdout)


def poison_report() -> dict[str, Any]:
    """``python -m shared.cli poison --json``: what an operator sees (first 32, with reasons)."""
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "poison", "--json"], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"poison failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return json.loads(out.stdout)
