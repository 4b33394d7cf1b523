"""Queue triggers: the storage extension's queue listener (batches, newBatchThreshold, polling back-off,
message leases renewed at half time, retries after visibilityTimeout, ``{queue}-poison``)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as TriggerQueueMessage
from azure.storage.queue import QueueMessage

from .bindings import _Function
from .hostjson import POLL_MINIMUM

if TYPE_CHECKING:
    from .host import LocalHost

log = logging.getLogger(__package__)

# Sources as for the host.json defaults (hostjson.py), in sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/.
BACKOFF_RANDOMIZATION = 0.2  # Timers/RandomizedExponentialBackoffStrategy.cs: RandomizationFactor
MESSAGE_LEASE = 600.0  # Queues/QueueListener.cs: _visibilityTimeout = TimeSpan.FromMinutes(10), renewed at half time

# Follows QueueListener (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
# src/Shared/Queues/QueueListener.cs) and QueueProcessor (same folder, QueueProcessor.cs), the code of the
# queue trigger in Microsoft.Azure.WebJobs.Extensions.Storage.Queues.


class _Backoff:
    """RandomizedExponentialBackoffStrategy (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.
    Storage.Common/src/Shared/Timers/RandomizedExponentialBackoffStrategy.cs), as QueueListener builds it: from
    QueuePollingIntervals.Minimum (100 ms) to maxPollingInterval, with that minimum as the delta. Each empty
    poll waits ``minimum + U(0.8, 1.2) * 2**(n-1) * minimum`` (n = 1, 2, ...; the first wait is the minimum
    itself) until that reaches the maximum, then the maximum; a poll that found messages starts it over."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError("the minimum interval must not be greater than the maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.delta = minimum
        self.current = 0.0
        self.exponent = 0
        self.rng = rng or random.Random()

    def next_delay(self, succeeded: bool) -> float:
        if succeeded:
            self.current = self.minimum
            self.exponent = 1
        elif self.current != self.maximum:
            interval = self.minimum
            if self.exponent > 0:
                factor = self.rng.uniform(1.0 - BACKOFF_RANDOMIZATION, 1.0 + BACKOFF_RANDOMIZATION)
                interval += factor * 2.0 ** (self.exponent - 1) * self.delta
            if interval < self.maximum:
                self.current = interval
                self.exponent += 1
            else:
                self.current = self.maximum
        return self.current


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str | None  # as the SDK types it (always set on a received or updated message)
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # settled (deleted, released or poisoned), or ownership lost: no more renewals


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None


