"""One Altinn delivery through the real Azure Functions host (Core Tools' ``func``), end to end.

The other tests run ``function_app.app`` in this repository's own local host (devtools.localhost).
This script runs it, unchanged, in the real one: the Functions host of Azure Functions Core Tools 4
with its Python worker, its HTTP pipeline, its queue trigger (host.json's settings, base64 message
encoding, dequeue counts) and its timer. It needs ``func`` on PATH and Azurite; it is what
``.github/workflows/realhost.yml`` runs on a GitHub-hosted runner, and it runs the same on a
developer's machine that has Core Tools.

**It launches ``func start`` itself**, as a child process it stops again; nothing has to be running
but Azurite, and with ``--start-azurite`` not even that. Steps:

1. start the Altinn + Maskinporten simulator (``devtools.simulator``) with a client key made now;
2. copy the app (the repository minus what ``.funcignore`` excludes, as a deployment would) to a
   temporary folder and write its ``local.settings.json`` there, pointing the app at the
   simulator and at Azurite (a developer's own ``local.settings.json`` is never touched);
3. ``func host start`` on a free port, wait for the host and its functions;
4. complete an instance in the simulator and POST its CloudEvent to ``/api/events``;
5. wait for the archive's ``manifest.json`` in Azurite (``altinn-data``), marked confirmed, and for
   the simulator to record the ``/complete`` call; check every element's sha256, and that the
   poison queue stayed empty;
6. stop ``func`` and the simulator (and Azurite when it started it). Exit 0 when all held.

::

    python -m devtools.realhost_check                      # Azurite already on 10000/10001
    python -m devtools.realhost_check --start-azurite      # start one (node_modules, npm ci)
    python -m devtools.realhost_check --storage "DefaultEndpointsProtocol=http;..."
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `devtools` and `shared` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO_ROOT = Path(__file__).resolve().parent.parent
ORG, APP = "ttd", "realhost-app"
CLIENT_ID, KID = "realhost-client", "realhost-kid"
ARCHIVE_CONTAINER = "altinn-data"
MIB = 1024 * 1024
DEV_STORAGE = "UseDevelopmentStorage=true"
# Never sent to the simulator or anyone: the host must not export telemetry from a check run.
_DROPPED_ENV = ("APPLICATIONINSIGHTS_CONNECTION_STRING", "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "AzureWebJobsStorage")


def say(text: str) -> None:
    print(f"realhost: {text}", flush=True)


class CheckFailed(Exception):
    pass


# -- the app, as a deployment would see it ---------------------------------------------------------


def _funcignore_patterns(root: Path) -> list[str]:
    path = root / ".funcignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def copy_app(root: Path, target: Path) -> None:
    """The app's files as Core Tools would publish them: everything but what .funcignore lists."""
    # Plus local state a developer's checkout may hold (Azurite data, demo output, azd's folder).
    patterns = _funcignore_patterns(root) + [".git", "local.settings.json", ".azurite", ".demo", ".azure", "*.egg-info"]

    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}

    shutil.copytree(root, target, ignore=ignore, dirs_exist_ok=True)


def local_settings(sim: Any, storage: str, private_pem: str) -> dict[str, Any]:
    """local.settings.json for the app under test (the settings docs/settings.md and infra/ document)."""
    apps_url = getattr(sim, "apps_url", None) or sim.url
    return {
        "IsEncrypted": False,
        "Values": {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            # The worker must import the app's requirements: run it on this interpreter.
            "languageWorkers__python__defaultExecutablePath": sys.executable,
            "AzureWebJobsStorage": storage,
            "ALTINN_ENVIRONMENT": "tt02",
            "ALTINN_APPS": f"{ORG}/{APP}",
            "ALTINN_EVENT_TYPES": "app.instance.process.completed",
            "ALTINN_PLATFORM_URL": sim.url,
            "ALTINN_APPS_URL": apps_url,
            "MASKINPORTEN_URL": sim.maskinporten_issuer,
            "MASKINPORTEN_CLIENT_ID": CLIENT_ID,
            "MASKINPORTEN_KID": KID,
            "MASKINPORTEN_PRIVATE_KEY": private_pem,
            "ARCHIVE_CONTAINER": ARCHIVE_CONTAINER,
            "CATCHUP_SCHEDULE": "0 7 * * * *",
            # Only the webhook -> queue -> archive path is checked; no catch-up run in between.
            "AzureWebJobs.catchup.Disabled": "true",
        },
    }


