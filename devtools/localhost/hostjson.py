"""host.json: the settings LocalHost honours, read and checked as the Functions host does, with the
host's defaults (some depend on the plan, ``WEBSITE_SKU``); .NET TimeSpan strings; the host ID."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOST_JSON = REPO_ROOT / "host.json"

# The queue trigger. Sources: (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
# src/Shared/...), compiled into the Microsoft.Azure.WebJobs.Extensions.Storage.Queues extension.
DEFAULT_BATCH_SIZE = 16  # Queues/QueuesOptions.cs: DefaultBatchSize
MAX_BATCH_SIZE = 32  # Queues/QueuesOptions.cs: MaxBatchSize (the storage service hands out at most 32)
DEFAULT_MAX_DEQUEUE_COUNT = 5  # Queues/QueuesOptions.cs: DefaultMaxDequeueCount
POLL_MINIMUM = 0.1  # Queues/QueuePollingIntervals.cs: Minimum, 100 ms
DEFAULT_MAX_POLLING_INTERVAL = 60.0  # Queues/QueuePollingIntervals.cs: DefaultMaximum, 1 minute

# functionTimeout. Source: (Azure/azure-functions-host, src/WebJobs.Script/Config/ScriptJobHostOptionsSetup.cs).
DEFAULT_FUNCTION_TIMEOUT = 30 * 60.0  # DefaultFunctionTimeout
DEFAULT_CONSUMPTION_FUNCTION_TIMEOUT = 5 * 60.0  # DefaultConsumptionFunctionTimeout
MAX_CONSUMPTION_FUNCTION_TIMEOUT = 10 * 60.0  # MaxFunctionTimeoutDynamic
MIN_FUNCTION_TIMEOUT = 1.0  # MinFunctionTimeout

MAX_HOST_ID_LENGTH = 32  # (Azure/azure-functions-host, src/WebJobs.Script/ScriptConstants.cs): MaximumHostIdLength


def parse_timespan(value: str | int | float) -> float:
    """Seconds in a .NET TimeSpan string: ``hh:mm:ss``, ``hh:mm:ss.fff`` or ``d.hh:mm:ss``."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d+)?)?\s*", str(value))
    if not match:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {value!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0) + float(fraction or 0)


def _format_timespan(seconds: float | None) -> str:
    """Seconds as .NET writes a TimeSpan (``00:30:00``)."""
    if seconds is None:
        return "infinite"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    if seconds != whole:
        text += f".{round((seconds - whole) * 1e7):07d}"
    return f"{days}.{text}" if days else text


def _get(section: Mapping[str, Any], key: str, default: Any) -> Any:
    """Case-insensitive lookup, as the host's configuration does."""
    for name, value in section.items():
        if name.lower() == key.lower():
            return value
    return default


def _is_dynamic_sku() -> bool:
    """The Consumption plan (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/
    src/Shared/SkuUtility.cs): WEBSITE_SKU is "Dynamic"."""
    return os.environ.get("WEBSITE_SKU", "").lower() == "dynamic"


def processor_count() -> int:
    """SkuUtility.ProcessorCount (same source): 1 on the Consumption plan, else the processors."""
    if _is_dynamic_sku():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _function_timeout(value: Any) -> float | None:
    """host.json's ``functionTimeout`` in seconds, None for unbounded, checked like the host does
    (Azure/azure-functions-host, src/WebJobs.Script/Config/ScriptJobHostOptionsSetup.cs)."""
    dynamic = _is_dynamic_sku()
    if value is None:
        return DEFAULT_CONSUMPTION_FUNCTION_TIMEOUT if dynamic else DEFAULT_FUNCTION_TIMEOUT
    if str(value).strip() in ("-1", "-1.00:00:00") and not dynamic:
        return None  # "-1" is an infinite timeout where the plan allows it
    seconds = parse_timespan(value)
    maximum = MAX_CONSUMPTION_FUNCTION_TIMEOUT if dynamic else float("inf")
    if not MIN_FUNCTION_TIMEOUT <= seconds <= maximum:
        raise ValueError(f"functionTimeout must be between 00:00:01 and {'00:10:00' if dynamic else 'unbounded'}, not {value!r}")
    return seconds


