"""The function app in worker processes of its own (for crash and race tests), and a webhook-only app."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


# -- worker processes -------------------------------------------------------------------------


class Worker:
    """``python -m tests.reliability.worker``: the function app in a LocalHost of its own process,
    against the same Azurite and simulator (settings from the environment)."""

    def __init__(self, host_json: Path, log_path: Path, *, lease: float = 2.0, concurrency: int = 2, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.worker", "--host-json", str(host_json), "--lease", str(lease), "--concurrency", str(concurrency)],
            cwd=ROOT,
            env=dict(env if env is not None else os.environ),
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if line != "ready":
            self.kill()
            raise AssertionError(f"worker did not start: {line!r}; log: {self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finally blocks, held messages keep their lease."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        """SIGTERM: the worker stops its LocalHost (running invocations finish)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def workers(n: int, host_json: Path, tmp_path: Path, **kwargs: Any) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for i in range(n):
            started.append(Worker(host_json, tmp_path / f"worker-{i}.log", **kwargs))
        yield started
    finally:
        for w in started:
            w.stop()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def webhook_only_app() -> Any:
    """A FunctionApp with only ``function_app``'s ``receive`` function, with its own route, methods
    and auth level: the webhook without the queue trigger (so nothing is archived in the test)."""
    import azure.functions as func

    import function_app

    (fn,) = [f for f in function_app.app.get_functions() if f.get_function_name() == "receive"]
    trigger = {k: getattr(v, "value", v) for k, v in fn.get_trigger().get_dict_repr().items()}
    methods = [str(getattr(m, "value", m)) for m in trigger.get("methods") or []]
    app = func.FunctionApp(http_auth_level=func.AuthLevel(str(trigger.get("authLevel") or "function").lower()))
    app.function_name("receive")(app.route(route=trigger["route"], methods=methods or None)(fn.get_user_function()))
    return app
