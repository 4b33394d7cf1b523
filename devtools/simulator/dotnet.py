"""Time, text, JSON and URLs the way .NET writes and parses them (storage, app-lib, altinn-events)."""

from __future__ import annotations

import calendar
import ipaddress
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

_EPOCH_TICKS = 621_355_968_000_000_000  # .NET DateTime(1970-01-01).Ticks: 100 ns since 0001-01-01
_MAX_TICKS = 3_155_378_975_999_999_999  # DateTime.MaxValue.Ticks


def _iso_us(us: int) -> str:
    """A UTC time in microseconds as .NET writes a DateTime: fraction without trailing zeros."""
    seconds, fraction = divmod(us, 1_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:06d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _iso(t: float) -> str:
    return _iso_us(round(t * 1_000_000))


_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?\s*(Z|z|[+-]\d{2}:?\d{2})?")


def _parse_time_us(text: Any) -> int | None:
    """Microseconds since the epoch of an ISO 8601 time (UTC unless it has an offset); None if not one."""
    if not isinstance(text, str):
        return None
    m = _TIME_RE.fullmatch(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, sec, frac, zone = m.groups()
    try:
        seconds = calendar.timegm((int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(sec or 0), 0, 0, 0))
        datetime(int(year), int(month), int(day))
    except ValueError:
        return None
    # PostgreSQL keeps microseconds: storage drops the 7th digit (altinn-storage PgInstanceRepository.Create).
    us = seconds * 1_000_000 + int((frac or "").ljust(7, "0")[:7]) // 10
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        us -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * 1_000_000
    return us


def _ticks(us: int) -> int:
    return us * 10 + _EPOCH_TICKS


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _newtonsoft(doc: Any) -> bytes:
    """JSON as storage writes it (Newtonsoft.Json: compact, non-ASCII as UTF-8)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


# System.Text.Json's default JavaScriptEncoder escapes non-ASCII and HTML-sensitive characters.
_STJ_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_STJ_ESCAPED = frozenset("\"&'+<>`")


def _stj_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _STJ_SHORT:
            out.append(_STJ_SHORT[ch])
        elif code < 0x20 or code >= 0x7F or ch in _STJ_ESCAPED:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}")
            else:
                out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _stj_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _stj_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_stj_string(str(k))}:{_stj_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_stj_text(v) for v in value) + "]"
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _stj(doc: Any) -> bytes:
    """JSON as app-lib and altinn-events write it (System.Text.Json with its default encoder)."""
    return _stj_text(doc).encode()


def _http_utility_url_encode(text: str) -> str:
    """System.Web.HttpUtility.UrlEncode: space as +, lower-case hex, "-_.!*()" kept."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch in "-_.!*()"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.append(f"%{byte:02x}")
    return "".join(out)


def _url_encoder_default(text: str) -> str:
    """System.Text.Encodings.Web.UrlEncoder.Default, which ASP.NET's QueryBuilder uses: upper-case hex."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if ch.isascii() and (ch.isalnum() or ch in "-._~!$()*,;@") else f"%{byte:02X}")
    return "".join(out)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _absolute_uri(value: str) -> str:
    """Roughly .NET's Uri.AbsoluteUri: lower-case scheme and host, default port dropped, "/" for an empty path."""
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if parts.username is not None:
        netloc = f"{parts.username}{':' + parts.password if parts.password is not None else ''}@{netloc}"
    return f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def _is_base_of(base: str, candidate: str) -> bool:
    """.NET Uri.IsBaseOf: same scheme and authority, and the candidate's path starts with the base's path
    up to and including its last "/" (so ``https://h/ttd/app`` is a base of ``https://h/ttd/app2/...``)."""
    b, c = urlsplit(base), urlsplit(candidate)
    try:
        same_authority = (b.scheme.lower(), (b.hostname or "").lower(), b.port) == (c.scheme.lower(), (c.hostname or "").lower(), c.port)
    except ValueError:
        return False
    prefix = (b.path or "/")[: (b.path or "/").rfind("/") + 1]
    return same_authority and (c.path or "/").startswith(prefix)


# ASP.NET route constraints and .NET parsing


def _is_int32(text: str) -> bool:
    """ASP.NET's ``{x:int}`` route constraint."""
    return bool(re.fullmatch(r"[+-]?\d{1,10}", text)) and -(2**31) <= int(text) < 2**31


def _guid(text: str) -> str | None:
    """ASP.NET's ``{x:guid}`` route constraint; the canonical lower-case form."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _long(text: str) -> int:
    """.NET long.Parse: FormatException / OverflowException (ValueError here)."""
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise ValueError(f"The input string '{text}' was not in a correct format.")
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ValueError("Value was either too large or too small for an Int64.")
    return number
