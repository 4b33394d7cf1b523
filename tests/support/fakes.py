"""In-memory stand-ins behind the small interfaces the product uses, for the fast test layer
(tests/inprocess): blob containers, queues, and the HTTP transport to Altinn and Maskinporten.

They model the behaviour the product relies on, not the services: write-once uploads
(``overwrite=False`` -> ResourceExistsError), staged blocks committed in a list, metadata, a
listing by prefix; queues with visibility timeouts on a clock the test controls, base64 as the
Functions host reads it, pop receipts; and an Altinn whose every answer a test can script. The one
test that proves the real component stays in tests/integration (Azurite, the simulator over
sockets); these only make the many branches cheap to pin.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

# -- blobs ------------------------------------------------------------------------------------------


@dataclass
class _Blob:
    data: bytes
    metadata: dict[str, str]
    content_type: str | None
    content_disposition: str | None
    last_modified: datetime


class MemoryContainer:
    """A blob container: what ContainerClient and BlobClient calls the product makes, in memory."""

    def __init__(self, name: str = "container", *, exists: bool = False) -> None:
        self.name = name
        self.exists = exists
        self.blobs: dict[str, _Blob] = {}
        self.staged: dict[str, dict[str, bytes]] = {}
        self.writes: list[tuple[str, str]] = []  # (operation, blob name), in order
        self.refuse_writes: Callable[[str], bool] = lambda name: False

    def changes(self) -> list[tuple[str, str]]:
        """Writes that changed or removed a blob that existed (an archive must have none)."""
        return [(op, name) for op, name in self.writes if op in ("overwrite", "metadata", "delete")]

    def create_container(self) -> None:
        if self.exists:
            raise ResourceExistsError("exists")
        self.exists = True

    def get_blob_client(self, name: str) -> MemoryBlob:
        return MemoryBlob(self, name)

    def download_blob(self, name: str) -> Any:
        return self.get_blob_client(name).download_blob()

    def list_blobs(self, name_starts_with: str | None = None, include: Any = None, results_per_page: int | None = None) -> list[Any]:
        if not self.exists:
            raise ResourceNotFoundError("no container")
        return [
            SimpleNamespace(
                name=name,
                size=len(b.data),
                metadata=dict(b.metadata),
                content_settings=SimpleNamespace(content_type=b.content_type, content_disposition=b.content_disposition),
                last_modified=b.last_modified,
            )
            for name, b in sorted(self.blobs.items())
            if name.startswith(name_starts_with or "")
        ]

    def _put(self, name: str, data: bytes, settings: Any, metadata: dict[str, str] | None, op: str) -> None:
        if not self.exists:
            raise ResourceNotFoundError("no container")
        if self.refuse_writes(name):
            from azure.core.exceptions import ServiceRequestError

            raise ServiceRequestError("storage refused (test)")
        if name in self.blobs:
            op = "overwrite"
        self.blobs[name] = _Blob(
            bytes(data),
            dict(metadata or {}),
            getattr(settings, "content_type", None),
            getattr(settings, "content_disposition", None),
            datetime.now(UTC),
        )
        self.writes.append((op, name))


class MemoryBlob:
    def __init__(self, container: MemoryContainer, name: str) -> None:
        self.container = container
        self.name = name

    def exists(self) -> bool:
        return self.name in self.container.blobs

    def upload_blob(self, data: bytes, *, overwrite: bool = False, content_settings: Any = None, metadata: dict[str, str] | None = None, **_: Any) -> None:
        if not overwrite and self.exists():
            raise ResourceExistsError("blob exists")
        self.container._put(self.name, data, content_settings, metadata, "put" if overwrite else "put-once")

    def stage_block(self, block_id: str, data: bytes, **_: Any) -> None:
        self.container.staged.setdefault(self.name, {})[block_id] = bytes(data)

    def commit_block_list(
        self, ids: list[str], *, content_settings: Any = None, metadata: dict[str, str] | None = None, match_condition: Any = None, **_: Any
    ) -> None:
        from azure.core import MatchConditions

        if match_condition == MatchConditions.IfMissing and self.exists():
            raise ResourceExistsError("blob exists")
        staged = self.container.staged.pop(self.name, {})
        self.container._put(self.name, b"".join(staged[i] for i in ids), content_settings, metadata, "commit-once" if match_condition else "commit")

    def set_blob_metadata(self, metadata: dict[str, str]) -> None:
        blob = self._blob()
        blob.metadata = dict(metadata)
        self.container.writes.append(("metadata", self.name))

    def get_blob_properties(self) -> Any:
        blob = self._blob()
        return SimpleNamespace(metadata=dict(blob.metadata), size=len(blob.data))

    def download_blob(self) -> Any:
        blob = self._blob()
        return SimpleNamespace(readall=lambda: blob.data, size=len(blob.data), properties=SimpleNamespace(metadata=dict(blob.metadata)))

    def delete_blob(self) -> None:
        self._blob()
        del self.container.blobs[self.name]
        self.container.writes.append(("delete", self.name))

    def _blob(self) -> _Blob:
        if self.name not in self.container.blobs:
            raise ResourceNotFoundError("no blob")
        return self.container.blobs[self.name]


# -- queues -----------------------------------------------------------------------------------------


@dataclass
class _Message:
    id: str
    content: str  # as stored (base64 for the app's queues)
    visible_at: float
    expires_at: float | None
    pop_receipt: str = ""
    dequeue_count: int = 0
    inserted_on: datetime = field(default_factory=lambda: datetime.now(UTC))


class MemoryQueueStore:
    """One queue's messages, on a clock the test may move (``clock``, seconds)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic, *, exists: bool = True) -> None:
        self.name = name
        self.clock = clock
        self.exists = exists
        self.messages: list[_Message] = []
        self.sent: list[dict[str, Any]] = []  # every send, with its options

    def visible(self) -> list[_Message]:
        now = self.clock()
        self.messages = [m for m in self.messages if m.expires_at is None or m.expires_at > now]
        return [m for m in self.messages if m.visible_at <= now]


