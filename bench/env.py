"""The benchmark's world: keys made now, Azurite, the simulator in its own process, the app's
settings in the environment, and helpers shared by the benchmarks (request counters, the
baseline's HTTP and blob clients, percentiles, machine description)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = "bench-app"
ORG = "ttd"
ARCHIVE_CONTAINER = "bench-archive"
BASELINE_CONTAINER = "bench-baseline"
MIB = 1024 * 1024
MB = 1000 * 1000


def host_json() -> dict[str, Any]:
    return json.loads((ROOT / "host.json").read_text())


def host_concurrency(doc: dict[str, Any]) -> tuple[int, int, int]:
    """(batchSize, newBatchThreshold, concurrency): the Functions host runs up to
    batchSize + newBatchThreshold messages of one queue at once per instance."""
    queues = doc.get("extensions", {}).get("queues", {})
    batch = int(queues.get("batchSize", 16))
    threshold = int(queues.get("newBatchThreshold", batch // 2))
    return batch, threshold, batch + threshold


class RequestCounter:
    """Counts the HTTP requests a requests.Session sends (a response hook), by method."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        self.add(response.request.method)
        return response

    def add(self, method: str) -> None:
        with self._lock:
            self.counts[method] += 1

    def attach(self, session: Any) -> None:
        session.hooks.setdefault("response", []).append(self.hook)

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


def storage_session(client: Any) -> Any:
    """The requests.Session under an azure-storage client built with a RequestsTransport."""
    transport = client._pipeline._transport
    transport = getattr(transport, "_transport", transport)  # TransportWrapper of sub-clients
    return transport.session


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class World:
    """Everything the benchmarks share; ``close()`` stops it all."""

    quick: bool
    seed: int
    azurite: Any = None
    sim: Any = None
    private_pem: str = ""
    settings_env: dict[str, str] = field(default_factory=dict)
    batch_size: int = 0
    new_batch_threshold: int = 0
    concurrency: int = 0
    baseline_session: Any = None
    baseline_container: Any = None

    @classmethod
    def start(cls, *, quick: bool, seed: int) -> World:
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import ContainerClient
        from requests.adapters import HTTPAdapter

        from bench.simproc import CLIENT_ID, KID, SimProcess
        from devtools.azurite import Azurite
        from devtools.simulator import generate_client_key

        world = cls(quick=quick, seed=seed)
        private, public = generate_client_key()
        world.private_pem = private
        try:
            world.azurite = Azurite().start()
            world.sim = SimProcess(public)
            world.settings_env = {
                "ALTINN_ENVIRONMENT": "tt02",
                "ALTINN_APPS": f"{ORG}/{APP}",
                "ALTINN_EVENT_TYPES": "app.instance.process.completed",
                "ALTINN_PLATFORM_URL": world.sim.url,
                "ALTINN_APPS_URL": world.sim.apps_url,
                "MASKINPORTEN_URL": world.sim.issuer,
                "MASKINPORTEN_CLIENT_ID": CLIENT_ID,
                "MASKINPORTEN_KID": KID,
                "MASKINPORTEN_PRIVATE_KEY": private,
                "ARCHIVE_CONTAINER": ARCHIVE_CONTAINER,
                "AzureWebJobsStorage": world.azurite.connection_string,
            }
            os.environ.pop("MASKINPORTEN_CERTIFICATE", None)
            os.environ.update(world.settings_env)
            world.batch_size, world.new_batch_threshold, world.concurrency = host_concurrency(host_json())

            import requests

            # The baseline's clients: plain requests and azure-storage-blob, pools as large as ours.
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=64)
            session.mount("http://", adapter)
            session.trust_env = False
            world.baseline_session = session
            blob_session = requests.Session()
            blob_session.trust_env = False
            blob_session.mount("http://", HTTPAdapter(pool_connections=8, pool_maxsize=64))
            world.baseline_container = ContainerClient.from_connection_string(
                world.azurite.connection_string, BASELINE_CONTAINER, transport=RequestsTransport(session=blob_session, session_owner=True)
            )
            world.baseline_container.create_container()
            from azure.storage.queue import QueueClient

            from shared.config import EVENTS_QUEUE, POISON_QUEUE

            for name in (EVENTS_QUEUE, POISON_QUEUE):
                QueueClient.from_connection_string(world.azurite.connection_string, name).create_queue()
        except BaseException:
            world.close()
            raise
        return world

    @property
    def settings(self) -> Any:
        from shared.config import get_settings

        return get_settings()

    @property
    def runtime(self) -> Any:
        from shared.runtime import get_runtime

        return get_runtime()

    def data_url(self, instance_id: str, element_id: str) -> str:
        return f"{self.sim.url}/storage/api/v1/instances/{instance_id}/data/{element_id}"

    def clear_queues(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.queue import QueueClient

        from shared.config import EVENTS_QUEUE, POISON_QUEUE

        for name in (EVENTS_QUEUE, POISON_QUEUE):
            try:
                QueueClient.from_connection_string(self.azurite.connection_string, name).clear_messages()
            except ResourceNotFoundError:
                pass

    def close(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        if self.azurite is not None:
            self.azurite.stop()


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = shutil.which("node")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else "not found"
    try:
        azurite = json.loads((ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        azurite = "unknown"
    from importlib.metadata import version

    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "node": f"{node_version}, Azurite {azurite}",
        "libraries": ", ".join(f"{p} {version(p)}" for p in ("azure-functions", "azure-storage-blob", "azure-storage-queue", "requests", "urllib3")),
    }
