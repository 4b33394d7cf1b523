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


def main(argv: list[str] | None = None) -> int:
    import psutil

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
    proc = psutil.Process()
    if args.warmup:
        archive_instance(rt, InstanceRef.parse(org, app, args.warmup))
    baseline = proc.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = archive_instance(rt, InstanceRef.parse(org, app, args.instance))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = max(peak, proc.memory_info().rss)
    print(json.dumps({"baseline": baseline, "peak": peak, "growth": peak - baseline, "seconds": seconds, "bytes": result.bytes, "outcome": result.outcome}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
