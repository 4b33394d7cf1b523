"""HTTP to Altinn and Maskinporten, with upstream treated as untrusted: total deadlines, bounded
reads, identity encoding, strict JSON.

* :func:`new_session` - a pooled ``requests`` session: no urllib3 retries (the policy is ours), no
  proxies or .netrc from the environment, ``Accept-Encoding: identity`` (the archive keeps the bytes
  Altinn stores, and a small compressed answer must not expand into a large one), and connections
  that a :class:`Deadline` can cut.
* :class:`Deadline` - a total time limit for one call, from the request to the last byte of the
  body. ``requests`` only bounds the gap between two reads, so a server that sends a byte every ten
  seconds could hold a worker until the function times out; the deadline's watchdog shuts the
  socket down when the time is up, and the read fails at once.
* :func:`read_capped` / :func:`read_json` - read an answer that is used whole, refusing more than
  a documented cap (checked against ``Content-Length`` before reading, and while reading).

The caps (bytes) of the answers that are read whole:

=================================  =========  ================================================
instance document                  16 MiB     about 20,000 data elements; larger: permanent
instance query page                16 MiB     100 instances
Maskinporten token, exchange       64 KiB     a token is a few KiB
subscription list                  4 MiB
one subscription                   256 KiB
``/complete``, errors              64 KiB     read only to reuse the connection, then dropped
=================================  =========  ================================================
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from shared.errors import PermanentError, TransientError

if TYPE_CHECKING:
    import requests

KIB = 1024
MIB = 1024 * KIB
INSTANCE_CAP = 16 * MIB
QUERY_CAP = 16 * MIB
TOKEN_CAP = 64 * KIB
SUBSCRIPTIONS_CAP = 4 * MIB
SUBSCRIPTION_CAP = 256 * KIB
SMALL_CAP = 64 * KIB

CONNECT_TIMEOUT = 5.0
READ_GAP = 60.0  # the longest silence between two reads
CALL_DEADLINE = 60.0  # total, for an answer that is read whole

# C0 and C1 controls (newlines and tabs included), and the bidirectional overrides and isolates that
# reorder what a terminal shows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def safe_text(value: Any, limit: int = 300) -> str:
    """Text from upstream made safe for a log line or a terminal: control characters (newlines,
    escape sequences, bidirectional overrides) shown escaped, length bounded."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL.sub(_escape, text)


# -- deadlines --------------------------------------------------------------------------------


