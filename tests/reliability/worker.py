"""A worker process for the crash and concurrency tests: the real ``function_app.app`` in a
``LocalHost`` of its own, against the Azurite and simulator named by the environment.

    python -m tests.reliability.worker --host-json PATH [--lease 2] [--concurrency 2]

Prints ``ready`` on stdout once it listens; SIGTERM stops it gracefully; SIGKILL is the crash.
``--lease`` is the message lease in seconds: after a SIGKILL the message it held becomes visible
again after at most that long (the real host's lease is longer; the semantics are the same).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host-json", required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    import function_app
    from devtools.localhost import LocalHost

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    host = LocalHost(
        function_app.app,
        connection_string=os.environ["AzureWebJobsStorage"],
        host_json=args.host_json,
        message_lease=args.lease,
        concurrency=args.concurrency,
    )
    host.start()
    print("ready", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        host.stop(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
