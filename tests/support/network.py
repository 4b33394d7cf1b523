"""A TCP proxy that can take storage away, and a socket guard that records outbound connections."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


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