# -- the host ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class FuncHost:
    """``func host start`` in its own process group, its output in a log file."""

    def __init__(self, func: str, app_dir: Path, port: int, log_path: Path) -> None:
        self.func, self.app_dir, self.port, self.log_path = func, app_dir, port, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        log = open(self.log_path, "wb")  # closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [self.func, "host", "start", "--port", str(self.port)],
            cwd=self.app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() ends func and the worker it started
        )
        say(f"func host start (pid {self.process.pid}) on {self.url}, log {self.log_path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> None:
        """Until the host says Running and lists the webhook function. Where the admin API does not
        answer that (401, 403, 404), return at once: post_event() retries until the route answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise CheckFailed(f"func exited with {self.process.returncode if self.process else '?'} before the host was ready")
            try:
                status, body = _http("GET", f"{self.url}/admin/host/status", timeout=5)
                if status != 200:
                    return  # no admin API to ask (401, 403, 404): post_event() waits for the route
                if json.loads(body or b"{}").get("state") == "Running":
                    status, body = _http("GET", f"{self.url}/admin/functions", timeout=5)
                    if status != 200 or "receive" in {f.get("name") for f in json.loads(body or b"[]")}:
                        return
            except (OSError, ValueError):
                pass  # not listening yet
            time.sleep(1)
        raise CheckFailed(f"the host was not ready within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            say(f"func stopped (exit {self.process.returncode})")
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# -- the check ---------------------------------------------------------------------------------------


def post_event(webhook: str, event: dict[str, Any], timeout: float) -> tuple[int, bytes]:
    """POST the CloudEvent as Altinn does; retried while the route is not there yet (404, 5xx)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        try:
            last = _http("POST", webhook, json.dumps(event).encode(), {"Content-Type": "application/cloudevents+json; charset=utf-8"}, timeout=45)
        except OSError as exc:
            last = (0, str(exc).encode())
        if last[0] and last[0] != 404 and last[0] < 500:
            return last
        time.sleep(1)
    return last


def wait_for_archive(storage: str, sim: Any, inst: Any, timeout: float, host: FuncHost) -> dict[str, Any]:
    """The manifest, once the confirmed.json marker exists beside it and Altinn recorded /complete."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(storage, ARCHIVE_CONTAINER)
    blob = container.get_blob_client(f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/manifest.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not host.alive():
            raise CheckFailed("func exited while the instance was being archived")
        try:
            marker = container.get_blob_client(f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/confirmed.json")
            confirmed_in_altinn = any(c[0] == inst.id for c in sim.confirmations)
            if marker.exists() and confirmed_in_altinn:
                return json.loads(blob.download_blob().readall())
        except ResourceNotFoundError:
            pass
        time.sleep(1)
    raise CheckFailed(f"no confirmed manifest.json for {inst.id} within {timeout:.0f} s (Altinn /complete calls: {len(sim.confirmations)})")


def poison_messages(storage: str) -> int:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    from shared.config import POISON_QUEUE

    try:
        return int(QueueClient.from_connection_string(storage, POISON_QUEUE).get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


def run_check(storage: str, func: str, timeout: float) -> None:
    from devtools.simulator import ElementSpec, Simulator, generate_client_key

    private_pem, public_pem = generate_client_key()
    with Simulator() as sim, tempfile.TemporaryDirectory(prefix="realhost-") as tmp:
        sim.register_client(CLIENT_ID, public_key_pem=public_pem, kid=KID, org=ORG)
        say(f"Altinn + Maskinporten simulator at {sim.url}")
        app_dir = Path(tmp) / "app"
        copy_app(REPO_ROOT, app_dir)
        (app_dir / "local.settings.json").write_text(json.dumps(local_settings(sim, storage, private_pem), indent=2), encoding="utf-8")
        host = FuncHost(func, app_dir, free_port(), Path(tmp) / "func.log")
        try:
            host.start()
            host.wait_ready(timeout=min(180.0, timeout))
            say("host up")
            inst = sim.add_instance(
                ORG,
                APP,
                [
                    ElementSpec(),
                    ElementSpec(data_type="vedlegg", content_type="application/pdf", size=3 * MIB + 123, filename="vedlegg.pdf", file_scan_result="Clean"),
                ],
            )
            status, body = post_event(f"{host.url}/api/events", sim.cloud_event(inst), timeout=60)
            say(f"CloudEvent for {inst.id} -> HTTP {status} {body[:200].decode('utf-8', 'replace')}")
            if status != 202:
                raise CheckFailed(f"the webhook answered {status}, expected 202 (queued)")
            manifest = wait_for_archive(storage, sim, inst, timeout, host)
            elements = manifest.get("dataElements") or []
            wrong = [e.get("dataElementId") for e in elements if e.get("sha256") != sim.expected_sha256(e.get("dataElementId"))]
            if len(elements) != len(inst.elements) or wrong:
                raise CheckFailed(f"manifest has {len(elements)} of {len(inst.elements)} elements; sha256 mismatch for {wrong}")
            parked = poison_messages(storage)
            if parked:
                raise CheckFailed(f"{parked} message(s) in the poison queue")
            say(f"archived, verified and confirmed: {inst.id}, {len(elements)} elements")
        except Exception:
            say("func output (tail):\n" + host.log_tail())
            raise
        finally:
            host.stop()


@contextlib.contextmanager
def storage_for(args: argparse.Namespace) -> Iterator[str]:
    if args.start_azurite:
        from devtools.azurite import Azurite

        with Azurite() as azurite:
            say(f"Azurite blob :{azurite.blob_port} queue :{azurite.queue_port}")
            yield azurite.connection_string
    else:
        yield args.storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.realhost_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--storage",
        default=os.environ.get("AzureWebJobsStorage") or DEV_STORAGE,
        help="storage connection string (default: $AzureWebJobsStorage, else Azurite on its default ports)",
    )
    parser.add_argument("--start-azurite", action="store_true", help="start an Azurite of node_modules on free ports instead")
    parser.add_argument("--func", default=os.environ.get("FUNC", "func"), help="Core Tools executable (default: func on PATH)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for the archive (default 240)")
    args = parser.parse_args(argv)

    func = shutil.which(args.func)
    if not func:
        print(f"realhost: {args.func!r} not found: install Azure Functions Core Tools 4 (npm install --global azure-functions-core-tools@4)", file=sys.stderr)
        return 2
    try:
        version = subprocess.run([func, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = "?"
    say(f"Core Tools {version} ({func}), Python {sys.version.split()[0]}")
    try:
        with storage_for(args) as storage:
            run_check(storage, func, args.timeout)
    except CheckFailed as exc:
        print(f"realhost: FAILED: {exc}", file=sys.stderr)
        return 1
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
