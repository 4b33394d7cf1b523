"""The baseline of the memory benchmark: one data element copied by the shortest path the
libraries allow (``requests`` stream -> ``upload_blob``, library defaults, no validation), in a
process of its own, measured like ``devtools.memprobe`` measures the archive function.

    BENCH_TOKEN=... python -m bench.basecopy CONNECTION_STRING CONTAINER WARM_URL:SIZE URL:SIZE

Prints one JSON line: ``{"baseline": bytes, "peak": bytes, "growth": bytes, "seconds": s, "bytes": n}``.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    import requests
    from azure.storage.blob import ContainerClient

    from devtools.memprobe import measure_peak

    conn, container_name, warm, target = argv
    token = os.environ["BENCH_TOKEN"]
    session = requests.Session()
    session.trust_env = False
    container = ContainerClient.from_connection_string(conn, container_name)

    def copy(spec: str, name: str) -> int:
        url, _, size = spec.rpartition(":")
        with session.get(url, headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=(5, 60)) as resp:
            resp.raise_for_status()
            container.get_blob_client(name).upload_blob(resp.raw, length=int(size), overwrite=True)
        return int(size)

    copy(warm, "basecopy/warm")
    copied, figures = measure_peak(lambda: copy(target, "basecopy/big"))
    print(json.dumps(figures | {"bytes": copied}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
