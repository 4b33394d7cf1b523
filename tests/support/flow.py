"""Driving the flow from a test: deliver an event through the webhook, read a queue, run the CLI
in process, read a child process's output up to a line."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from typing import Any

import requests


def deliver(host: Any, sim: Any, inst: Any, *, wait: bool = True, timeout: float = 120) -> requests.Response:
    """POST the simulator's CloudEvent for ``inst`` to the webhook (202 expected) and, with ``wait``,
    let the host work until idle."""
    resp = requests.post(host.function_url("receive"), json=sim.cloud_event(inst), timeout=30)
    assert resp.status_code == 202, resp.text
    if wait:
        assert host.wait_idle(timeout=timeout), "the host did not become idle"
    return resp


def queued(queue: Any) -> list[dict[str, Any]]:
    """The JSON documents on a queue (up to 32, peeked), through a client that decodes base64 like the host."""
    return [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]


def cli(*args: str) -> tuple[int, str, str]:
    """``altinn-mottak ARGS`` in process: (exit code, stdout, stderr)."""
    from shared.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def cli_json(*args: str) -> tuple[int, Any, str]:
    code, out, err = cli(*args, "--json")
    return code, json.loads(out), err


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The lines a child process printed up to (and with) the first that contains ``marker``;
    AssertionError after ``timeout`` s (with what it printed)."""
    lines: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                break
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    assert done.wait(timeout) and lines and marker in lines[-1], f"no {marker!r} within {timeout} s: {''.join(lines)}"
    return lines
