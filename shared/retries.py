"""The archive function's own retry schedule, and the records ``status`` shows of deferred attempts.

Why the app owns it: the Functions host retries a failed queue message ``maxDequeueCount`` (5) times,
``visibilityTimeout`` (1 min) apart, then moves it to ``{queue}-poison`` where it expires after
7 days. An Altinn outage of more than a few minutes, a file scan that stays ``Pending``, or a Key
Vault reference that is not resolved yet would send every event of that time to poison. Instead, on
a transient failure the archive function writes the message again with a visibility delay that
grows (``ARCHIVE_RETRY_SCHEDULE``, seconds, the last repeating, with +-10 % jitter), carrying the
attempt count and the first failure's time (:class:`~shared.models.RetryState`), and completes the
current one; a crash in between leaves a harmless duplicate. After ``ARCHIVE_RETRY_MAX_HOURS`` it
parks the message itself, with the last reason and no expiry. The host's ``maxDequeueCount`` stays
as the backstop for crashes and timeouts only.

Each deferred attempt also leaves a small record in the state container
(``ARCHIVE_STATE_CONTAINER``, not the archive): ``deferred/{org}/{app}/{partyId}/{instanceGuid}.json``
with the attempt, the next attempt's time and the reason, overwritten on every deferral and deleted
when the instance is archived or parked. Best effort: the queue message is the truth, the record is
what ``altinn-mottak status`` lists.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.models import InstanceRef, QueueMessage, RetryState, iso

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 3600.0  # an upstream Retry-After is honoured up to an hour
JITTER = 0.1
DEFERRED = "deferred/"


@dataclass(frozen=True)
class Decision:
    """What to do after a transient failure: schedule the next attempt in ``delay`` seconds, or park."""

    park: bool
    delay: float
    retry: RetryState


def decide(
    settings: Settings,
    message: QueueMessage,
    reason: str,
    *,
    status: int | None,
    retry_after: float | None,
    now: datetime,
    rng: random.Random | None = None,
) -> Decision:
    """Pure: the next step after ``message``'s attempt failed with ``reason``."""
    previous = message.retry
    first = previous.first_failure_at if previous else now
    attempt = (previous.attempt if previous else 0) + 1
    not_found = ((previous.not_found if previous else 0) + 1) if status == 404 else 0
    retry = RetryState(attempt, first, reason[:2000], status, not_found)
    if now - first >= timedelta(hours=settings.retry_max_hours):
        return Decision(True, 0.0, retry)
    delay = settings.retry_delay(attempt)
    delay *= 1 + (rng or random).uniform(-JITTER, JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    # Never later than the end of the retry window: the last attempt there decides about parking.
    left = (first + timedelta(hours=settings.retry_max_hours) - now).total_seconds()
    delay = max(0.0, min(delay, left + 1.0))
    return Decision(False, delay, retry)


def visibility_seconds(delay: float) -> int:
    """Queue visibility timeouts are whole seconds (at most 7 days)."""
    return max(0, min(7 * 24 * 3600, math.ceil(delay)))


def record_name(ref: InstanceRef) -> str:
    return f"{DEFERRED}{ref.org}/{ref.app}/{ref.party_id}/{ref.instance_guid}.json"


class RetryRecords:
    """The deferred-attempt records in the state container (best effort, never raises)."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self._ready = False

    def record(self, message: QueueMessage, retry: RetryState, next_at: datetime) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        doc = {
            "instance": message.ref.to_dict(),
            "eventId": message.event_id,
            "via": message.via,
            "attempt": retry.attempt,
            "firstFailureAt": iso(retry.first_failure_at),
            "nextAttemptAt": iso(next_at),
            "lastReason": retry.last_reason,
            "lastStatus": retry.last_status,
        }
        body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        blob = self.container.get_blob_client(record_name(message.ref))
        try:
            try:
                blob.upload_blob(body, overwrite=True)
            except ResourceNotFoundError:
                self._create()
                blob.upload_blob(body, overwrite=True)
        except AzureError as exc:
            log.warning("could not record the deferred attempt (%s); the retry itself is scheduled", type(exc).__name__)

    def clear(self, ref: InstanceRef) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self.container.get_blob_client(record_name(ref)).delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            log.warning("could not delete the deferred-attempt record (%s)", type(exc).__name__)

    def _create(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            pass

    def list(self, limit: int = 1000) -> tuple[list[dict[str, Any]], bool]:
        """The deferred attempts recorded (at most ``limit``), next attempt first; and whether more exist."""
        from azure.core.exceptions import ResourceNotFoundError

        items: list[dict[str, Any]] = []
        more = False
        try:
            for blob in self.container.list_blobs(name_starts_with=DEFERRED):
                if len(items) >= limit:
                    more = True
                    break
                try:
                    doc = json.loads(self.container.download_blob(blob.name).readall())
                except (ValueError, ResourceNotFoundError):
                    continue
                if isinstance(doc, dict):
                    items.append(doc)
        except ResourceNotFoundError:
            return [], False
        items.sort(key=lambda d: str(d.get("nextAttemptAt") or "~"))  # ISO times in UTC sort as text
        return items, more
