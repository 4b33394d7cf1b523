"""Injected faults: status codes, delays, truncated bodies and connection resets, per endpoint."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import SimulatorBase
from .constants import ENDPOINTS
from .http import _JSON_UTF8, _json, _Response


@dataclass
class _Fault:
    endpoint: str
    status: int | None
    delay: float | None
    truncate_at: int | None
    reset_after: int | None
    retry_after: int | None
    body: bytes | None
    remaining: int
    match: str | None
    probability: float | None
    rng: random.Random | None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k in ("status", "delay", "truncate_at", "reset_after") if (v := getattr(self, k)) is not None]
        return " ".join(parts)


class FaultsMixin(SimulatorBase):
    """``add_fault``/``clear_faults``, and the handler's fault look-up and answer."""

    def add_fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        delay: float | None = None,
        truncate_at: int | None = None,
        reset_after: int | None = None,
        retry_after: int | None = None,
        body: bytes | str | None = None,
        times: int = 1,
        match: str | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Inject a fault on an endpoint for ``times`` requests, or persistently with ``probability``."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {sorted(ENDPOINTS)}")
        if status is None and delay is None and truncate_at is None and reset_after is None:
            raise ValueError("a fault needs status, delay, truncate_at or reset_after")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = _Fault(
            endpoint=endpoint,
            status=status,
            delay=delay,
            truncate_at=truncate_at,
            reset_after=reset_after,
            retry_after=retry_after,
            body=body.encode() if isinstance(body, str) else body,
            remaining=times,
            match=match,
            probability=probability,
            rng=random.Random(seed) if probability is not None else None,
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, endpoint: str, target: str) -> _Fault | None:
        with self._lock:
            for fault in list(self._faults):
                if fault.endpoint != endpoint or (fault.match is not None and fault.match not in target):
                    continue
                if fault.rng is not None and fault.probability is not None:
                    if fault.rng.random() < fault.probability:
                        return fault
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault) -> _Response:
        status = fault.status or 500
        headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
        if fault.body is not None:
            is_json = fault.body.lstrip()[:1] in (b"{", b"[")
            content_type = _JSON_UTF8 if is_json else "text/plain; charset=utf-8"
            return _Response(status, fault.body, content_type, headers)
        if fault.endpoint == "token":
            error = "temporarily_unavailable" if status in (429, 503) else "server_error" if status >= 500 else "invalid_request"
            response = _json(status, {"error": error, "error_description": "simulated fault"})
            response.headers = headers
            return response
        return _Response(status, headers=headers)