class Deadline:
    """A total time limit for one call (monotonic seconds), from the request to the last byte read.

    ``start()`` arms it, ``stop()`` (always) disarms it; ``running()`` does both around a block.
    :meth:`request` sends a request with the connection registered, so that the watchdog can shut
    that socket down if the call is still running at the limit: the blocked read then fails at once
    and ``expired`` says why.
    """

    def __init__(self, seconds: float, what: str, *, until: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        now = clock()
        limit = now + max(0.0, seconds)
        self.at = min(limit, until) if until is not None else limit
        self.seconds = max(0.0, self.at - now)
        self.what = what
        self.expired = False
        self._clock = clock
        self._conn: Any = None
        self._armed = False
        self._done = False
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    def error(self) -> TransientError:
        return TransientError(f"{self.what}: no complete answer within {self.seconds:.0f} s (deadline)")

    def start(self) -> None:
        if self.remaining() <= 0:
            self.expired = True
            raise self.error()
        if not self._armed:
            self._armed = True
            _WATCHDOG.add(self)

    def stop(self) -> None:
        with self._lock:
            self._done = True
            self._conn = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Deadline]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def request(self, session: Any, method: str, url: str, **kwargs: Any) -> Any:
        """``session.request(...)`` with this deadline watching the connection it goes out on."""
        if self.remaining() <= 0:
            self.expired = True
            raise self.error()
        _active.deadline = self
        try:
            return session.request(method, url, **kwargs)
        finally:
            _active.deadline = None

    def _attach(self, conn: Any) -> None:
        with self._lock:
            if not self._done:
                self._conn = conn

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Watchdog:
    """One daemon thread for every deadline in the process (a heap ordered by time)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                at, _, deadline = self._heap[0]
                wait = at - deadline._clock()
                if wait > 0:
                    self._cond.wait(min(wait, 1.0))  # re-check: the clock may be a test's
                    continue
                heapq.heappop(self._heap)
            if not deadline._done:
                deadline._fire()


_WATCHDOG = _Watchdog()
_active = threading.local()


# -- the session ------------------------------------------------------------------------------


def _tracked_pools() -> dict[str, Any]:
    """urllib3 pool classes whose connections register with the calling thread's Deadline."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _Tracked:
        def request(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(_active, "deadline", None)
            if deadline is not None:
                deadline._attach(self)
            return super().request(*args, **kwargs)  # type: ignore[misc]

    class TrackedHTTPConnection(_Tracked, HTTPConnection):
        pass

    class TrackedHTTPSConnection(_Tracked, HTTPSConnection):
        pass

    class TrackedHTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTPConnection

    class TrackedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPSConnection

    return {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}


def new_session(pool_size: int = 32) -> requests.Session:
    """A pooled session for Altinn and Maskinporten; see the module docstring."""
    import requests
    from requests.adapters import HTTPAdapter

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = _tracked_pools()

    session = requests.Session()
    adapter = _Adapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
    session.headers["User-Agent"] = "altinn-mottak"
    session.headers["Accept-Encoding"] = "identity"
    return session


# -- reading answers --------------------------------------------------------------------------


def content_length(resp: Any, what: str) -> int | None:
    """``Content-Length`` as an int, None when absent; a malformed one is refused (transient)."""
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise TransientError(f"{what}: Altinn answered with a malformed Content-Length")
    return int(text)


def check_identity(resp: Any, what: str) -> None:
    """Refuse an encoded body: we ask for identity, and we keep the bytes as Altinn stores them."""
    encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise TransientError(f"{what}: the answer is {safe_text(encoding, 40)}-encoded although identity was asked for")


def read_capped(resp: Any, cap: int, what: str, *, permanent: bool = False, deadline: Deadline | None = None) -> bytes:
    """The whole body, at most ``cap`` bytes; more is refused (permanent when the size is the
    document's own, so that retrying cannot help). A body shorter than its ``Content-Length`` (cut
    off, or stopped by ``deadline``) is transient. The connection is released or dropped."""
    import requests
    import urllib3

    too_large = PermanentError if permanent else TransientError
    try:
        check_identity(resp, what)
        length = content_length(resp, what)
        if length is not None and length > cap:
            raise too_large(f"{what}: the answer is {length} bytes, more than the {cap} bytes accepted")
        try:
            body = resp.raw.read(cap + 1, decode_content=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if deadline is not None and deadline.expired:
                raise deadline.error() from None
            raise TransientError(f"{what}: the answer was interrupted ({type(exc).__name__})") from None
        if deadline is not None and deadline.expired:
            raise deadline.error()
        if len(body) > cap:
            raise too_large(f"{what}: the answer is more than the {cap} bytes accepted")
        if length is not None and len(body) != length:
            raise TransientError(f"{what}: the answer was cut off ({len(body)} of {length} bytes)")
        return bytes(body)
    finally:
        resp.close()


def drain(resp: Any, cap: int = SMALL_CAP) -> None:
    """Read at most ``cap`` bytes of an answer we do not use, then let it go."""
    try:
        if (content_length(resp, "answer") or 0) <= cap:
            resp.raw.read(cap + 1, decode_content=False)
    except Exception:
        pass
    finally:
        resp.close()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key[:40]!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes, what: str, *, permanent: bool = False) -> Any:
    """Strict JSON (UTF-8, no duplicate members, no NaN, bounded nesting)."""
    error = PermanentError if permanent else TransientError
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise error(f"{what}: the JSON is nested too deeply") from None
    except UnicodeDecodeError:
        raise error(f"{what}: the answer is not UTF-8") from None
    except ValueError as exc:
        raise error(f"{what}: the answer is not valid JSON ({safe_text(exc, 120)})") from None


def is_json(resp: Any) -> bool:
    media = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media == "text/json"


def read_json(resp: Any, cap: int, what: str, *, permanent: bool = False, deadline: Deadline | None = None) -> Any:
    """A JSON answer read whole (bounded). A body that is not JSON at all (a proxy's HTML page) is
    transient; JSON that is too large or malformed is ``permanent`` when asked."""
    if not is_json(resp):
        media = (resp.headers.get("Content-Type") or "none").split(";", 1)[0].strip()
        resp.close()
        raise TransientError(f"{what}: Altinn answered with {safe_text(media, 60)} where JSON was expected")
    return parse_json(read_capped(resp, cap, what, permanent=permanent, deadline=deadline), what, permanent=permanent)