class MemoryQueue:
    """A QueueClient on a store; ``base64`` like TextBase64Encode/DecodePolicy, else the raw text."""

    _ids = itertools.count(1)

    def __init__(self, store: MemoryQueueStore, *, base64_text: bool) -> None:
        self.store = store
        self.queue_name = store.name
        self.base64_text = base64_text

    def _encode(self, text: str) -> str:
        return base64.b64encode(text.encode()).decode() if self.base64_text else text

    def _decode(self, text: str) -> str:
        return base64.b64decode(text).decode() if self.base64_text else text

    def _need(self) -> None:
        if not self.store.exists:
            raise ResourceNotFoundError("no queue")

    def create_queue(self) -> None:
        if self.store.exists:
            raise ResourceExistsError("exists")
        self.store.exists = True

    def send_message(self, content: str, *, visibility_timeout: int | None = None, time_to_live: int | None = None) -> Any:
        self._need()
        stored = self._encode(content)
        if len(stored) > 64 * 1024:
            from azure.core.exceptions import HttpResponseError

            error = HttpResponseError("RequestBodyTooLarge")
            error.status_code = 413
            raise error
        now = self.store.clock()
        ttl = 7 * 24 * 3600 if time_to_live is None else time_to_live
        message = _Message(f"m{next(self._ids)}", stored, now + (visibility_timeout or 0), None if ttl == -1 else now + ttl)
        self.store.messages.append(message)
        self.store.sent.append({"content": content, "visibility_timeout": visibility_timeout, "time_to_live": time_to_live})
        return SimpleNamespace(id=message.id)

    def receive_messages(self, *, max_messages: int = 32, visibility_timeout: int = 30, messages_per_page: int | None = None) -> list[Any]:
        self._need()
        out = []
        for m in self.store.visible()[:max_messages]:
            m.pop_receipt = uuid.uuid4().hex
            m.dequeue_count += 1
            m.visible_at = self.store.clock() + visibility_timeout
            out.append(
                SimpleNamespace(id=m.id, content=self._decode(m.content), pop_receipt=m.pop_receipt, dequeue_count=m.dequeue_count, inserted_on=m.inserted_on)
            )
        return out

    def peek_messages(self, max_messages: int = 32) -> list[Any]:
        self._need()
        return [SimpleNamespace(id=m.id, content=self._decode(m.content), inserted_on=m.inserted_on) for m in self.store.visible()[:max_messages]]

    def _find(self, message_id: str, pop_receipt: str) -> _Message:
        for m in self.store.messages:
            if m.id == message_id and m.pop_receipt == pop_receipt:
                return m
        raise ResourceNotFoundError("no such message or receipt")

    def delete_message(self, message_id: Any, pop_receipt: str | None = None) -> None:
        if not isinstance(message_id, str):
            message_id, pop_receipt = message_id.id, message_id.pop_receipt
        self.store.messages.remove(self._find(message_id, pop_receipt or ""))

    def update_message(self, message_id: str, pop_receipt: str, *, visibility_timeout: int = 0) -> None:
        self._find(message_id, pop_receipt).visible_at = self.store.clock() + visibility_timeout

    def get_queue_properties(self) -> Any:
        self._need()
        self.store.visible()
        return SimpleNamespace(approximate_message_count=len(self.store.messages))

    def clear_messages(self) -> None:
        self.store.messages.clear()


