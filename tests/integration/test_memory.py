"""A 256 MiB attachment is archived with bounded memory (measured in a child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.simulator import ElementSpec

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def test_256_mib_attachment_with_peak_growth_under_64_mib(sim, env, container):
    warm = sim.add_instance("ttd", "big-app", [ElementSpec(size=2000), ElementSpec(data_type="vedlegg", size=5 * MIB, filename="warm.bin")])
    big = sim.add_instance("ttd", "big-app", [ElementSpec(size=2000), ElementSpec(data_type="vedlegg", size=256 * MIB, filename="stor fil.bin")])
    out = subprocess.run(
        [sys.executable, "-m", "devtools.memprobe", "ttd/big-app", big.id, "--warmup", warm.id],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n256 MiB attachment: peak RSS growth {figures['growth'] / MIB:.1f} MiB, {figures['bytes'] / MIB / figures['seconds']:.0f} MiB/s")
    assert figures["outcome"] == "archived"
    assert figures["bytes"] == 256 * MIB + 2000
    assert figures["growth"] < 64 * MIB
    props = container.get_blob_client(f"ttd/big-app/{big.id}/data/{big.elements[1]['id']}").get_blob_properties()
    assert props.size == 256 * MIB
    assert props.metadata["sha256"] == sim.expected_sha256(big.elements[1]["id"])
    assert [c[0] for c in sim.confirmations] == [warm.id, big.id]
