"""A real Azurite (Azure Storage emulator) for tests and local runs.

``Azurite`` starts ``node_modules/.bin/azurite`` (installed by ``npm install`` at the repository
root) with blob and queue services on free ports of 127.0.0.1, its data in a fresh temporary
directory, and stops it again, removing the data::

    with Azurite() as azurite:
        client = QueueServiceClient.from_connection_string(azurite.connection_string)
        ...

``pause()`` / ``resume()`` freeze and thaw the process (SIGSTOP / SIGCONT) to simulate storage
being unavailable: connections are still accepted by the kernel but nothing answers, so clients
see timeouts, as with a storage account that hangs, not "connection refused".

``python -m devtools.azurite`` starts one and prints its connection string until Ctrl-C.
POSIX only (process groups and SIGSTOP).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "Azurite",
    "AzuriteError",
    "REPO_ROOT",
    "find_executable",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

# The well-known development account of the Azure Storage emulators. Public and documented:
# https://learn.microsoft.com/azure/storage/common/storage-use-azurite#well-known-storage-account-and-key
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_START_ATTEMPTS = 5
_STDERR_TAIL = 4000


class AzuriteError(RuntimeError):
    """Azurite is missing, did not start, or stopped unexpectedly."""


def find_executable(repo_root: Path = REPO_ROOT) -> Path:
    """Return the path of ``node_modules/.bin/azurite`` under ``repo_root``.

    Raises AzuriteError, telling to run ``npm install``, when it is not there.
    """
    path = repo_root / "node_modules" / ".bin" / "azurite"
    if not path.exists():
        raise AzuriteError(f"Azurite not found at {path}. Run `npm install` in {repo_root} (it installs the version pinned in package.json).")
    return path


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _azurite_answers(host: str, port: int, service: str) -> bool:
    """True when an Azurite ``service`` ("Blob", "Queue") answers HTTP on host:port.

    Checking the Server header, not only that the port accepts connections, makes sure we do
    not talk to some other process that took the port between our pick and Azurite's bind.
    """
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", f"/{ACCOUNT_NAME}?comp=list")
        response = conn.getresponse()
        response.read()
        return response.getheader("Server", "").startswith(f"Azurite-{service}/")
    except OSError:
        return False
    finally:
        conn.close()


class Azurite:
    """A real Azurite process with blob and queue services on 127.0.0.1.

    Ports default to free ones picked at start (retried if another process takes one first);
    pass ``blob_port`` / ``queue_port`` to fix them. The table service, which we do not use,
    listens on a port chosen by the operating system.
    """

    def __init__(
        self,
        *,
        blob_port: int | None = None,
        queue_port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        executable: str | Path | None = None,
    ) -> None:
        self._requested_ports = (blob_port, queue_port)
        self._host = host
        self._startup_timeout = startup_timeout
        self._executable = Path(executable) if executable is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._blob_port: int | None = None
        self._queue_port: int | None = None
        self._paused = False

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def blob_port(self) -> int:
        if self._blob_port is None:
            raise AzuriteError("Azurite is not started")
        return self._blob_port

    @property
    def queue_port(self) -> int:
        if self._queue_port is None:
            raise AzuriteError("Azurite is not started")
        return self._queue_port

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self._host}:{self.blob_port}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{self._host}:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """The full development-account connection string with explicit endpoints."""
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
            f"QueueEndpoint={self.queue_endpoint};"
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Azurite:
        """Start Azurite and wait until blob and queue answer. Returns self."""
        if self._process is not None:
            raise AzuriteError("Azurite is already started")
        executable = self._executable or find_executable()
        fixed = all(port is not None for port in self._requested_ports)
        attempts = 1 if fixed else _START_ATTEMPTS
        last_error: AzuriteError | None = None
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(executable)
                return self
            except _PortClash as clash:
                last_error = AzuriteError(str(clash))
                log.info("Azurite port clash (attempt %d/%d), retrying", attempt, attempts)
        assert last_error is not None
        raise last_error

    def _start_once(self, executable: Path) -> None:
        blob_port = self._requested_ports[0] or _free_port(self._host)
        queue_port = self._requested_ports[1] or _free_port(self._host)
        while queue_port == blob_port:
            queue_port = _free_port(self._host)
        workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
        data = workdir / "data"
        data.mkdir()
        args = [
            str(executable),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
            "--location", str(data),
            "--blobHost", self._host, "--blobPort", str(blob_port),
            "--queueHost", self._host, "--queuePort", str(queue_port),
            "--tableHost", self._host, "--tablePort", "0",
        ]  # fmt: skip
        stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=workdir,
                    start_new_session=True,  # own process group: stop/pause reach all of it
                )
            except OSError as exc:
                shutil.rmtree(workdir, ignore_errors=True)
                raise AzuriteError(f"cannot run {executable}: {exc} (is node installed?)") from exc
        self._process, self._workdir = process, workdir
        self._blob_port, self._queue_port = blob_port, queue_port

        deadline = time.monotonic() + self._startup_timeout
        pending = {"Blob": blob_port, "Queue": queue_port}
        while pending:
            code = process.poll()
            if code is not None:
                stderr = self._stderr_tail()
                self._cleanup()
                message = f"Azurite exited with code {code} during start. stderr:\n{stderr}"
                if "EADDRINUSE" in stderr:
                    raise _PortClash(message)
                raise AzuriteError(message)
            for service, port in list(pending.items()):
                if _azurite_answers(self._host, port, service):
                    del pending[service]
            if not pending:
                break
            if time.monotonic() > deadline:
                stderr = self._stderr_tail()
                self._kill()
                self._cleanup()
                raise AzuriteError(f"Azurite did not answer on {', '.join(pending)} within {self._startup_timeout:.0f} s. stderr:\n{stderr}")
            time.sleep(0.05)
        log.info("Azurite started (pid %d): blob %d, queue %d", process.pid, blob_port, queue_port)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Azurite (SIGTERM, then SIGKILL after ``timeout``) and remove its data."""
        if self._process is None:
            return
        self._kill(timeout)
        self._cleanup()
        log.info("Azurite stopped")

    def pause(self) -> None:
        """Freeze Azurite (SIGSTOP): requests hang until ``resume()``."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw Azurite after ``pause()`` (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Context manager: paused inside the block, resumed on leaving it."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._blob_port is None:
            return "<Azurite (not started)>"
        return f"<Azurite pid={self.pid} blob={self._blob_port} queue={self._queue_port}>"

    # -- internals --------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise AzuriteError("Azurite is not running")
        assert self._process is not None
        os.killpg(self._process.pid, sig)

    def _kill(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            # A stopped process only acts on SIGTERM once continued.
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("Azurite did not stop within %.0f s, killing it", timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        # Children left in the group, if any.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._process = None
        self._workdir = None
        self._paused = False
        self._blob_port = self._queue_port = None

    def _stderr_tail(self) -> str:
        if self._workdir is None:
            return ""
        try:
            text = (self._workdir / "stderr.log").read_text(errors="replace")
        except OSError:
            return ""
        return text[-_STDERR_TAIL:].strip() or "(empty)"


class _PortClash(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.azurite",
        description="Start Azurite (blob + queue) with throw-away data; Ctrl-C stops it.",
    )
    parser.add_argument("--blob-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--queue-port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    azurite = Azurite(blob_port=args.blob_port, queue_port=args.queue_port)
    try:
        azurite.start()
    except AzuriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"Azurite is running (pid {azurite.pid}). Ctrl-C stops it and deletes its data.")
        print()
        print(f"AzureWebJobsStorage={azurite.connection_string}")
        print()
        sys.stdout.flush()
        while azurite.running:
            time.sleep(0.5)
        print("Azurite exited unexpectedly", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        azurite.stop()


if __name__ == "__main__":
    raise SystemExit(main())
