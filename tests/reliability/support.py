"""Helpers for the reliability suite: archive verification, the /complete guard, queue readers,
a TCP proxy that can take storage away, and a socket guard for outbound connections.

Everything checks the archive the way an auditor would: from Blob Storage, against what the
simulator says the bytes must be (``sim.expected_sha256``), never against what our code believes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def prefix(inst: Any) -> str:
    return f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"


def manifest_name(inst: Any) -> str:
    return prefix(inst) + "manifest.json"


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; its value. AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- archive verification ---------------------------------------------------------------------


def read_manifest(container: Any, inst: Any) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """(manifest document or None, manifest blob metadata)."""
    from azure.core.exceptions import ResourceNotFoundError

    blob = container.get_blob_client(manifest_name(inst))
    try:
        downloader = blob.download_blob()
        return json.loads(downloader.readall()), dict(downloader.properties.metadata or {})
    except ResourceNotFoundError:
        return None, {}


def archive_problems(container: Any, sim: Any, inst: Any, *, download: bool = True, require_confirmed: bool = True) -> list[str]:
    """Everything wrong with an instance's archive; [] when it is complete and correct.

    Complete and correct: a manifest listing exactly the instance's data elements, each with the
    size and sha256 the simulator generated, each blob committed with that size and that sha256 in
    its metadata, and (``download``) the blob's bytes hashing to it. With ``require_confirmed`` the
    manifest must carry the ``confirmed`` mark.
    """
    from azure.core.exceptions import ResourceNotFoundError

    manifest, meta = read_manifest(container, inst)
    if manifest is None:
        return [f"{inst.id}: no manifest"]
    problems = []
    if require_confirmed and not meta.get("confirmed"):
        problems.append(f"{inst.id}: manifest not marked confirmed")
    if (manifest.get("partyId"), manifest.get("instanceGuid")) != (inst.party_id, inst.instance_guid):
        problems.append(f"{inst.id}: manifest names another instance")
    entries = {e["dataElementId"]: e for e in manifest.get("dataElements", [])}
    expected_ids = [e["id"] for e in inst.elements]
    if sorted(entries) != sorted(expected_ids) or len(manifest.get("dataElements", [])) != len(expected_ids):
        problems.append(f"{inst.id}: manifest lists {sorted(entries)}, the instance has {sorted(expected_ids)}")
    for element in inst.elements:
        entry = entries.get(element["id"])
        if entry is None:
            continue
        want_sha = sim.expected_sha256(element["id"])
        want_size = inst._specs[element["id"]].size
        if entry["sha256"] != want_sha or entry["size"] != want_size:
            problems.append(
                f"{inst.id}/{element['id']}: manifest says {entry['size']} bytes sha256 {entry['sha256'][:12]}, Altinn has {want_size} {want_sha[:12]}"
            )
        blob = container.get_blob_client(entry["blob"])
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            problems.append(f"{inst.id}/{element['id']}: the manifest references a blob that does not exist")
            continue
        if props.size != entry["size"] or (props.metadata or {}).get("sha256") != entry["sha256"]:
            stored = (props.metadata or {}).get("sha256")
            problems.append(f"{inst.id}/{element['id']}: blob has {props.size} bytes sha256 {stored}, manifest {entry['size']} {entry['sha256']}")
        if download:
            digest = hashlib.sha256()
            for chunk in blob.download_blob().chunks():
                digest.update(chunk)
            if digest.hexdigest() != want_sha:
                problems.append(f"{inst.id}/{element['id']}: stored bytes hash to {digest.hexdigest()[:12]}, expected {want_sha[:12]}")
    return problems


def install_complete_guard(sim: Any, container: Any) -> None:
    """At the moment /complete reaches the simulator, the archive must already be whole.

    The check runs on the simulator's request thread before it records the confirmation; a
    failure lands in ``sim.complete_violations`` (an early confirmation). Metadata only (no
    download): the manifest exists, names every element with the bytes Altinn has, and every
    referenced blob is committed with that size and sha256.
    """

    def check(inst: Any) -> None:
        problems = archive_problems(container, sim, inst, download=False, require_confirmed=False)
        if problems:
            raise AssertionError(f"/complete for {inst.id} before its archive was whole: {problems}")

    sim.on_complete = check


def committed_blocks(container: Any, name: str) -> tuple[list[str], list[str]]:
    """(committed block ids, uncommitted block ids) of a blob."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        committed, uncommitted = container.get_blob_client(name).get_block_list("all")
    except ResourceNotFoundError:
        return [], []
    return [b.id for b in committed], [b.id for b in uncommitted]


def blob_committed(container: Any, name: str) -> bool:
    return bool(container.get_blob_client(name).exists())


# -- queues -----------------------------------------------------------------------------------


def queue_client(connection_string: str, name: str) -> Any:
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    return QueueClient.from_connection_string(
        connection_string, name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
    )


