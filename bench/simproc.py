"""The Altinn + Maskinporten simulator in a process of its own, driven over a pipe.

Altinn is a remote service: its CPU is not ours. Running the simulator in the benchmark's own
process would make the archive function and the baseline share one GIL with the server that
feeds them, so the simulator gets its own process (and core time), and the benchmark talks to it
through a few commands: add instances, read the counters (grants, exchanges, calls,
confirmations), regenerate an element's sha256 for spot checks.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import asdict
from typing import Any

from devtools.simulator import ElementSpec

CLIENT_ID = "bench-client"
KID = "bench-kid"


def _serve(conn: Any, public_pem: str) -> None:
    from devtools.simulator import Simulator

    sim = Simulator()
    sim.register_client(CLIENT_ID, public_key_pem=public_pem, kid=KID, org="ttd")
    sim.start()
    try:
        conn.send({"url": sim.url, "apps_url": sim.apps_url, "issuer": sim.maskinporten_issuer})
        while True:
            command, args = conn.recv()
            if command == "stop":
                conn.send(None)
                return
            if command == "add":
                org, app, batches = args
                out = []
                for specs in batches:
                    inst = sim.add_instance(org, app, [ElementSpec(**s) for s in specs])
                    out.append({"id": inst.id, "party": inst.party_id, "guid": inst.instance_guid, "elements": [(e["id"], e["size"]) for e in inst.elements]})
                conn.send(out)
            elif command == "counters":
                with sim._lock:
                    conn.send(
                        {
                            "grants": sim.grants,
                            "exchanges": sim.exchanges,
                            "calls": dict(sim.calls),
                            "confirmations": [c for c in sim.confirmations],
                            "rejected_grants": list(sim.rejected_grants),
                            "errors": sum(1 for r in sim.requests if r["status"] >= 400),
                        }
                    )
            elif command == "reset":
                sim.reset_counters()
                conn.send(None)
            elif command == "sha256":
                conn.send(sim.expected_sha256(args))
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        sim.stop()


class SimProcess:
    """``with SimProcess(public_pem) as sim: sim.url, sim.add(...), sim.counters()``."""

    def __init__(self, public_pem: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, public_pem), name="bench-simulator", daemon=True)
        self._proc.start()
        hello = self._conn.recv()
        self.url: str = hello["url"]  # the platform (storage, exchange) and Maskinporten
        self.apps_url: str = hello["apps_url"]  # the app host: only in event sources
        self.issuer: str = hello["issuer"]

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _call(self, command: str, args: Any = None) -> Any:
        self._conn.send((command, args))
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def add(self, org: str, app: str, instances: list[list[ElementSpec]]) -> list[dict[str, Any]]:
        """Create instances; for each: id, party, guid, elements [(id, size)]."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(instances), 500):
            batch = [[asdict(s) for s in specs] for specs in instances[start : start + 500]]
            out.extend(self._call("add", (org, app, batch)))
        return out

    def counters(self) -> dict[str, Any]:
        return self._call("counters")

    def reset(self) -> None:
        self._call("reset")

    def sha256(self, element_id: str) -> str:
        return self._call("sha256", element_id)

    def stop(self) -> None:
        if self._proc.is_alive():
            try:
                self._call("stop")
            except (EOFError, OSError):
                pass
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