@dataclass(frozen=True)
class HostSettings:
    """The parts of host.json that LocalHost honours, with the host's defaults."""

    route_prefix: str = "api"
    batch_size: int = DEFAULT_BATCH_SIZE
    new_batch_threshold: int | None = None  # None: not set; see effective_new_batch_threshold
    max_polling_interval: float = DEFAULT_MAX_POLLING_INTERVAL
    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    visibility_timeout: float = 0.0
    message_encoding: str = "base64"
    function_timeout: float | None = DEFAULT_FUNCTION_TIMEOUT

    @property
    def effective_new_batch_threshold(self) -> int:
        """newBatchThreshold, or when unset (Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.
        Storage.Common/src/Shared/Queues/QueuesOptions.cs, NewBatchThreshold) ``(batchSize / 2) * processorCount``."""
        if self.new_batch_threshold is not None:
            return self.new_batch_threshold
        return (self.batch_size // 2) * processor_count()

    @classmethod
    def from_host_json(cls, path: str | Path | None) -> HostSettings:
        """Read ``path``; a missing file gives Azure's defaults. Values are checked as QueuesOptions does."""
        if path is None or not Path(path).exists():
            return cls(function_timeout=_function_timeout(None))
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        extensions = _get(data, "extensions", {}) or {}
        queues = _get(extensions, "queues", {}) or {}
        http = _get(extensions, "http", {}) or {}
        encoding = str(_get(queues, "messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"{path}: messageEncoding must be base64 or none, not {encoding!r}")
        batch_size = int(_get(queues, "batchSize", DEFAULT_BATCH_SIZE))
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"{path}: batchSize must be from 1 to {MAX_BATCH_SIZE}, not {batch_size}")
        threshold = _get(queues, "newBatchThreshold", None)
        if threshold is not None and int(threshold) < 0:
            raise ValueError(f"{path}: newBatchThreshold must not be negative")
        max_polling = parse_timespan(_get(queues, "maxPollingInterval", "00:01:00"))
        if max_polling < POLL_MINIMUM:
            raise ValueError(f"{path}: maxPollingInterval must not be less than 00:00:00.1")
        max_dequeue = int(_get(queues, "maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT))
        if max_dequeue < 1:
            raise ValueError(f"{path}: maxDequeueCount must not be less than 1")
        return cls(
            route_prefix=str(_get(http, "routePrefix", "api")).strip("/"),
            batch_size=batch_size,
            new_batch_threshold=None if threshold is None else int(threshold),
            max_polling_interval=max_polling,
            max_dequeue_count=max_dequeue,
            visibility_timeout=parse_timespan(_get(queues, "visibilityTimeout", "00:00:00")),
            message_encoding=encoding,
            function_timeout=_function_timeout(_get(data, "functionTimeout", None)),
        )


def default_host_id(script_path: str | Path) -> str:
    """The host ID the Functions host uses when it runs locally (Azure/azure-functions-host,
    src/WebJobs.Script/Host/ScriptHostIdProvider.cs, GetDefaultHostId): the machine name's letters and
    digits, ``-``, the absolute value of Utility.GetStableHash of the app's path (src/WebJobs.Script/
    Utility.cs), cut to 32 characters, lower case, no trailing ``-`` (nor, here, a leading one: ASCII letters
    and digits only). ``AzureFunctionsWebHost__hostid`` overrides it, as the host's configuration does."""
    configured = os.environ.get("AzureFunctionsWebHost__hostid")
    if configured:
        return configured
    machine = "".join(c for c in socket.gethostname().split(".")[0] if c.isascii() and c.isalnum())
    stable = 23
    for char in str(script_path):
        stable = (stable * 31 + ord(char)) & 0xFFFFFFFF  # C#'s unchecked int arithmetic
    if stable >= 0x80000000:
        stable -= 0x100000000
    host_id = f"{machine}-{abs(stable)}"[:MAX_HOST_ID_LENGTH]
    return host_id.lower().strip("-")
