"""Measure the peak memory growth of archiving instances, in a process of its own.

    python -m devtools.memprobe ttd/app PARTY/GUID [--warmup PARTY/GUID]

Settings come from the environment, as for the function app. The warm-up instance (small)
loads every library and opens every connection; the baseline is the RSS after it. Then the
measured instance is archived while a thread samples RSS every 5 ms. Prints one JSON line:
``{"baseline": bytes, "peak": bytes, "growth": bytes, "seconds": s, "bytes": archived}``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def measure_peak(work: Callable[[], T], *, interval: float = 0.005) -> tuple[T, dict[str, float]]:
    """Run ``work`` while a thread samples this process's RSS; returns its result and the figures
    ``baseline`` (RSS before), ``peak``, ``growth`` (bytes) and ``seconds``."""
    import psutil

    proc = psutil.Process()
    baseline = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = work()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    peak = max(peak, proc.memory_info().rss)
    return result, {"baseline": baseline, "peak": peak, "growth": peak - baseline, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    from shared.events import InstanceRef
    from shared.pipeline import archive_instance
    from shared.runtime import get_runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="org/app")
    parser.add_argument("instance", help="partyId/instanceGuid to measure")
    parser.add_argument("--warmup", help="partyId/instanceGuid of a small instance archived first")
    args = parser.parse_args(argv)
    org, app = args.app.split("/", 1)
    rt = get_runtime()
    if args.warmup:
        archive_instance(rt, InstanceRef.parse(org, app, args.warmup))
    result, figures = measure_peak(lambda: archive_instance(rt, InstanceRef.parse(org, app, args.instance)))
    print(json.dumps(figures | {"bytes": result.bytes, "outcome": result.outcome}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