def documents(queue: MemoryQueueStore) -> list[dict[str, Any]]:
    """The JSON documents on an app queue (base64 as the host reads them), visible or not."""
    return [json.loads(base64.b64decode(m.content)) for m in queue.messages]


# -- HTTP to Altinn and Maskinporten ---------------------------------------------------------------


class FakeResponse:
    """Enough of requests.Response for the product: status, headers, a raw body read in pieces."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, content_type: str | None = "application/json") -> None:
        self.status_code = status
        self.headers = {"Content-Length": str(len(body))} | ({"Content-Type": content_type} if content_type else {}) | dict(headers or {})
        self._body = body
        self._pos = 0
        self.closed = False
        self.raw = self

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        end = len(self._body) if amt is None else min(len(self._body), self._pos + amt)
        chunk = self._body[self._pos : end]
        self._pos = end
        return chunk

    def close(self) -> None:
        self.closed = True


Handler = Callable[["Call"], FakeResponse]


@dataclass
class Call:
    method: str
    url: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json: Any


class FakeAltinn:
    """Altinn storage, the token exchange, Events subscriptions and Maskinporten, as a transport
    (``requests.Session.request``) that answers from memory. ``instances`` holds storage documents
    by ``partyId/guid``, ``blobs`` the stored bytes by element id; ``script`` lets a test answer a
    call its own way first (return None to fall through)."""

    def __init__(self, platform: str = "http://platform.localhost", org: str = "ttd") -> None:
        self.platform = platform
        self.org = org
        self.instances: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.subscriptions: dict[int, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.confirmations: list[str] = []
        self.substatus_updates: list[tuple[str, str, str | None]] = []
        self.complete_allowed = True
        self.script: list[Callable[[Call], FakeResponse | None]] = []
        self.on_complete: Callable[[str], None] | None = None
        self._key = b"fake-altinn-signing-key-for-tests-only"

    # -- set-up

    def add_instance(
        self, party: str, guid: str, elements: list[tuple[str, bytes, str]], *, ended: bool = True, app: str = "apps-test", **status: Any
    ) -> dict[str, Any]:
        """``elements``: (id, bytes, dataType)."""
        doc: dict[str, Any] = {
            "id": f"{party}/{guid}",
            "appId": f"{self.org}/{app}",
            "org": self.org,
            "instanceOwner": {"partyId": party},
            "process": {"started": "2025-01-01T09:00:00Z"} | ({"ended": "2025-01-01T10:00:00Z", "endEvent": "EndEvent_1"} if ended else {}),
            "status": {"isArchived": ended, "isHardDeleted": False} | status,
            "data": [],
            "lastChanged": "2025-01-01T10:00:00Z",
        }
        for element_id, body, data_type in elements:
            doc["data"].append(
                {"id": element_id, "dataType": data_type, "contentType": "application/octet-stream", "size": len(body), "fileScanResult": "NotApplicable"}
            )
            self.blobs[element_id] = body
        self.instances[doc["id"]] = doc
        return doc

    def count(self, method: str, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for c in self.calls if c.method == method and rx.search(c.path))

    # -- the transport

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, json: Any = None, data: Any = None, **_: Any) -> FakeResponse:
        parts = urlsplit(url)
        call = Call(method, url, parts.path, parse_qs(parts.query), dict(headers or {}), json)
        self.calls.append(call)
        for step in list(self.script):
            answer = step(call)
            if answer is not None:
                return answer
        return self._route(call)

    def _route(self, call: Call) -> FakeResponse:
        path = call.path
        if path.endswith("/maskinporten/token"):
            return self.json({"access_token": "mp." + uuid.uuid4().hex, "expires_in": 120})
        if path == "/authentication/api/v1/exchange/maskinporten":
            now = int(time.time())
            return FakeResponse(
                200, jwt.encode({"org": self.org, "iat": now, "exp": now + 1800}, self._key, algorithm="HS256").encode(), content_type="text/plain"
            )
        if path.startswith("/events/api/v1/subscriptions"):
            return self._subscriptions(call)
        m = re.fullmatch(r"/storage/api/v1/instances/(\d+)/([0-9a-f-]{36})(?:/(complete|substatus|data/([^/]+)))?", path)
        if m is None:
            return self._query(call) if path == "/storage/api/v1/instances" else FakeResponse(404)
        doc = self.instances.get(f"{m.group(1)}/{m.group(2)}")
        if doc is None:
            return FakeResponse(404)
        if m.group(3) == "complete":
            return self._complete(doc)
        if m.group(3) == "substatus":
            return self._substatus(call, doc)
        if m.group(4) is not None:
            body = self.blobs.get(m.group(4))
            return FakeResponse(404) if body is None else FakeResponse(200, body, content_type="application/octet-stream")
        return self.json(doc)

    def _complete(self, doc: dict[str, Any]) -> FakeResponse:
        if not self.complete_allowed:
            return FakeResponse(403, content_type=None)
        if self.on_complete is not None:
            self.on_complete(doc["id"])
        confirmations = doc.setdefault("completeConfirmations", [])
        if not any(c["stakeholderId"] == self.org for c in confirmations):
            confirmations.append({"stakeholderId": self.org, "confirmedOn": "2025-01-01T11:00:00Z"})
        self.confirmations.append(doc["id"])
        return self.json(doc)

    def _substatus(self, call: Call, doc: dict[str, Any]) -> FakeResponse:
        """PUT .../substatus as altinn-storage's UpdateSubstatus: a label is required (400 without)."""
        body = call.json if isinstance(call.json, dict) else {}
        if call.method != "PUT" or not body.get("label"):
            return FakeResponse(400, content_type=None)
        doc.setdefault("status", {})["substatus"] = {"label": body["label"], "description": body.get("description")}
        self.substatus_updates.append((doc["id"], body["label"], body.get("description")))
        return self.json(doc)

    def _query(self, call: Call) -> FakeResponse:
        size = int(call.query.get("size", ["100"])[0])
        after = int(call.query.get("continuationToken", ["0"])[0])
        unconfirmed = [
            d
            for d in self.instances.values()
            if d["process"].get("ended") and not any(c["stakeholderId"] == self.org for c in d.get("completeConfirmations", []))
        ]
        page = unconfirmed[after : after + size]
        doc: dict[str, Any] = {"count": len(page), "instances": page}
        if len(page) == size:
            doc["next"] = f"{self.platform}/storage/api/v1/instances?continuationToken={after + size}"
        return self.json(doc)

    def _subscriptions(self, call: Call) -> FakeResponse:
        tail = call.path.removeprefix("/events/api/v1/subscriptions").strip("/")
        if call.method == "POST":
            body = dict(call.json or {})
            for sub in self.subscriptions.values():
                if all(sub.get(k) == body.get(k) for k in ("endPoint", "sourceFilter", "typeFilter", "subjectFilter", "alternativeSubjectFilter")):
                    return self.json(sub, 201)
            sub_id = len(self.subscriptions) + 1
            self.subscriptions[sub_id] = body | {"id": sub_id, "validated": False, "consumer": f"/org/{self.org}"}
            return self.json(self.subscriptions[sub_id], 201)
        if not tail:
            return self.json({"count": len(self.subscriptions), "subscriptions": list(self.subscriptions.values())})
        sub = self.subscriptions.get(int(tail))
        if sub is None:
            return FakeResponse(404)
        if call.method == "DELETE":
            del self.subscriptions[int(tail)]
            return FakeResponse(200, content_type=None)
        return self.json(sub)

    @staticmethod
    def json(doc: Any, status: int = 200) -> FakeResponse:
        return FakeResponse(status, json.dumps(doc).encode())


# -- a runtime on the stand-ins ---------------------------------------------------------------------


def memory_runtime(settings: Any, altinn: FakeAltinn, *, clock: Callable[[], float] = time.monotonic) -> Any:
    """A Runtime whose clients are the stand-ins: the same code above them, no socket below."""
    from shared.config import EVENTS_QUEUE, POISON_QUEUE
    from shared.runtime import Runtime

    class MemoryRuntime(Runtime):
        def __init__(self) -> None:
            super().__init__(settings)
            self.stores = {name: MemoryQueueStore(name, clock) for name in (EVENTS_QUEUE, POISON_QUEUE)}
            self.__dict__["http"] = altinn
            self.__dict__["container"] = MemoryContainer(settings.archive_container)
            self.__dict__["state_container"] = MemoryContainer(settings.state_container)

        def queue(self, name: str) -> Any:
            return MemoryQueue(self.stores.setdefault(name, MemoryQueueStore(name, clock)), base64_text=True)

        def raw_queue(self, name: str) -> Any:
            return MemoryQueue(self.stores.setdefault(name, MemoryQueueStore(name, clock)), base64_text=False)

    rt = MemoryRuntime()
    rt.altinn.retry_sleep = lambda seconds: None
    return rt