def peek_all(client: Any) -> list[dict[str, Any]]:
    """Every message of a queue (visible ones), decoded from base64 JSON, without taking them."""
    # peek returns at most 32; receive with a short lease and give back to see more.
    messages = []
    seen = set()
    for msg in client.receive_messages(messages_per_page=32, visibility_timeout=30, max_messages=5000):
        if msg.id in seen:
            break
        seen.add(msg.id)
        messages.append((msg, json.loads(msg.content)))
    for msg, _ in messages:
        client.update_message(msg.id, pop_receipt=msg.pop_receipt, visibility_timeout=0)
    return [doc for _, doc in messages]


def queue_length(client: Any) -> int:
    return int(client.get_queue_properties().approximate_message_count or 0)


def replay_poison(*, instance: str | None = None, instances: list[str] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Move messages from the poison queue back, as an operator would: the operations command
    ``python -m shared.cli replay-poison --json`` in a process of its own, with the app's settings
    (the environment); ``--all`` unless instances are given. Its JSON report (``replayed``: how many)."""
    args = [sys.executable, "-m", "shared.cli", "replay-poison", "--json"]
    selected = ([instance] if instance else []) + list(instances or [])
    args += [a for i in selected for a in ("--instance", i)] if selected else ["--all"]
    if dry_run:
        args.append("--dry-run")
    out = subprocess.run(args, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, f"replay-poison failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return json.loads(out.stdout)


def poison_report() -> dict[str, Any]:
    """``python -m shared.cli poison --json``: what an operator sees (first 32, with reasons)."""
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "poison", "--json"], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"poison failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return json.loads(out.stdout)


# -- storage outage: a TCP proxy --------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port; ``down()`` resets every connection and refuses
    new ones (RST) until ``up()``. Models a storage account that is unreachable, not one that hangs
    (for that, ``Azurite.pause()``)."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._server = socket.create_server((host, 0))
        self.port = self._server.getsockname()[1]
        self._up = True
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopping = False
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def is_up(self) -> bool:
        return self._up

    def down(self) -> None:
        with self._lock:
            self._up = False
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            _reset(sock)

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stopping = True
        self.down()
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # shutdown() first: close() alone does not end the connection while a pump thread is blocked
    # in recv() on it (the kernel keeps the socket until that call returns).
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def proxied_connection_string(azurite: Any, blob: TcpProxy, queue: TcpProxy) -> str:
    from devtools.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob.port}/{ACCOUNT_NAME};QueueEndpoint=http://127.0.0.1:{queue.port}/{ACCOUNT_NAME};"
    )


# -- outbound connections ---------------------------------------------------------------------

_LOCAL_NAMES = frozenset({"127.0.0.1", "localhost"})


class SocketGuard:
    """Refuses (and records) every outbound connection or name lookup that is not 127.0.0.1 on an
    allowed port. Patches ``socket.socket.connect``/``connect_ex``, ``socket.create_connection`` and
    ``socket.getaddrinfo`` for the whole process while active.

    Violations are recorded as well as raised, because code under test may swallow the error
    (a retry loop, a worker thread): the test asserts ``guard.violations == []`` at the end.
    """

    def __init__(self, allowed_ports: set[int]) -> None:
        self.allowed_ports = set(allowed_ports)
        self.violations: list[str] = []
        self.connections = 0
        self._saved: list[tuple[Any, str, Any]] = []

    def _check(self, host: Any, port: Any, what: str) -> None:
        if str(host) in _LOCAL_NAMES and isinstance(port, int) and port in self.allowed_ports:
            self.connections += 1
            return
        entry = f"{what} to {host!r}:{port!r}"
        self.violations.append(entry)
        raise ConnectionRefusedError(f"socket guard: outbound {entry} is not allowed in this test")

    def __enter__(self) -> SocketGuard:
        guard = self
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        real_create = socket.create_connection
        real_getaddrinfo = socket.getaddrinfo

        def connect(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                guard._check(address[0], address[1], "connect")
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                guard._check(address[0], address[1], "connect_ex")
            return real_connect_ex(sock, address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
            guard._check(address[0], address[1], "create_connection")
            return real_create(address, *args, **kwargs)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name is not None and str(name) not in _LOCAL_NAMES:
                guard.violations.append(f"name lookup of {name!r}")
                raise socket.gaierror(socket.EAI_NONAME, f"socket guard: lookup of {name!r} is not allowed in this test")
            return real_getaddrinfo(host, port, *args, **kwargs)

        self._saved = [
            (socket.socket, "connect", real_connect),
            (socket.socket, "connect_ex", real_connect_ex),
            (socket, "create_connection", real_create),
            (socket, "getaddrinfo", real_getaddrinfo),
        ]
        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket.create_connection = create_connection  # type: ignore[assignment]
        socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, value in self._saved:
            setattr(owner, name, value)
        self._saved = []


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
