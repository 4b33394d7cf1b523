"""The process's clients, created once and lazily (cold start stays cheap).

``get_runtime()`` returns the clients for the current settings; when the settings change (tests,
local tools pointing elsewhere) a new set is built. Azure SDKs, requests, PyJWT and cryptography
are imported here on first use, never when ``function_app`` is imported.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from shared.config import EVENTS_QUEUE, POISON_QUEUE, Settings, StorageConfig, get_settings

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    from shared.altinn import AltinnClient
    from shared.archive import Archive
    from shared.maskinporten import MaskinportenClient
    from shared.retries import RetryRecords


def _credential(storage: StorageConfig) -> Any:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if storage.client_id:
        return ManagedIdentityCredential(client_id=storage.client_id)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def _transport(pool_size: int, *, connection_timeout: float = 10, read_timeout: float = 120) -> Any:
    """An azure-core transport whose connection pool fits our concurrency."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # No proxy variables or .netrc: requests would look both up again on every call (~20% of the
    # SDK's CPU per request), and storage is reached directly (or over a private endpoint).
    session.trust_env = False
    return RequestsTransport(session=session, session_owner=True, connection_timeout=connection_timeout, read_timeout=read_timeout)


def _retry(total: int, policy: Any) -> Any:
    """Storage retries in seconds, not the SDK's default of 15 s, 45 s, ... (the queue retries later)."""
    return policy(initial_backoff=0.5, increment_base=2, retry_total=total, random_jitter_range=0.2)


class cached_property:  # noqa: N801 - a thread-safe functools.cached_property
    """Computed once per instance under the instance's lock, so two threads never build two clients."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            pass
        with obj._lock:
            if self.name not in obj.__dict__:
                obj.__dict__[self.name] = self.func(obj)
            return obj.__dict__[self.name]


class Runtime:
    """Clients bound to one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()

    @cached_property
    def http(self) -> Any:
        from shared.altinn import new_session

        return new_session(pool_size=max(32, self.settings.parallel_downloads * 4))

    @cached_property
    def maskinporten(self) -> MaskinportenClient:
        from shared.maskinporten import MaskinportenClient

        return MaskinportenClient(self.settings, self.http)

    @cached_property
    def altinn(self) -> AltinnClient:
        from shared.altinn import AltinnClient

        return AltinnClient(self.settings, self.http, self.maskinporten)

    @cached_property
    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        storage = self.settings.storage
        pool = max(32, self.settings.parallel_downloads * 8)
        options = {"transport": _transport(pool), "retry_policy": _retry(3, ExponentialRetry)}
        if storage.connection_string:
            return BlobServiceClient.from_connection_string(storage.connection_string, **options)
        assert storage.blob_url is not None  # StorageConfig: a connection string or both service URLs
        return BlobServiceClient(storage.blob_url, credential=_credential(storage), **options)

    @cached_property
    def container(self) -> ContainerClient:
        """The archive container (``ARCHIVE_CONTAINER``)."""
        return self.blob_service.get_container_client(self.settings.archive_container)

    @cached_property
    def state_container(self) -> ContainerClient:
        """Operational state that is not part of the archive (``ARCHIVE_STATE_CONTAINER``)."""
        return self.blob_service.get_container_client(self.settings.state_container)

    @cached_property
    def retry_records(self) -> RetryRecords:
        from shared.retries import RetryRecords

        return RetryRecords(self.state_container)

    def queue(self, name: str) -> QueueClient:
        from azure.storage.queue import ExponentialRetry, QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        storage = self.settings.storage
        # The Functions host reads base64 messages by default (host.json messageEncoding).
        policies = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
            # The webhook must answer within Altinn's 45 s timeout even when storage hangs:
            # 3 tries x 8 s + backoff (0.5 s, 2.5 s) < 30 s, then 503 and Altinn retries later.
            "retry_policy": _retry(2, ExponentialRetry),
            "transport": _transport(32, connection_timeout=5, read_timeout=8),
        }
        if storage.connection_string:
            return QueueClient.from_connection_string(storage.connection_string, name, **policies)
        assert storage.queue_url is not None
        return QueueClient(storage.queue_url, name, credential=_credential(storage), **policies)

    def raw_queue(self, name: str) -> QueueClient:
        """A queue client without message encoding: the text exactly as stored (poison listing and
        replay see and write messages as they are, so that an odd one cannot stop them)."""
        from azure.storage.queue import ExponentialRetry, QueueClient

        storage = self.settings.storage
        options = {"retry_policy": _retry(3, ExponentialRetry), "connection_timeout": 10, "read_timeout": 30}
        if storage.connection_string:
            return QueueClient.from_connection_string(storage.connection_string, name, **options)
        assert storage.queue_url is not None  # StorageConfig: a connection string or both service URLs
        return QueueClient(storage.queue_url, name, credential=_credential(storage), **options)

    @cached_property
    def events_queue(self) -> QueueClient:
        return self.queue(EVENTS_QUEUE)

    @cached_property
    def poison_queue(self) -> QueueClient:
        return self.queue(POISON_QUEUE)

    @cached_property
    def handoff_queue(self) -> QueueClient | None:
        """The queue case systems read (``ARCHIVE_HANDOFF_QUEUE``), None when the hand-off is off."""
        name = self.settings.handoff_queue
        return self.queue(name) if name else None

    @cached_property
    def archive(self) -> Archive:
        from shared.archive import Archive

        return Archive(self.container, block_size=self.settings.block_size)


def enqueue(queue: Any, message: dict[str, Any], *, visibility_timeout: int | None = None, time_to_live: int | None = None) -> None:
    """Put one message (JSON) on a queue, creating the queue if it does not exist yet.

    Raises azure.core.exceptions.AzureError when the write failed: the caller must not
    acknowledge anything then.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    text = json.dumps(message, ensure_ascii=False)
    options: dict[str, int] = {}
    if visibility_timeout:
        options["visibility_timeout"] = visibility_timeout
    if time_to_live is not None:
        options["time_to_live"] = time_to_live
    try:
        queue.send_message(text, **options)
    except ResourceNotFoundError:
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        queue.send_message(text, **options)


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """Clients for the current settings (ConfigError when a setting is wrong)."""
    global _runtime
    settings = get_settings()
    runtime = _runtime
    if runtime is not None and runtime.settings is settings:
        return runtime
    with _lock:
        if _runtime is None or _runtime.settings is not settings:
            _runtime = Runtime(settings)
        return _runtime
