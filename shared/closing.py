"""Closing the loop once Altinn has accepted ``/complete``: the hand-off message to the agency's case
systems, and the substatus the submitter sees on the instance in their Altinn inbox.

Both run only after the ``confirmed.json`` marker exists (shared/archive.py) and neither can undo the
archive or its confirmation: a failure here is retried on the app's retry schedule like any other
transient failure, and the retry finds the archive confirmed and does only what is left.

Hand-off (``ARCHIVE_HANDOFF_QUEUE``, default ``altinn-archived``; schema in
``docs/handoff.schema.json``, guarantees in docs/handoff.md): at least once, never before the
confirmation. The worker that created the marker sends the message, then writes ``handoff.json``
(write-once); a duplicate run that finds that record sends nothing. A run that finds a marker but
no record waits a moment for the worker that is writing it, then sends the message itself (that
worker may have stopped): a duplicate is possible only then, and the message's ``instanceId`` lets
a consumer drop it.

Substatus (``ALTINN_SUBSTATUS_LABEL``, ``ALTINN_SUBSTATUS_DESCRIPTION``): set once per instance
(recorded in ``substatus.json``), not at all when storage already shows the same one, and not for
hard-deleted instances (storage purges those once confirmed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import telemetry
from shared.altinn import NotFound
from shared.archive import HANDOFF, SUBSTATUS, ArchiveState
from shared.errors import PermanentError, TransientError
from shared.models import Instance, InstanceRef, iso, parse_time, utc_now
from shared.runtime import Runtime, enqueue

log = logging.getLogger("altinn_mottak")

HANDOFF_VERSION = 1
# A marker younger than this without a hand-off record: the worker that wrote it is probably sending
# the message right now, so wait up to HANDOFF_WAIT_SECONDS for its record before sending it too.
HANDOFF_FRESH_SECONDS = 60.0
HANDOFF_WAIT_SECONDS = 10.0
HANDOFF_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Closing:
    """What the run that confirmed knows, for the steps after the confirmation."""

    ref: InstanceRef
    via: str
    replayed: bool
    event_id: str | None
    created_marker: bool  # this run wrote confirmed.json
    confirmed_at: str | None  # the marker's time when an earlier run wrote it
    manifest: bytes | None = field(default=None, repr=False)  # its bytes, when this run wrote it (saves a read)


def handoff_message(closing: Closing, container: str, manifest: bytes, confirmed_at: str | None) -> dict[str, Any]:
    """The hand-off message (docs/handoff.schema.json), from the stored manifest's own bytes."""
    doc = json.loads(manifest)
    ref = closing.ref
    return {
        "version": HANDOFF_VERSION,
        "org": ref.org,
        "app": ref.app,
        "instanceId": ref.instance_id,
        "partyId": ref.party_id,
        "instanceGuid": ref.instance_guid,
        "container": container,
        "manifestBlob": ref.prefix + "manifest.json",
        "manifestSha256": hashlib.sha256(manifest).hexdigest(),
        "archivedAt": doc.get("archivedAt"),
        "confirmedAt": confirmed_at,
        "elementCount": len(doc.get("dataElements") or []),
        "totalBytes": doc.get("totalBytes"),
        "hardDeleted": bool(doc.get("hardDeleted")),
        "eventId": closing.event_id,
        "via": "replay" if closing.replayed else closing.via,
    }


def _record_appears(rt: Runtime, ref: InstanceRef, sleep: Callable[[float], None]) -> bool:
    """Whether another worker's ``handoff.json`` appears within HANDOFF_WAIT_SECONDS."""
    deadline = time.monotonic() + HANDOFF_WAIT_SECONDS
    while time.monotonic() < deadline:
        if rt.archive.state(ref).handed_off:
            return True
        sleep(HANDOFF_POLL_SECONDS)
    return False


def _fresh(confirmed_at: str | None, now: datetime) -> bool:
    when = parse_time(confirmed_at)
    return when is None or (now - when).total_seconds() < HANDOFF_FRESH_SECONDS


def hand_off(rt: Runtime, closing: Closing, state: ArchiveState, *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Send the hand-off message unless it was sent; True when this call sent it. TransientError
    when it could not be sent (nothing is recorded then, so the retry sends it)."""
    from azure.core.exceptions import AzureError

    queue = rt.handoff_queue
    ref = closing.ref
    if queue is None or state.handed_off:
        return False
    if not closing.created_marker and _fresh(closing.confirmed_at, utc_now()) and _record_appears(rt, ref, sleep):
        return False
    confirmed_at = closing.confirmed_at if not closing.created_marker else iso(utc_now())
    manifest = closing.manifest if closing.manifest is not None else rt.archive.read_manifest(ref)
    message = handoff_message(closing, rt.settings.archive_container, manifest, confirmed_at)
    try:
        enqueue(queue, message, time_to_live=-1)  # no expiry: it waits for the case system however long
    except AzureError as exc:
        telemetry.record_failure("handoff", org=ref.org, app=ref.app)
        raise TransientError(f"hand-off: could not send the message ({type(exc).__name__}); the archive is confirmed") from None
    rt.archive.write_record(ref, HANDOFF, dict(message, sentAt=iso(datetime.now(UTC))))
    telemetry.record_handoff(org=ref.org, app=ref.app, via=message["via"])
    log.info("handed off to %s", queue.queue_name, extra={"instance": ref.instance_id, "org": ref.org, "app": ref.app, "event_id": closing.event_id})
    return True


def set_substatus(rt: Runtime, ref: InstanceRef, instance: Instance | None, state: ArchiveState, *, until: float | None) -> str | None:
    """Set the configured substatus once; ``set``, ``unchanged``, ``skipped`` or ``failed`` (None when
    there is nothing to do). TransientError when it should be tried again later."""
    wanted = rt.settings.substatus_for(ref.org, ref.app)
    if wanted is None or state.substatus_set:
        return None
    ctx = {"instance": ref.instance_id, "org": ref.org, "app": ref.app}
    try:
        if instance is None:
            instance = rt.altinn.get_instance(ref, until=until)
        if instance.hard_deleted:
            result, note = "skipped", "hard deleted: storage purges it once confirmed"
        elif instance.substatus == wanted:
            result, note = "unchanged", "storage shows it already"
        else:
            rt.altinn.set_substatus(ref, wanted[0], wanted[1], until=until)
            result, note = "set", ""
    except NotFound:
        result, note = "skipped", "storage no longer has the instance"
    except TransientError:
        telemetry.record_substatus("failed", org=ref.org, app=ref.app)
        raise
    except PermanentError as exc:
        # Refused (a 403 when the org may not, a 400): retrying will not help; said once, loudly.
        telemetry.record_substatus("failed", org=ref.org, app=ref.app)
        log.error("substatus not set: %s", exc.reason, extra=ctx | {"status": exc.status})
        result, note = "failed", exc.reason
    rt.archive.write_record(ref, SUBSTATUS, {"label": wanted[0], "description": wanted[1], "result": result, "note": note, "at": iso(utc_now())})
    if result != "failed":
        telemetry.record_substatus(result, org=ref.org, app=ref.app)
        log.info("substatus %s", result, extra=ctx)
    return result