class _QueueListener:
    """Receives the messages of one queue and runs one function on each, in batches."""

    def __init__(self, host: LocalHost, fn: _Function) -> None:
        self.host = host
        self.fn = fn
        self.queue_name = fn.queue_name
        self.poison_name = f"{fn.queue_name}-poison"
        self.client = host._queue_client(self.queue_name)
        self.poison_client = host._queue_client(self.poison_name)
        self.batch_size, self.new_batch_threshold = host.batching
        self._backoff = _Backoff(POLL_MINIMUM, host.settings.max_polling_interval)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._leases: dict[str, _Lease] = {}
        self._stopping = threading.Event()
        self._renewer_stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        self._queue_exists: bool | None = None
        self._told_missing = False
        self._storage_down = False
        self._serial = 0

    @property
    def held(self) -> int:
        """Messages received and not settled yet (QueueListener's _processing)."""
        with self._cond:
            return self._in_flight

    def start(self) -> None:
        self._poller = threading.Thread(target=self._poll_loop, name=f"{self.fn.name}-poller", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name=f"{self.fn.name}-lease-renewer", daemon=True)
        self._poller.start()
        self._renewer.start()

    def stop(self, deadline: float) -> bool:
        """Stop receiving, let held messages finish (StopAsync waits for _processing). False if the
        deadline passed first; those messages come back when their lease ends."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._poller is not None:
            self._poller.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            while self._in_flight and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            drained = self._in_flight == 0
        self._renewer_stop.set()
        if self._renewer is not None:
            self._renewer.join(max(0.0, deadline - time.monotonic()))
        return drained and not (self._poller is not None and self._poller.is_alive())

    # polling: QueueListener.ExecuteAsync and the TaskSeriesTimer that repeats it

    def _poll_loop(self) -> None:
        found_since_last_delay = False
        while not self._stopping.is_set():
            messages = self._receive()
            if not messages:
                # CreateBackoffResult: the queue is empty, missing or failing.
                delay = self._backoff.next_delay(succeeded=found_since_last_delay)
                found_since_last_delay = False
                log.debug("queue %s: backing off for %.0f ms", self.queue_name, delay * 1000)
                self._stopping.wait(delay)
                continue
            for message in messages:
                self._dispatch(message)
            found_since_last_delay = True
            # CreateSucceededResult -> WaitForNewBatchThreshold: the next batch as soon as at most
            # newBatchThreshold messages are in flight, so at most batchSize + newBatchThreshold at once.
            with self._cond:
                while self._in_flight > self.new_batch_threshold and not self._stopping.is_set():
                    self._cond.wait()

    def _receive(self) -> list[QueueMessage]:
        """One batch, or [] when there is none. The queue's existence is checked first (and again after any
        error), and a missing queue is not created: it is polled, with back-off, until it exists."""
        try:
            if not self._queue_exists:
                self._queue_exists = self._exists()
                if not self._queue_exists:
                    if not self._told_missing:
                        log.info("queue %s does not exist; polling until it does (the host does not create it)", self.queue_name)
                        self._told_missing = True
                    return []
            # One Get Messages request for up to batchSize (ReceiveMessagesAsync(batchSize, ...)): the first
            # page only, since the SDK's pager asks again whenever a page is not full.
            pages = self.client.receive_messages(messages_per_page=self.batch_size, visibility_timeout=self.host._lease_seconds).by_page()
            messages = list(next(pages, []))
        except Exception as exc:  # storage unavailable: log once, back off, keep trying
            self._queue_exists = None
            if not self._storage_down:
                log.warning("queue %s: cannot receive messages: %s", self.queue_name, exc)
                self._storage_down = True
            return []
        if self._storage_down:
            log.info("queue %s: receiving messages again", self.queue_name)
            self._storage_down = False
        self._told_missing = False
        return messages

    def _exists(self) -> bool:
        try:
            self.client.get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    def _dispatch(self, message: QueueMessage) -> None:
        """ProcessMessageAsync, run concurrently with the other messages and the next poll."""
        lease = _Lease(message.id, message.pop_receipt, time.monotonic() + self.host.message_lease / 2)
        with self._cond:
            self._in_flight += 1
            self._leases[message.id] = lease
            self._serial += 1
            serial = self._serial
        thread = threading.Thread(target=self._run, args=(message, lease), name=f"{self.fn.name}-message-{serial}", daemon=True)
        thread.start()

    def _run(self, message: QueueMessage, lease: _Lease) -> None:
        try:
            self._process(message, lease)
        except Exception:
            # A failed delete/update/poison write: the message comes back after its lease,
            # as with the real host (at-least-once).
            log.exception("queue %s: cannot settle message %s", self.queue_name, message.id)
        finally:
            with lease.lock:
                lease.done = True
            with self._cond:
                self._leases.pop(message.id, None)
                self._in_flight -= 1
                self._cond.notify_all()

    # lease renewal: the UpdateQueueMessageVisibilityCommand timer of each message

    def _renew_loop(self) -> None:
        tick = min(1.0, self.host.message_lease / 4)
        while not self._renewer_stop.wait(tick):
            self._renew_due()

    def _renew_due(self) -> None:
        now = time.monotonic()
        with self._cond:
            due = [lease for lease in self._leases.values() if lease.renew_at <= now]
        for lease in due:
            with lease.lock:
                if lease.done:
                    continue
                try:
                    receipt = self.client.update_message(lease.message_id, pop_receipt=lease.pop_receipt, visibility_timeout=self.host._lease_seconds)
                except Exception as exc:
                    if _status(exc) in (400, 404):  # pop receipt mismatch, message or queue gone: ownership lost
                        log.warning("queue %s: lost the lease of message %s: %s", self.queue_name, lease.message_id, exc)
                        lease.done = True
                    else:  # try again sooner, before the lease ends
                        log.warning("queue %s: cannot renew lease: %s", self.queue_name, exc)
                        lease.renew_at = now + 1.0
                    continue
                lease.pop_receipt = receipt.pop_receipt
                lease.renew_at = now + self.host.message_lease / 2

    # one message: QueueProcessor.BeginProcessingMessageAsync, the invocation, CompleteProcessingMessageAsync

    def _process(self, message: QueueMessage, lease: _Lease) -> None:
        host, fn = self.host, self.fn
        settings = host.settings
        dequeue_count = int(message.dequeue_count or 0)
        if dequeue_count > settings.max_dequeue_count:
            log.warning(
                "queue %s: message %s has dequeue count %d > maxDequeueCount %d; moving it to %s without invoking",
                self.queue_name,
                message.id,
                dequeue_count,
                settings.max_dequeue_count,
                self.poison_name,
            )
            self._poison(message, lease)
            return
        body = _decode(message.content, settings.message_encoding)
        if body is None:
            log.error(
                "queue %s: message %s is not valid base64 (messageEncoding=base64); moving it to %s without invoking",
                self.queue_name,
                message.id,
                self.poison_name,
            )
            self._poison(message, lease)
            return
        trigger_message = TriggerQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        reason = f"New queue message detected on '{self.queue_name}'."
        try:
            host._invocations.invoke(fn, {fn.arg_name: trigger_message}, reason)
        except Exception:  # the function raised, or ran past functionTimeout: a failed attempt
            if dequeue_count >= settings.max_dequeue_count:
                log.warning(
                    "queue %s: message %s has reached maxDequeueCount of %d; moving it to %s",
                    self.queue_name,
                    message.id,
                    settings.max_dequeue_count,
                    self.poison_name,
                )
                self._poison(message, lease)
            else:
                self._release(message, lease)
            return
        with lease.lock:
            lease.done = True
            self._delete(message, lease)

    def _release(self, message: QueueMessage, lease: _Lease) -> None:
        """QueueProcessor.ReleaseMessageAsync: visible again after visibilityTimeout, for another attempt."""
        with lease.lock:
            lease.done = True
            try:
                self.client.update_message(message.id, pop_receipt=lease.pop_receipt, visibility_timeout=int(self.host.settings.visibility_timeout))
            except HttpResponseError as exc:
                if _status(exc) not in (400, 404):  # someone else took it over, or it is gone
                    raise

    def _delete(self, message: QueueMessage, lease: _Lease) -> None:
        """QueueProcessor.DeleteMessageAsync (under the lease's lock)."""
        try:
            self.client.delete_message(message.id, lease.pop_receipt)
        except HttpResponseError as exc:
            if _status(exc) not in (400, 404):  # pop receipt mismatch, or message or queue gone
                raise

    def _poison(self, message: QueueMessage, lease: _Lease) -> None:
        """QueueProcessor.HandlePoisonMessageAsync: copy the original content to ``{queue}-poison``,
        creating that queue if it does not exist (AddMessageAndCreateIfNotExistsAsync, in
        sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/StorageQueueExtensions.cs),
        then delete the message."""
        with lease.lock:
            lease.done = True
            try:
                self.poison_client.send_message(message.content)  # the original content, as is
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self.poison_client.create_queue()
                self.poison_client.send_message(message.content)
            self._delete(message, lease)
        self.host._invocations.count(self.fn.name, poisoned=1)


def _decode(content: Any, encoding: str) -> bytes | None:
    """Message content as the function sees it; None if base64 is expected and absent."""
    if isinstance(content, bytes):
        raw = content
    else:
        raw = str(content or "").encode("utf-8")
    if encoding == "none":
        return raw
    try:  # .NET's Convert.FromBase64String ignores white space; so do we
        return base64.b64decode(re.sub(rb"\s+", b"", raw), validate=True)
    except (binascii.Error, ValueError):
        return None
