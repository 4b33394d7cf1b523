"""The state every part of the simulator shares: declared here so the per-service mixins type-check."""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import _Fault
    from .http import _Server
    from .instance import SimInstance
    from .maskinporten import _Client, _Token
    from .model import SimApp


class SimulatorBase:
    """Attributes set by ``Simulator.__init__`` (devtools/simulator/core.py), and the shared clock."""

    maskinporten_token_lifetime: float
    altinn_token_lifetime: float
    quote_exchange_token: bool
    validation_retry_delays: tuple[float, ...]
    validation_timeout: float
    verbose: bool
    url: str
    apps_url: str
    maskinporten_issuer: str
    token_endpoint: str
    _lock: threading.RLock
    _server: _Server
    _apps_server: _Server
    _threads: list[threading.Thread]
    _background: list[threading.Thread]
    _stopping: threading.Event
    _connections: set[socket.socket]
    _clients: dict[str, _Client]
    _seen_jti: set[str]
    _mp_tokens: dict[str, _Token]
    _altinn_tokens: dict[str, _Token]
    _faults: list[_Fault]
    _seq: int
    _last_us: int
    _next_party: int
    _next_subscription: int
    _apps: dict[tuple[str, str], SimApp]
    instances: dict[str, SimInstance]
    _element_owner: dict[str, SimInstance]
    parties: dict[str, dict[str, Any]]
    subscriptions: dict[int, dict[str, Any]]
    calls: collections.Counter[str]
    grants: int
    exchanges: int
    connections: int
    rejected_grants: list[str]
    confirmations: list[tuple[str, float]]
    complete_violations: list[str]
    substatus_updates: list[tuple[str, str, str | None]]
    validation_attempts: list[tuple[int, int]]
    requests: list[dict[str, Any]]
    on_complete: Callable[[SimInstance], None] | None

    def _now_us(self) -> int:
        """Wall-clock microseconds, strictly increasing: no two changes share a lastChanged by accident."""
        with self._lock:
            now = max(time.time_ns() // 1000, self._last_us + 1)
            self._last_us = now
            return now
