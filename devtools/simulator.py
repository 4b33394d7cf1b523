"""An Altinn 3 + Maskinporten simulator: real HTTP servers on 127.0.0.1 for tests and local runs.

It is meant to be as unfriendly as the real services, so that a client that reads from the wrong API,
trusts the wrong field or pages carelessly fails a test. Every Altinn behaviour below is taken from
Altinn's own code (altinn-storage, app-lib-dotnet, altinn-events); the comments next to the code name
the repository and file.

Two origins, both bound when the ``Simulator`` is made (so their URLs are known before ``start()``):

- ``sim.url``, the **platform**: storage (``/storage/api/v1/...``), events (``/events/api/v1/...``),
  the token exchange (``/authentication/api/v1/exchange/maskinporten``) and Maskinporten (issuer
  ``sim.url + "/maskinporten/"``, token endpoint ``issuer + "token"``).
- ``sim.apps_url``, the **app host** of every org: only the app API, ``/{org}/{app}/instances/...``.

Anything else on either origin is 404. Maskinporten checks what the real one checks (grant signature
against the registered key or certificate, ``aud``, ``exp - iat <= 120``, unused ``jti``, scopes);
Altinn calls need a token from the exchange (401 without a valid one).

The storage API (what a receiver should use):

- ``GET instances/{party}/{guid}``: storage's document (camelCase, nulls omitted, ``selfLinks.platform``;
  ``selfLinks.apps`` only if the stored document has one), no ``instanceOwner.party``. The org may read
  hard-deleted instances and their data.
- ``GET .../data/{id}``: exactly the stored bytes, the stored ``Content-Type``, ``Content-Disposition``
  with the filename; 400 when the element's data type is no longer in the app's metadata.
- ``POST .../complete``: body ignored, never 409 (the process is not checked), 403 (empty body) when the
  app's policy denies it (``sim.app(org, app).complete_allowed = False``) or the instance is unknown;
  idempotent.
- ``PUT .../substatus`` ``{"label", "description"}``: 400 without a label, 403 for another org.
- ``GET instances?...``: ordered by ``lastChanged`` descending (``order=asc:lastChanged`` to reverse),
  keyset paging on (lastChanged, internal id) with storage's own SQL quirk (so ties at a page boundary
  are skipped or repeated), ``next`` whenever the page is full (the last page may be empty), the
  continuation token ``{ticks};{id}`` URL-encoded twice inside ``next``.

The app API (``sim.apps_url``), as app-lib serves it: the instance is app-lib's DTO
(``instanceOwner.party`` with the submitter's name and national id, enums as numbers, nulls written,
500 when an element's data type is gone from the app's metadata); a form element (data type with
``appLogic.classRef``) is the model deserialized and re-serialized (JSON, or XML for
``Accept: application/xml``), never the stored bytes; an app with ``deployed = False`` answers 404.

Events: subscriptions need an https ``endPoint`` (http only for loopback hosts here), an identical POST
returns the existing subscription (201) and sends a new validation event; a failed validation is retried
after ``validation_retry_delays`` and then given up. ``sim.publish(inst)`` pushes an app event to every
validated matching subscription.

Set-up: ``sim.add_instance(org, app, [ElementSpec(...)], hard_deleted=..., ...)`` creates an instance
(and, on first use, the app: data type ``model`` is a form, every other one a plain attachment);
``sim.add_app(org, app, data_types=..., complete_allowed=..., deployed=...)`` registers an app's
metadata explicitly and ``sim.app(org, app)`` returns it for changes; ``sim.load_instance(doc,
contents)`` serves an instance document exactly as given (Altinn's own test data, say);
``sim.register_party(...)`` feeds the register (the app API's party, events' alternative subjects).
``inst.platform_url``/``inst.data_url(id)`` are on storage, ``inst.app_url``/``inst.app_data_url(id)``
on the app API.

Data bodies are generated on the fly (deterministic per element), or are exactly
``ElementSpec.content``; a GiB-sized element costs no memory. Form elements get a well-formed XML
document of the requested size. The served metadata is ``SimInstance.elements``, which tests may edit
(a wrong ``size``, say) without changing the body (``inst.stored_size(id)`` is the body's length).
State the documents are rendered from (``confirmed_by``, ``hard_deleted``, ``process_ended``,
``substatus``, ``instance_owner``, ``last_changed``) may be changed too; ``sim.confirmations``,
``sim.substatus_updates``, ``sim.validation_attempts``, ``sim.calls`` and ``sim.requests`` record what
clients did.

Faults are injected per endpoint (platform: ``token``, ``exchange``, ``instance``, ``data``,
``complete``, ``substatus``, ``query``, ``subscriptions``; app host: ``app-instance``, ``app-data``,
``app-complete``): status codes, delays, truncated bodies and connection resets. They are checked in the
order they were added; the first that applies is used. ``match`` is a substring of the request target
(path and query). With ``probability`` a fault is persistent and ``times`` is ignored. ``sim.calls``
counts requests per endpoint on both origins.

Example::

    with Simulator() as sim:
        sim.register_client("my-client", public_key_pem=pem, kid="k1")
        inst = sim.add_instance("ttd", "app", [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 10 << 20, "a.pdf")])
        ...  # the client reads inst.platform_url and its data, then POSTs .../complete
        assert sim.confirmations[0][0] == inst.id and sim.calls["app-instance"] == 0

``python -m devtools.simulator --port 8070`` runs one by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import collections
import copy
import functools
import hashlib
import ipaddress
import json
import math
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import unicodedata
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET  # noqa: N817 - the usual alias
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote_plus, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_SCOPES = "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
READ_SCOPE = "altinn:serviceowner/instances.read"
WRITE_SCOPE = "altinn:serviceowner/instances.write"
EVENTS_SUBSCRIBE_SCOPE = "altinn:events.subscribe"
PLATFORM_ENDPOINTS = frozenset({"token", "exchange", "instance", "data", "complete", "substatus", "query", "subscriptions"})
APP_ENDPOINTS = frozenset({"app-instance", "app-data", "app-complete"})
ENDPOINTS = PLATFORM_ENDPOINTS | APP_ENDPOINTS
FORM_CLASS_REF = "Altinn.App.Models.model.Model"

_GRANT_ALGS = ("RS256", "RS384", "RS512")
_GRANT_CLAIMS = frozenset({"aud", "iss", "scope", "iat", "exp", "jti", "resource"})
_BLOCK = 1 << 20  # generated content repeats a seeded block of this size, rotated per chunk
_MAX_REQUEST_BODY = 16 << 20
_MAX_EXPECTED_BYTES = 64 << 20
_MAX_FORM_PARSE = 64 << 20  # the app API parses form XML in memory
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_EPOCH_TICKS = 621_355_968_000_000_000  # .NET DateTime(1970-01-01).Ticks: 100 ns since 0001-01-01
_MAX_TICKS = 3_155_378_975_999_999_999  # DateTime.MaxValue.Ticks
_APP_RESOURCE_PREFIX = "urn:altinn:resource:app_"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XSD = "http://www.w3.org/2001/XMLSchema"
_JSON_UTF8 = "application/json; charset=utf-8"


# --------------------------------------------------------------------------------------------
# Time and text, the way .NET writes them


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


# --------------------------------------------------------------------------------------------
# Generated content


@functools.lru_cache(maxsize=8)
def _doubled_block(seed: int, block_len: int) -> bytes:
    block = random.Random(seed).randbytes(block_len)
    return block + block


def iter_content(seed: int, size: int) -> Iterator[memoryview]:
    """Yield the deterministic content of an element (seed, size) in chunks of at most 1 MiB."""
    if size <= 0:
        return
    block_len = min(size, _BLOCK)
    doubled = memoryview(_doubled_block(seed, block_len))
    sent = 0
    index = 0
    while sent < size:
        offset = 0 if index == 0 else (index * 2654435761 + seed) % block_len
        n = min(block_len, size - sent)
        yield doubled[offset : offset + n]
        sent += n
        index += 1


_XML_HEAD = f'<?xml version="1.0" encoding="utf-8"?>\n<Skjema xmlns:xsi="{_XSI}" xmlns:xsd="{_XSD}">\n'.encode()
_XML_TAIL = b"</Skjema>\n"
_XML_SHORT_HEAD, _XML_SHORT_TAIL = b"<Skjema>", b"</Skjema>"
_XML_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "


@functools.lru_cache(maxsize=16)
def _text_pool(seed: int) -> bytes:
    return "".join(random.Random(seed).choices(_XML_ALPHABET, k=4096)).encode()


def _iter_form_xml(seed: int, size: int) -> Iterator[bytes]:
    """A well-formed form XML document of exactly ``size`` bytes, deterministic per seed.

    Below 17 bytes no document fits: the content is then generated bytes (the app API cannot parse it).
    """
    if size < len(_XML_SHORT_HEAD) + len(_XML_SHORT_TAIL):
        yield from (bytes(c) for c in iter_content(seed, size))
        return
    head, tail = (_XML_HEAD, _XML_TAIL) if size >= len(_XML_HEAD) + len(_XML_TAIL) + 16 else (_XML_SHORT_HEAD, _XML_SHORT_TAIL)
    pool = _text_pool(seed)
    budget = size - len(head) - len(tail)
    out = bytearray(head)
    k = 0
    while budget > 0:
        k += 1
        opening, closing = b"  <felt%d>" % k, b"</felt%d>\n" % k
        overhead = len(opening) + len(closing)
        if budget < overhead + 1:
            out += b" " * budget  # whitespace between elements
            break
        n = 48 if budget - overhead - 48 >= overhead + 3 else budget - overhead
        start = (k * 131 + seed) % (len(pool) - n)
        out += opening + pool[start : start + n] + closing
        budget -= overhead + n
        if len(out) >= 1 << 16:
            yield bytes(out)
            out = bytearray()
    out += tail
    yield bytes(out)


def _content_disposition(filename: str) -> str:
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in ascii_name) or "file"
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# --------------------------------------------------------------------------------------------
# Form models: what app-lib does to a form data element


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _namespace(tag: str) -> str | None:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else None


def _xml_value(el: ET.Element) -> Any:
    if el.get(f"{{{_XSI}}}nil") == "true":
        return None
    attrs = {_local(k): v for k, v in el.attrib.items() if not k.startswith(f"{{{_XSI}}}")}
    children = list(el)
    if not children and not attrs:
        return el.text or ""
    obj: dict[str, Any] = dict(attrs)
    repeated: set[str] = set()
    for child in children:
        key, value = _local(child.tag), _xml_value(child)
        if key in repeated:
            obj[key].append(value)
        elif key in obj:
            obj[key] = [obj[key], value]
            repeated.add(key)
        else:
            obj[key] = value
    return obj


def _form_model(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    """Deserialize stored form XML: (root name, namespace, the model). ValueError when it is not XML."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(str(exc)) from None
    model = _xml_value(root)
    return _local(root.tag), _namespace(root.tag), model if isinstance(model, dict) else {}


def _xml_escape(text: str, quote_marks: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if quote_marks else text


def _xml_members(out: list[str], obj: dict[str, Any]) -> None:
    for key, value in obj.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, dict):
                out.append(f"<{key}>")
                _xml_members(out, item)
                out.append(f"</{key}>")
            elif item == "":
                out.append(f"<{key} />")
            else:
                out.append(f"<{key}>{_xml_escape(str(item))}</{key}>")


def _form_xml(root: str, namespace: str | None, model: dict[str, Any]) -> bytes:
    """The model as ASP.NET's XmlSerializerOutputFormatter writes it: no declaration, no indentation."""
    ns = f' xmlns="{_xml_escape(namespace, True)}"' if namespace else ""
    out = [f'<{root} xmlns:xsi="{_XSI}" xmlns:xsd="{_XSD}"{ns}>']
    _xml_members(out, model)
    out.append(f"</{root}>")
    return "".join(out).encode()


def _wants_xml(accept: str | None) -> bool:
    """ASP.NET content negotiation over app-lib's JSON and XML formatters (JSON first)."""
    if not accept:
        return False
    ranges = []
    for index, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q, index))
    # MvcOptions.RespectBrowserAcceptHeader is false: an Accept with */* is ignored (JSON).
    if any(media == "*/*" for media, _, _ in ranges):
        return False
    for media, q, _ in sorted(ranges, key=lambda r: (-r[1], r[2])):
        if q <= 0:
            continue
        if media in ("application/json", "text/json", "application/*+json", "application/*", "text/*"):
            return False
        if media in ("application/xml", "text/xml", "application/*+xml"):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Model


@dataclass
class ElementSpec:
    """One data element to create: metadata and its body.

    The body is exactly ``content`` when given (``size`` then defaults to ``len(content)``; give both to
    make the metadata disagree with the bytes), else it is generated deterministically, ``size`` bytes
    (default 400): a well-formed XML document for a form data type, random bytes for anything else.
    """

    data_type: str = "model"
    content_type: str = "application/xml"
    size: int | None = None
    filename: str | None = None
    file_scan_result: str = "NotApplicable"
    seed: int | None = None
    content: bytes | None = None

    def __post_init__(self) -> None:
        if self.content is not None:
            self.content = bytes(self.content)
        if self.size is None:
            self.size = len(self.content) if self.content is not None else 400


@dataclass
class _Body:
    kind: str  # "bytes" (given), "xml" (generated form document) or "random"
    size: int
    seed: int
    data: bytes | None = None

    def chunks(self) -> Iterator[bytes | memoryview]:
        if self.kind == "bytes":
            if self.data:
                yield memoryview(self.data)
        elif self.kind == "xml":
            yield from _iter_form_xml(self.seed, self.size)
        else:
            yield from iter_content(self.seed, self.size)

    def read(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())


def form_data_type(type_id: str = "model", *, task_id: str = "Task_1") -> dict[str, Any]:
    """An applicationmetadata.json data type for a form (``appLogic.classRef``), as Studio makes them."""
    return {
        "id": type_id,
        "allowedContentTypes": ["application/xml"],
        "appLogic": {"autoCreate": True, "classRef": FORM_CLASS_REF, "allowAnonymousOnStateless": False, "autoDeleteOnProcessEnd": False},
        "taskId": task_id,
        "maxCount": 1,
        "minCount": 1,
    }


def attachment_data_type(type_id: str, *, task_id: str = "Task_1", allowed_content_types: list[str] | None = None) -> dict[str, Any]:
    """A plain attachment data type (no ``appLogic``)."""
    doc: dict[str, Any] = {"id": type_id, "taskId": task_id, "maxCount": 0, "minCount": 0}
    if allowed_content_types is not None:
        doc["allowedContentTypes"] = list(allowed_content_types)
    return doc


@dataclass
class SimApp:
    """An app's metadata (applicationmetadata.json) and policy. Tests may change the fields at any time.

    - ``complete_allowed`` False: the XACML policy denies ``complete``; storage (and the app) answer 403.
    - ``deployed`` False: the app host answers 404 for every request to this app.
    - ``data_types``: removing one an instance still has makes the app API's instance GET answer 500 and
      storage's data GET for those elements 400.
    """

    org: str
    app: str
    data_types: list[dict[str, Any]]
    complete_allowed: bool = True
    deployed: bool = True
    auto: bool = False  # made on first use by add_instance/load_instance: data types seen later are added

    @property
    def id(self) -> str:
        return f"{self.org}/{self.app}"

    def metadata(self) -> dict[str, Any]:
        """The applicationmetadata.json document."""
        return {"id": self.id, "org": self.org, "title": {"nb": self.app}, "dataTypes": copy.deepcopy(self.data_types), "autoDeleteOnProcessEnd": False}

    def data_type(self, type_id: str | None, *, ignore_case: bool = False) -> dict[str, Any] | None:
        for dt in self.data_types:
            dt_id = dt.get("id")
            if dt_id == type_id or (ignore_case and isinstance(dt_id, str) and isinstance(type_id, str) and dt_id.lower() == type_id.lower()):
                return dt
        return None

    def is_form(self, type_id: str | None) -> bool:
        dt = self.data_type(type_id)
        return bool(dt and (dt.get("appLogic") or {}).get("classRef") is not None)


class SimInstance:
    """An Altinn instance held by the simulator. Attributes may be changed by tests at any time.

    ``elements`` are the stored data element documents (what storage serves, before its self links);
    ``confirmed_by``, ``hard_deleted``, ``process_ended``, ``substatus``, ``instance_owner`` and
    ``last_changed`` (seconds) are the state the documents are rendered from.
    """

    def __init__(
        self,
        platform_base: str,
        apps_base: str,
        org: str,
        app: str,
        party_id: str,
        instance_guid: str,
        *,
        process_ended: bool,
        confirmed_by: list[str],
        hard_deleted: bool,
        now_us: int,
    ) -> None:
        self.org = org
        self.app = app
        self.party_id = party_id
        self.instance_guid = instance_guid
        self.process_ended = process_ended
        self.confirmed_by: list[str] = list(confirmed_by)
        self.hard_deleted = hard_deleted
        self.instance_owner: dict[str, Any] = {"partyId": party_id}
        self.substatus: dict[str, Any] | None = None
        self.party_name: str | None = None
        self.removed = False
        self.elements: list[dict[str, Any]] = []
        self._platform = platform_base
        self._apps = apps_base
        self._created_us = now_us
        self._last_changed_us = now_us
        self._lc_text: str | None = None  # a loaded document's own lastChanged, until the instance changes
        self._ended_us: int | None = now_us if process_ended else None
        self._hard_deleted_us: int | None = now_us if hard_deleted else None
        self._confirmed_on: dict[str, str] = {}
        self._seq = 0  # storage's internal id (the bigint in the continuation token)
        self._bodies: dict[str, _Body] = {}
        self._specs: dict[str, ElementSpec] = {}  # add_instance's specs, by element id (kept for older tests)
        self._sha256: dict[str, str] = {}
        self._doc: dict[str, Any] | None = None  # a loaded document (load_instance)
        self._doc_process: dict[str, Any] | None = None
        self._doc_status: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.party_id}/{self.instance_guid}"

    @property
    def app_url(self) -> str:
        """The instance on the app API (``sim.apps_url``)."""
        return f"{self._apps}/{self.org}/{self.app}/instances/{self.id}"

    @property
    def platform_url(self) -> str:
        """The instance on the storage API (``sim.url``)."""
        return f"{self._platform}/storage/api/v1/instances/{self.id}"

    def data_url(self, element_id: str) -> str:
        """An element on the storage API."""
        return f"{self.platform_url}/data/{element_id}"

    def app_data_url(self, element_id: str) -> str:
        """An element on the app API."""
        return f"{self.app_url}/data/{element_id}"

    @property
    def created(self) -> float:
        return self._created_us / 1_000_000

    @property
    def last_changed(self) -> float:
        return self._last_changed_us / 1_000_000

    @last_changed.setter
    def last_changed(self, value: float) -> None:
        self._set_last_changed(round(value * 1_000_000))

    def _set_last_changed(self, us: int) -> None:
        self._last_changed_us = us
        self._lc_text = None

    def _element_json(self, element_id: str, spec: ElementSpec) -> dict[str, Any]:
        created = _iso_us(self._created_us)
        return {
            "id": element_id,
            "instanceGuid": self.instance_guid,
            "dataType": spec.data_type,
            "filename": spec.filename,
            "contentType": spec.content_type,
            # altinn-storage src/Storage/Helpers/DataElementHelper.cs DataFileName: {appId}/{instanceGuid}/data/{dataId}
            "blobStoragePath": f"{self.org}/{self.app}/{self.instance_guid}/data/{element_id}",
            "selfLinks": {"platform": self.data_url(element_id)},
            "size": spec.size,
            "contentHash": None,
            "locked": self.process_ended,
            "refs": [],
            "isRead": True,
            "tags": [],
            "fileScanResult": spec.file_scan_result,
            "created": created,
            "createdBy": self.party_id,
            "lastChanged": created,
            "lastChangedBy": self.party_id,
        }

    def element(self, element_id: str) -> dict[str, Any]:
        """The stored JSON dict of a data element (KeyError when unknown); ids compare case-insensitively."""
        wanted = element_id.lower()
        for element in self.elements:
            if str(element.get("id", "")).lower() == wanted:
                return element
        raise KeyError(element_id)

    def _body(self, element_id: str) -> _Body:
        return self._bodies[element_id.lower()]

    def stored_size(self, element_id: str) -> int:
        """The length of the element's stored body (what storage's Content-Length says; ``size`` may differ)."""
        return self._body(element_id).size

    def iter_content(self, element_id: str) -> Iterator[bytes | memoryview]:
        """The element's stored body, chunk by chunk."""
        return self._body(element_id).chunks()

    def expected_sha256(self, element_id: str) -> str:
        """Hex SHA-256 of the element's stored body, computed by regenerating it (cached)."""
        key = element_id.lower()
        digest = self._sha256.get(key)
        if digest is None:
            h = hashlib.sha256()
            for chunk in self.iter_content(element_id):
                h.update(chunk)
            digest = self._sha256[key] = h.hexdigest()
        return digest

    def expected_bytes(self, element_id: str) -> bytes:
        """The element's whole stored body; only for small elements (up to 64 MiB)."""
        if self._body(element_id).size > _MAX_EXPECTED_BYTES:
            raise ValueError("element too large for expected_bytes; use expected_sha256")
        return self._body(element_id).read()

    def _mark_ended(self) -> None:
        if self.process_ended and self._ended_us is None:
            self._ended_us = self._last_changed_us
        if self.hard_deleted and self._hard_deleted_us is None:
            self._hard_deleted_us = self._last_changed_us

    def _process_regenerated(self) -> bool:
        return self._doc_process is None or bool(self._doc_process.get("ended")) != self.process_ended

    def _process_json(self) -> dict[str, Any]:
        self._mark_ended()
        if not self._process_regenerated():
            return copy.deepcopy(self._doc_process or {})
        created = _iso_us(self._created_us)
        if self.process_ended:
            return {"started": created, "startEvent": "StartEvent_1", "ended": _iso_us(self._ended_us or self._created_us), "endEvent": "EndEvent_1"}
        task = {
            "flow": 2,
            "started": created,
            "elementId": "Task_1",
            "name": "Utfylling",
            "altinnTaskType": "data",
            "flowType": "CompleteCurrentMoveToNext",
        }
        return {"started": created, "startEvent": "StartEvent_1", "currentTask": task}

    def _status_json(self) -> dict[str, Any]:
        self._mark_ended()
        if self._doc_status is not None:
            status = copy.deepcopy(self._doc_status)
        else:
            status = {"isArchived": False, "archived": None, "isSoftDeleted": False, "softDeleted": None, "isHardDeleted": False, "hardDeleted": None}
            status["readStatus"] = "Read"
        if self._process_regenerated():
            status["isArchived"] = self.process_ended
            status["archived"] = _iso_us(self._ended_us or self._created_us) if self.process_ended else None
        was_hard_deleted = bool((self._doc_status or {}).get("isHardDeleted"))
        status["isHardDeleted"] = self.hard_deleted
        if self.hard_deleted:
            # altinn-storage src/Storage/Controllers/InstancesController.cs Delete(hard): IsHardDeleted, IsSoftDeleted,
            # HardDeleted = now, SoftDeleted ??= now.
            when = status.get("hardDeleted") if was_hard_deleted and status.get("hardDeleted") else _iso_us(self._hard_deleted_us or self._last_changed_us)
            status["hardDeleted"] = when
            status["isSoftDeleted"] = True
            status["softDeleted"] = status.get("softDeleted") or when
        else:
            status["hardDeleted"] = None
        status["substatus"] = copy.deepcopy(self.substatus)
        return status

    def _confirmations_json(self) -> list[dict[str, Any]] | None:
        created = _iso_us(self._created_us)
        return [{"stakeholderId": s, "confirmedOn": self._confirmed_on.get(s, created)} for s in self.confirmed_by] or None

    def _storage_element(self, element: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(element)
        links = doc.get("selfLinks") if isinstance(doc.get("selfLinks"), dict) else {}
        element_id = doc.get("id")
        new_links: dict[str, Any] = {}
        if links.get("apps"):
            new_links["apps"] = self.app_data_url(element_id)
        # altinn-storage src/Storage.Interface/Models/DataElement.cs SetPlatformSelfLinks: only Platform is set.
        new_links["platform"] = self.data_url(element_id)
        doc["selfLinks"] = new_links
        return doc

    def _generated_base(self) -> dict[str, Any]:
        created = _iso_us(self._created_us)
        return {
            "id": None,
            "instanceOwner": None,
            "appId": None,
            "org": None,
            "selfLinks": None,
            "dueBefore": None,
            "visibleAfter": created,
            "process": None,
            "status": None,
            "completeConfirmations": None,
            "data": None,
            "created": created,
            "createdBy": self.party_id,
            "lastChanged": None,
            "lastChangedBy": self.party_id,
        }

    def to_json(self, *, omit_nulls: bool = False) -> dict[str, Any]:
        """The instance as storage holds it; ``omit_nulls=True`` is exactly what storage's GET serves."""
        doc = copy.deepcopy(self._doc) if self._doc is not None else self._generated_base()
        doc["id"] = self.id
        doc["instanceOwner"] = copy.deepcopy(self.instance_owner)
        doc["appId"] = f"{self.org}/{self.app}"
        doc["org"] = self.org
        old_links = doc.get("selfLinks") if isinstance(doc.get("selfLinks"), dict) else {}
        # altinn-storage src/Storage.Interface/Models/Instance.cs SetPlatformSelfLinks sets Platform; storage never
        # writes Apps (CreateInstanceFromTemplate has no SelfLinks), so it is there only if the document had one.
        links: dict[str, Any] = {"apps": self.app_url} if old_links.get("apps") else {}
        links["platform"] = self.platform_url
        doc["selfLinks"] = links
        doc["process"] = self._process_json()
        doc["status"] = self._status_json()
        doc["completeConfirmations"] = self._confirmations_json()
        doc["data"] = [self._storage_element(e) for e in self.elements]
        doc["lastChanged"] = self._lc_text or _iso_us(self._last_changed_us)
        return _drop_nulls(doc) if omit_nulls else doc

    def __repr__(self) -> str:
        return f"SimInstance({self.org}/{self.app} {self.id}, {len(self.elements)} elements)"


@dataclass
class _Client:
    client_id: str
    org: str
    scopes: frozenset[str]
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    certificates: list[x509.Certificate] = field(default_factory=list)


@dataclass
class _Token:
    client_id: str
    org: str | None
    scope: str
    expires: float
    revoked: bool = False

    def valid(self) -> bool:
        return not self.revoked and time.time() < self.expires

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope.split()


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


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Iterator[Any] | None = None
    length: int | None = None


class _Reply(Exception):
    """Raised by a route to answer at once."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class _Request:
    method: str
    path: str
    target: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    role: str = "platform"

    @property
    def raw_path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query_string(self) -> str:
        return urlsplit(self.target).query

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def params(self, name: str) -> list[str]:
        return list(self.query.get(name) or [])

    def bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def is_json(self) -> bool:
        media = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return media in ("application/json", "text/json") or (media.startswith("application/") and media.endswith("+json"))

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise _Reply(_problem(400, "body is not JSON")) from None


def _json(status: int, doc: Any, content_type: str = _JSON_UTF8) -> _Response:
    """Storage's JSON (Newtonsoft)."""
    return _Response(status, _newtonsoft(doc), content_type)


def _stj_json(status: int, doc: Any, content_type: str = _JSON_UTF8) -> _Response:
    """app-lib's and altinn-events' JSON (System.Text.Json)."""
    return _Response(status, _stj(doc), content_type)


def _text(status: int, text: str) -> _Response:
    """An ASP.NET controller returning a string (NotFound("..."), BadRequest("..."), StatusCode(n, "..."))."""
    return _Response(status, text.encode(), "text/plain; charset=utf-8")


def _json_string(status: int, text: str) -> _Response:
    """A storage action with [Produces("application/json")] (InstancesController Get, GetInstances,
    AddCompleteConfirmation, UpdateSubstatus; DataController Get) returning a string: a JSON string."""
    return _json(status, text)


def _stj_string_response(status: int, text: str) -> _Response:
    """The same from app-lib (InstancesController.Get) or altinn-events (SubscriptionController.Post), System.Text.Json."""
    return _stj_json(status, text)


def _problem(status: int, detail: str, title: str | None = None) -> _Response:
    titles = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type"}
    doc = {"type": "about:blank", "title": title or titles.get(status, "Error"), "status": status, "detail": detail}
    return _Response(status, json.dumps(doc).encode(), "application/problem+json; charset=utf-8")


def _empty(status: int) -> _Response:
    return _Response(status)


def _is_int32(text: str) -> bool:
    """ASP.NET's ``{x:int}`` route constraint."""
    return bool(re.fullmatch(r"[+-]?\d{1,10}", text)) and -(2**31) <= int(text) < 2**31


def _guid(text: str) -> str | None:
    """ASP.NET's ``{x:guid}`` route constraint; the canonical lower-case form."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _bool_param(value: str | None, name: str) -> bool | None:
    # ASP.NET model binding of bool?: "true"/"false" in any case; anything else is a 400.
    if value is None or value == "":
        return None
    if value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Reply(_problem(400, f"The value '{value}' is not valid for {name}."))


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not _is_int32(value.strip()):
        raise _Reply(_problem(400, f"The value '{value}' is not valid for {name}."))
    return int(value)


def _long(text: str) -> int:
    """.NET long.Parse: FormatException / OverflowException (ValueError here)."""
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise ValueError(f"The input string '{text}' was not in a correct format.")
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ValueError("Value was either too large or too small for an Int64.")
    return number


_ALTINN_KEY_LOCK = threading.Lock()
_ALTINN_KEY: list[rsa.RSAPrivateKey] = []


def generate_client_key() -> tuple[str, str]:
    """A fresh RSA key pair for a simulated Maskinporten client: ``(private PEM, public PEM)``.

    Made at run time: no key material is ever committed.
    """
    from cryptography.hazmat.primitives import serialization

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _altinn_signing_key() -> rsa.RSAPrivateKey:
    """The key Altinn tokens are signed with: one per process, made on first use."""
    with _ALTINN_KEY_LOCK:
        if not _ALTINN_KEY:
            _ALTINN_KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _ALTINN_KEY[0]


def _load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            key = x509.load_pem_x509_certificate(data).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("only RSA keys are supported (RS256/RS384/RS512)")
    return key


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: Simulator
    role: str  # "platform" or "apps"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AltinnSimulator/1.0"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sim._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.verbose:
            sys.stderr.write(f"[simulator] {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch()

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > _MAX_REQUEST_BODY:
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_REQUEST_BODY:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        sim = self.server.sim
        started = time.time()
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        status = 0
        logged = False
        fault: _Fault | None = None
        role = self.server.role
        route = sim._route(role, self.command, path)
        endpoint = route[0] if route else "other"
        sim._count(endpoint)
        try:
            try:
                body = self._read_body()
            except ValueError:
                body = None
            if body is None:
                self.close_connection = True
                response = _problem(413, "request body too large or malformed")
            else:
                fault = sim._take_fault(endpoint, self.path) if route else None
                request = _Request(self.command, path, self.path, parse_qs(split.query, keep_blank_values=True), self.headers, body, role)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    response = sim._fault_response(fault)
                elif route is None:
                    response = _empty(404)
                else:
                    try:
                        response = route[1](request, *route[2])
                    except _Reply as reply:
                        response = reply.response
                    except Exception:
                        traceback.print_exc()
                        response = _Response(500, b"simulator error", "text/plain; charset=utf-8")
            status = response.status
            cut = None
            if fault is not None and fault.truncate_at is not None:
                cut = ("truncate", fault.truncate_at)
            elif fault is not None and fault.reset_after is not None:
                cut = ("reset", fault.reset_after)
            # Logged before the answer goes out, so a client that has its answer also sees the entry.
            sim._log_request(role, self.command, split.path, endpoint, status, started, fault)
            logged = True
            self._write(response, cut)
        except OSError:
            self.close_connection = True
        finally:
            if not logged:
                sim._log_request(role, self.command, split.path, endpoint, status, started, fault)

    def _write(self, response: _Response, cut: tuple[str, int] | None) -> None:
        if response.stream is not None:
            chunks: Iterator[Any] = response.stream
            length = response.length or 0
        else:
            chunks = iter((response.body,))
            length = len(response.body)
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        limit = cut[1] if cut else None
        sent = 0
        for chunk in chunks:
            if limit is not None and sent + len(chunk) >= limit:
                if limit > sent:
                    self.wfile.write(chunk[: limit - sent])
                break
            if len(chunk):
                self.wfile.write(chunk)
            sent += len(chunk)
        if cut:
            self._abort(cut[0])

    def _abort(self, kind: str) -> None:
        self.close_connection = True
        sock = self.connection
        try:
            if kind == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                sock.close()  # linger 0: the kernel answers with RST
            else:
                sock.shutdown(socket.SHUT_WR)  # FIN after the partial body
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The simulator


_Route = tuple[str, Callable[..., _Response], tuple[str, ...]]

_OWNER_KEYS = ("partyId", "personNumber", "organisationNumber", "username", "externalIdentifier")
_PROCESS_KEYS = ("started", "startEvent", "currentTask", "ended", "endEvent")
_TASK_KEYS = ("flow", "started", "elementId", "name", "altinnTaskType", "ended", "validated", "flowType")
_STATUS_KEYS = ("isArchived", "archived", "isSoftDeleted", "softDeleted", "isHardDeleted", "hardDeleted", "readStatus", "substatus")
_STATUS_DEFAULTS: dict[str, Any] = {"isArchived": False, "isSoftDeleted": False, "isHardDeleted": False, "readStatus": "Unread"}
_ELEMENT_KEYS = (
    "id",
    "instanceGuid",
    "dataType",
    "filename",
    "contentType",
    "blobStoragePath",
    "selfLinks",
    "size",
    "contentHash",
    "locked",
    "refs",
    "isRead",
    "tags",
    "userDefinedMetadata",
    "metadata",
    "deleteStatus",
    "fileScanResult",
    "references",
    "created",
    "createdBy",
    "lastChanged",
    "lastChangedBy",
)
_ELEMENT_DEFAULTS: dict[str, Any] = {"size": 0, "locked": False, "isRead": True, "tags": [], "fileScanResult": "NotApplicable"}
_READ_STATUS = {"Unread": 0, "Read": 1, "UpdatedSinceLastReview": 2}
_QUERY_DATE_OPERATORS = ("eq", "gt", "gte", "lt", "lte")


class Simulator:
    """Altinn platform, app hosts and Maskinporten on two local origins; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        apps_port: int = 0,
        maskinporten_token_lifetime: float = 599,
        altinn_token_lifetime: float = 1800,
        quote_exchange_token: bool = False,
        validation_retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0),
        validation_timeout: float = 10.0,
    ) -> None:
        self.maskinporten_token_lifetime = maskinporten_token_lifetime
        self.altinn_token_lifetime = altinn_token_lifetime
        self.quote_exchange_token = quote_exchange_token
        # altinn-events src/Events/appsettings.json ValidationQueuePolicy: a failed validation is retried after
        # 1 s, 5 s, 10 s (cooldown), then 30 s, 60 s, 120 s, 120 s, 120 s (scheduled), then moved to the error
        # queue (ValidationEventHandlerPolicy). The simulator keeps the shape on a shorter clock.
        self.validation_retry_delays: tuple[float, ...] = tuple(validation_retry_delays)
        # altinn-events src/Events/Configuration/EventsOutboundSettings.cs RequestTimeout: 45 s in Altinn.
        self.validation_timeout = validation_timeout
        self.verbose = False
        self._lock = threading.RLock()
        self._server = _Server((host, port), _Handler)
        self._server.sim = self
        self._server.role = "platform"
        self._apps_server = _Server((host, apps_port), _Handler)
        self._apps_server.sim = self
        self._apps_server.role = "apps"
        self.url: str = self._origin(self._server)
        self.apps_url: str = self._origin(self._apps_server)
        self.maskinporten_issuer: str = self.url + "/maskinporten/"
        self.token_endpoint: str = self.maskinporten_issuer + "token"
        self._threads: list[threading.Thread] = []
        self._background: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._clients: dict[str, _Client] = {}
        self._seen_jti: set[str] = set()
        self._mp_tokens: dict[str, _Token] = {}
        self._altinn_tokens: dict[str, _Token] = {}
        self._faults: list[_Fault] = []
        self._seq = 0
        self._last_us = 0
        self._next_party = 50_000_000
        self._next_subscription = 1
        self._apps: dict[tuple[str, str], SimApp] = {}
        self.instances: dict[str, SimInstance] = {}
        self._element_owner: dict[str, SimInstance] = {}
        self.parties: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[int, dict[str, Any]] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.grants = 0
        self.exchanges = 0
        self.connections = 0
        self.rejected_grants: list[str] = []
        self.confirmations: list[tuple[str, float]] = []
        self.complete_violations: list[str] = []
        self.substatus_updates: list[tuple[str, str, str | None]] = []
        self.validation_attempts: list[tuple[int, int]] = []
        self.requests: list[dict[str, Any]] = []
        self.on_complete: Callable[[SimInstance], None] | None = None

    @staticmethod
    def _origin(server: _Server) -> str:
        bound_host, bound_port = server.server_address[:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        return f"http://{shown}:{bound_port}"

    # ---- lifecycle

    def start(self) -> Simulator:
        """Serve both origins in daemon threads; returns self."""
        if self._threads:
            raise RuntimeError("simulator already started")
        for server in (self._server, self._apps_server):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"simulator-{server.role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and end validation retries."""
        self._stopping.set()
        if self._threads:
            for server in (self._server, self._apps_server):
                server.shutdown()
            for thread in self._threads:
                thread.join(timeout=5)
            self._threads = []
        self._server.server_close()
        self._apps_server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._background):
            thread.join(timeout=2)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._connections.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def _now_us(self) -> int:
        """Wall-clock microseconds, strictly increasing: no two changes share a lastChanged by accident."""
        with self._lock:
            now = max(time.time_ns() // 1000, self._last_us + 1)
            self._last_us = now
            return now

    # ---- set-up API

    def register_client(
        self,
        client_id: str,
        *,
        public_key_pem: bytes | str | None = None,
        kid: str | None = None,
        certificate_pem: bytes | str | None = None,
        scopes: str = DEFAULT_SCOPES,
        org: str = "ttd",
    ) -> None:
        """Register (or extend) a Maskinporten client: a key under ``kid`` and/or a certificate for ``x5c``."""
        if public_key_pem is None and certificate_pem is None:
            raise ValueError("give public_key_pem (with kid) and/or certificate_pem")
        if public_key_pem is not None and not kid:
            raise ValueError("a public key is registered under a kid; give kid")
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                client = self._clients[client_id] = _Client(client_id, org, frozenset(scopes.split()))
            client.org = org
            client.scopes = frozenset(scopes.split())
            if public_key_pem is not None and kid:
                client.keys[kid] = _load_public_key(public_key_pem)
            if certificate_pem is not None:
                data = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
                leaf = x509.load_pem_x509_certificates(data)[0]
                if not isinstance(leaf.public_key(), rsa.RSAPublicKey):
                    raise ValueError("only RSA certificates are supported")
                client.certificates.append(leaf)

    def add_app(
        self,
        org: str,
        app: str,
        *,
        data_types: list[dict[str, Any] | str] | None = None,
        complete_allowed: bool = True,
        deployed: bool = True,
    ) -> SimApp:
        """Register (or replace) an app's metadata. ``data_types``: applicationmetadata.json data type dicts,
        or ids (a plain attachment type); default one form data type ``model``."""
        types = [dict(t) if isinstance(t, dict) else attachment_data_type(t) for t in data_types] if data_types is not None else [form_data_type()]
        sim_app = SimApp(org, app, types, complete_allowed=complete_allowed, deployed=deployed)
        with self._lock:
            self._apps[(org, app)] = sim_app
        return sim_app

    def app(self, org: str, app: str) -> SimApp:
        """The app's metadata and policy (KeyError when unknown); tests may change its fields."""
        with self._lock:
            return self._apps[(org, app)]

    def _ensure_app(self, org: str, app: str, type_ids: list[Any]) -> SimApp:
        with self._lock:
            sim_app = self._apps.get((org, app))
            if sim_app is None:
                sim_app = self._apps[(org, app)] = SimApp(org, app, [form_data_type()], auto=True)
            if sim_app.auto:
                for type_id in type_ids:
                    if isinstance(type_id, str) and sim_app.data_type(type_id) is None:
                        is_form = type_id.lower() == "model"
                        sim_app.data_types.append(form_data_type(type_id) if is_form else attachment_data_type(type_id))
            return sim_app

    def register_party(self, party_id: str | int, *, person_number: str | None = None, organisation_number: str | None = None, name: str | None = None) -> None:
        """A party for the register: the app API's ``instanceOwner.party`` and events' alternative-subject lookup."""
        with self._lock:
            self.parties[str(party_id)] = {"ssn": person_number, "orgNumber": organisation_number, "name": name}

    def add_instance(
        self,
        org: str,
        app: str,
        elements: list[ElementSpec] | None = None,
        *,
        party_id: str | None = None,
        instance_guid: str | None = None,
        process_ended: bool = True,
        confirmed_by: list[str] | None = None,
        hard_deleted: bool = False,
    ) -> SimInstance:
        """Create an instance (default: one 400-byte XML form element of data type ``model``)."""
        specs = list(elements) if elements is not None else [ElementSpec()]
        with self._lock:
            sim_app = self._ensure_app(org, app, [s.data_type for s in specs])
            if party_id is None:
                self._next_party += 1
                party_id = str(self._next_party)
            if not str(party_id).isdigit():
                raise ValueError("party_id must be digits")
            guid = str(uuid.UUID(instance_guid)) if instance_guid else str(uuid.uuid4())
            inst = SimInstance(
                self.url,
                self.apps_url,
                org,
                app,
                str(party_id),
                guid,
                process_ended=process_ended,
                confirmed_by=confirmed_by or [],
                hard_deleted=hard_deleted,
                now_us=self._now_us(),
            )
            for spec in specs:
                element_id = str(uuid.uuid4())
                seed = spec.seed if spec.seed is not None else int(element_id.replace("-", "")[:15], 16)
                size = int(spec.size or 0)
                if spec.content is not None:
                    body = _Body("bytes", len(spec.content), seed, spec.content)
                else:
                    body = _Body("xml" if sim_app.is_form(spec.data_type) else "random", size, seed)
                inst._bodies[element_id] = body
                inst._specs[element_id] = spec
                inst.elements.append(inst._element_json(element_id, spec))
            self._register(inst)
        return inst

    def load_instance(self, doc: dict[str, Any], contents: dict[str, bytes] | None = None, *, org: str | None = None, app: str | None = None) -> SimInstance:
        """Serve an instance document exactly as given (e.g. one of Altinn's own test documents).

        ``id`` is ``partyId/instanceGuid`` (a bare guid, storage's internal form, gets the owner's party id,
        as altinn-storage PgInstanceRepository.ToExternal does); each data element keeps its own id, size,
        scan result and other fields, and its body is ``contents[element id]`` or generated bytes of its
        ``size``. ``org``/``app`` override the document's. Storage serves it with nulls omitted and its
        self links on the simulator; the query, ``/complete`` and ``/substatus`` work on it.
        """
        doc = copy.deepcopy(doc)
        contents = dict(contents or {})
        app_id = str(doc.get("appId") or "")
        org = org or doc.get("org") or app_id.split("/")[0]
        app = app or (app_id.split("/", 1)[1] if "/" in app_id else None)
        if not org or not app:
            raise ValueError("the document has no appId; give org and app")
        doc["org"], doc["appId"] = org, f"{org}/{app}"
        owner = doc.get("instanceOwner") if isinstance(doc.get("instanceOwner"), dict) else {}
        raw_id = str(doc.get("id") or "")
        party, _, guid_text = raw_id.rpartition("/")
        party = party or str(owner.get("partyId") or "")
        if not party.isdigit():
            raise ValueError("the document has no party id (id partyId/guid or instanceOwner.partyId)")
        guid = str(uuid.UUID(guid_text))
        owner.setdefault("partyId", party)
        doc["instanceOwner"] = owner
        process = doc.get("process") if isinstance(doc.get("process"), dict) else None
        status = doc.get("status") if isinstance(doc.get("status"), dict) else None
        elements = [e for e in (doc.get("data") or []) if isinstance(e, dict)]
        with self._lock:
            sim_app = self._ensure_app(org, app, [e.get("dataType") for e in elements])
            now = self._now_us()
            inst = SimInstance(
                self.url,
                self.apps_url,
                org,
                app,
                party,
                guid,
                process_ended=bool(process and process.get("ended")),
                confirmed_by=[],
                hard_deleted=bool(status and status.get("isHardDeleted")),
                now_us=now,
            )
            inst.instance_owner = owner
            inst._doc = doc
            inst._doc_process = copy.deepcopy(process)
            inst._doc_status = copy.deepcopy(status)
            inst._created_us = _parse_time_us(doc.get("created")) or now
            lc = _parse_time_us(doc.get("lastChanged"))
            inst._last_changed_us = lc if lc is not None else inst._created_us
            inst._lc_text = doc.get("lastChanged") if lc is not None else None
            inst._ended_us = _parse_time_us((process or {}).get("ended")) or (inst._last_changed_us if inst.process_ended else None)
            inst._hard_deleted_us = _parse_time_us((status or {}).get("hardDeleted")) or (inst._last_changed_us if inst.hard_deleted else None)
            inst.substatus = copy.deepcopy((status or {}).get("substatus"))
            for c in doc.get("completeConfirmations") or []:
                if isinstance(c, dict) and c.get("stakeholderId"):
                    inst.confirmed_by.append(str(c["stakeholderId"]))
                    if c.get("confirmedOn"):
                        inst._confirmed_on[str(c["stakeholderId"])] = str(c["confirmedOn"])
            for element in elements:
                element_id = str(element.get("id") or "")
                if not element_id:
                    raise ValueError("a data element has no id")
                seed = int(hashlib.sha256(element_id.encode()).hexdigest()[:15], 16)
                given = contents.get(element_id)
                if given is not None:
                    body = _Body("bytes", len(given), seed, bytes(given))
                else:
                    size = int(element.get("size") or 0)
                    body = _Body("xml" if sim_app.is_form(element.get("dataType")) else "random", size, seed)
                inst._bodies[element_id.lower()] = body
                inst.elements.append(element)
            self._register(inst)
        return inst

    def _register(self, inst: SimInstance) -> None:
        with self._lock:
            if inst.id in self.instances:
                raise ValueError(f"instance {inst.id} exists")
            self._seq += 1
            inst._seq = self._seq
            self.instances[inst.id] = inst
            self._element_owner.update((str(element["id"]).lower(), inst) for element in inst.elements)

    def _resolve(self, inst_or_id: SimInstance | str) -> SimInstance:
        key = inst_or_id.id if isinstance(inst_or_id, SimInstance) else str(inst_or_id).lower()
        with self._lock:
            return self.instances[key]

    def expected_sha256(self, element_id: str) -> str:
        """Hex SHA-256 of any element's stored body (shortcut for ``SimInstance.expected_sha256``)."""
        return self._element_owner[element_id.lower()].expected_sha256(element_id)

    def expected_bytes(self, element_id: str) -> bytes:
        """The stored body of any small element (shortcut for ``SimInstance.expected_bytes``)."""
        return self._element_owner[element_id.lower()].expected_bytes(element_id)

    def remove_instance(self, inst_or_id: SimInstance | str) -> None:
        """Forget an instance: every later request for it gets 404 (403 for storage's /complete)."""
        inst = self._resolve(inst_or_id)
        with self._lock:
            self.instances.pop(inst.id, None)
            inst.removed = True

    def set_scan_result(self, inst: SimInstance | str, element_id: str, result: str) -> None:
        """Change an element's ``fileScanResult`` (NotApplicable, Pending, Clean, Infected)."""
        with self._lock:
            self._resolve(inst).element(element_id)["fileScanResult"] = result

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

    def expire_altinn_tokens(self) -> None:
        """Every Altinn token issued so far is rejected from now on (401)."""
        with self._lock:
            for token in self._altinn_tokens.values():
                token.revoked = True

    def expire_maskinporten_tokens(self) -> None:
        """Every Maskinporten token issued so far is rejected by the exchange from now on (401)."""
        with self._lock:
            for token in self._mp_tokens.values():
                token.revoked = True

    def reset_counters(self) -> None:
        """Clear calls, grants, exchanges, rejections, confirmations, violations, substatus updates,
        validation attempts and the request log."""
        with self._lock:
            self.calls.clear()
            self.grants = 0
            self.exchanges = 0
            self.rejected_grants.clear()
            self.confirmations.clear()
            self.complete_violations.clear()
            self.substatus_updates.clear()
            self.validation_attempts.clear()
            self.requests.clear()

    # ---- events

    def cloud_event(self, inst: SimInstance, type: str = "app.instance.process.completed") -> dict[str, Any]:
        """The CloudEvent Altinn would push for ``inst`` (fresh id each call)."""
        ns = time.time_ns()
        # 7 fractional digits (.NET ticks), as Altinn's own tests show: altinn-events
        # test/Altinn.Platform.Events.Functions.Tests/TestingFunctions/EventsOutboundTests.cs "2023-01-13T09:47:41.1680188Z".
        stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns % 1_000_000_000) // 100:07d}Z"
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "time": stamp,
            "type": type,
            # app-lib-dotnet src/Altinn.App.Core/Infrastructure/Clients/Events/EventsClient.cs AddEvent:
            # Source = {app base url}instances/{instance.Id}, Subject = /party/{partyId}.
            "source": inst.app_url,
            "resource": f"urn:altinn:resource:app_{inst.org}_{inst.app}",
            "resourceinstance": inst.id,
            "subject": f"/party/{inst.party_id}",
        }
        # Same file: AlternativeSubject is /org/{orgnr}, else /person/{ssn}, else the external identifier.
        owner = inst.instance_owner
        if owner.get("organisationNumber"):
            event["alternativesubject"] = f"/org/{owner['organisationNumber']}"
        elif owner.get("personNumber"):
            event["alternativesubject"] = f"/person/{owner['personNumber']}"
        elif owner.get("externalIdentifier"):
            event["alternativesubject"] = owner["externalIdentifier"]
        return event

    def publish(
        self,
        inst: SimInstance,
        type: str = "app.instance.process.completed",
        *,
        event: dict[str, Any] | None = None,
        timeout: float = 45.0,
    ) -> list[tuple[str, int]]:
        """POST the event (or ``event``) to every matching validated subscription; (endpoint, status), 0 = no answer."""
        ev = event if event is not None else self.cloud_event(inst, type)
        with self._lock:
            targets = [s["endPoint"] for s in self.subscriptions.values() if s.get("validated") and _subscription_matches(s, ev)]
        return [(endpoint, _post_json(endpoint, ev, timeout)) for endpoint in targets]

    # ---- internals used by the handler

    def _count(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def _log_request(self, role: str, method: str, path: str, endpoint: str, status: int, started: float, fault: _Fault | None) -> None:
        entry = {
            "method": method,
            "path": path,
            "endpoint": endpoint,
            "status": status,
            "time": started,
            "fault": fault.describe() if fault else None,
            "host": role,
        }
        with self._lock:
            self.requests.append(entry)

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

    def _route(self, role: str, method: str, path: str) -> _Route | None:
        parts = path.strip("/").split("/")
        n = len(parts)
        if role == "apps":
            return self._app_route(method, parts)
        if path == "/maskinporten/token":
            return ("token", self._token, ()) if method == "POST" else None
        if path == "/authentication/api/v1/exchange/maskinporten":
            return ("exchange", self._exchange, ()) if method == "GET" else None
        if parts[:4] == ["storage", "api", "v1", "instances"]:
            # altinn-storage src/Storage/Controllers/InstancesController.cs and DataController.cs routes:
            # {instanceOwnerPartyId:int}/{instanceGuid:guid}[/complete|/substatus|/data/{dataGuid:guid}], {instanceGuid:guid}.
            if n == 4 and method == "GET":
                return ("query", self._query, ())
            if n == 5 and method == "GET" and _guid(parts[4]):
                return ("instance", self._get_instance, ("", parts[4]))
            if n >= 6 and _is_int32(parts[4]) and _guid(parts[5]):
                party, guid = parts[4], parts[5]
                if n == 6 and method == "GET":
                    return ("instance", self._get_instance, (party, guid))
                if n == 7 and parts[6] == "complete" and method == "POST":
                    return ("complete", self._complete, (party, guid))
                if n == 7 and parts[6] == "substatus" and method == "PUT":
                    return ("substatus", self._substatus, (party, guid))
                if n == 8 and parts[6] == "data" and method == "GET" and _guid(parts[7]):
                    return ("data", self._get_data, (party, guid, parts[7]))
            return None
        if parts[:4] == ["events", "api", "v1", "subscriptions"]:
            if n == 4 and method == "POST":
                return ("subscriptions", self._create_subscription, ())
            if n == 4 and method == "GET":
                return ("subscriptions", self._list_subscriptions, ())
            if n == 5 and method in ("GET", "DELETE"):
                return ("subscriptions", self._one_subscription, (parts[4],))
        return None

    def _app_route(self, method: str, parts: list[str]) -> _Route | None:
        # app-lib-dotnet src/Altinn.App.Api/Controllers/InstancesController.cs [Route("{org}/{app}/instances")] and
        # DataController.cs [Route("{org}/{app}/instances/{instanceOwnerPartyId:int}/{instanceGuid:guid}/data")].
        n = len(parts)
        if n < 5 or parts[2] != "instances" or not _is_int32(parts[3]) or not _guid(parts[4]):
            return None
        org, app, party, guid = parts[0], parts[1], parts[3], parts[4]
        if n == 5 and method == "GET":
            return ("app-instance", self._app_instance, (org, app, party, guid))
        if n == 6 and parts[5] == "complete" and method == "POST":
            return ("app-complete", self._app_complete, (org, app, party, guid))
        if n in (7, 9) and parts[5] == "data" and method == "GET" and _guid(parts[6]) and (n == 7 or parts[7] == "type"):
            return ("app-data", self._app_data, (org, app, party, guid, parts[6], parts[8] if n == 9 else ""))
        return None

    # ---- Maskinporten

    def _token(self, req: _Request) -> _Response:
        def reject(error: str, reason: str) -> _Reply:
            with self._lock:
                self.rejected_grants.append(reason)
            response = _json(400, {"error": error, "error_description": reason})
            response.headers = [("Cache-Control", "no-store")]
            return _Reply(response)

        if "application/x-www-form-urlencoded" not in req.headers.get("Content-Type", "").lower():
            raise reject("invalid_request", "content type must be application/x-www-form-urlencoded")
        form = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        if form.get("grant_type", [""])[0] != JWT_BEARER:
            raise reject("invalid_request", f"grant_type must be {JWT_BEARER}")
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            raise reject("invalid_request", "assertion missing")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise reject("invalid_grant", f"malformed assertion: {exc}") from None
        alg = header.get("alg")
        if alg not in _GRANT_ALGS:
            raise reject("invalid_grant", f"alg {alg!r} not allowed")
        iss = unverified.get("iss")
        key = self._grant_key(header, iss, reject)
        try:
            jwt.api_jws.decode_complete(assertion, key=key, algorithms=[alg])
        except jwt.PyJWTError as exc:
            raise reject("invalid_grant", f"signature does not verify: {exc}") from None
        claims = unverified
        unknown = sorted(set(claims) - _GRANT_CLAIMS)
        if unknown:
            raise reject("invalid_grant", f"unknown claims: {', '.join(unknown)}")
        if claims.get("aud") != self.maskinporten_issuer:
            raise reject("invalid_grant", f"aud must be {self.maskinporten_issuer!r}, got {claims.get('aud')!r}")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_number(iat) or not _is_number(exp):
            raise reject("invalid_grant", "iat and exp must be numbers")
        if abs(now - iat) > 10:
            raise reject("invalid_grant", f"iat {iat} is not within 10 s of now ({now:.0f})")
        if exp <= now:
            raise reject("invalid_grant", "assertion expired (exp in the past)")
        if exp - iat > 120:
            raise reject("invalid_grant", f"exp - iat = {exp - iat:.0f} s exceeds 120 s")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise reject("invalid_grant", "jti missing")
        resource = claims.get("resource")
        if resource is not None and not (isinstance(resource, str) or (isinstance(resource, list) and all(isinstance(r, str) for r in resource))):
            raise reject("invalid_grant", "resource must be a string or an array of strings")
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            raise reject("invalid_scope", "scope missing")
        with self._lock:
            client = self._clients[iss]
            denied = sorted(set(scope.split()) - client.scopes)
            if denied:
                raise reject("invalid_scope", f"scope not allowed for client: {' '.join(denied)}")
            if jti in self._seen_jti:
                raise reject("invalid_grant", f"jti {jti!r} already used")
            self._seen_jti.add(jti)
            access_token = "mp." + secrets.token_urlsafe(32)
            self._mp_tokens[access_token] = _Token(client.client_id, client.org, " ".join(scope.split()), now + self.maskinporten_token_lifetime)
            self.grants += 1
        doc = {"access_token": access_token, "token_type": "Bearer", "expires_in": self.maskinporten_token_lifetime, "scope": " ".join(scope.split())}
        response = _json(200, doc)
        response.headers = [("Cache-Control", "no-store")]
        return response

    def _grant_key(self, header: dict[str, Any], iss: Any, reject: Callable[[str, str], _Reply]) -> rsa.RSAPublicKey:
        with self._lock:
            clients = list(self._clients.values())
        if "x5c" in header:
            chain = header["x5c"]
            if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
                raise reject("invalid_grant", "x5c must be a non-empty JSON array of base64 certificates")
            try:
                leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
            except ValueError:
                raise reject("invalid_grant", "x5c leaf is not a base64 DER certificate") from None
            owners = [c for c in clients if any(cert == leaf for cert in c.certificates)]
            if not owners:
                raise reject("invalid_grant", "x5c certificate is not registered with any client")
            if not any(c.client_id == iss for c in owners):
                raise reject("invalid_grant", f"iss {iss!r} is not the client the certificate is registered to")
            now = datetime.now(UTC)
            if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
                raise reject("invalid_grant", "x5c certificate is not valid now")
            key = leaf.public_key()
            assert isinstance(key, rsa.RSAPublicKey)
            return key
        kid = header.get("kid")
        if not kid:
            raise reject("invalid_grant", "assertion header has neither kid nor x5c")
        owners = [c for c in clients if kid in c.keys]
        if not owners:
            raise reject("invalid_grant", f"unknown kid {kid!r}")
        for client in owners:
            if client.client_id == iss:
                return client.keys[kid]
        raise reject("invalid_grant", f"iss {iss!r} is not the client kid {kid!r} is registered to")

    # ---- Altinn authentication

    def _exchange(self, req: _Request) -> _Response:
        bearer = req.bearer()
        with self._lock:
            grant = self._mp_tokens.get(bearer or "")
            if grant is None or not grant.valid():
                return _empty(401)
            now = time.time()
            org = grant.org if "altinn:serviceowner" in grant.scope else None
            claims: dict[str, Any] = {
                "iss": f"{self.url}/authentication/api/v1/openid/",
                "client_id": grant.client_id,
                "scope": grant.scope,
                "iat": int(now),
                "nbf": int(now),
                "exp": int(now + self.altinn_token_lifetime),
                "jti": str(uuid.uuid4()),
            }
            if org:
                claims["org"] = org
                claims["urn:altinn:org"] = org
            token = jwt.encode(claims, _altinn_signing_key(), algorithm="RS256", headers={"kid": "altinn-simulator"})
            self._altinn_tokens[token] = _Token(grant.client_id, org, grant.scope, now + self.altinn_token_lifetime)
            self.exchanges += 1
        body = json.dumps(token) if self.quote_exchange_token else token
        return _Response(200, body.encode(), "text/plain; charset=utf-8")

    def _altinn_token(self, req: _Request) -> _Token:
        with self._lock:
            token = self._altinn_tokens.get(req.bearer() or "")
            if token is None or not token.valid():
                raise _Reply(_empty(401))
            return token

    def _find(self, guid: str, party: str = "") -> SimInstance | None:
        # altinn-storage src/Storage/Repository/PgInstanceRepository.cs GetOne(instanceGuid): storage looks the
        # instance up by its guid alone; the party id in the path is not compared.
        guid = _guid(guid) or guid
        with self._lock:
            if party and _is_int32(party):
                inst = self.instances.get(f"{int(party)}/{guid}")
                if inst is not None:
                    return inst
            for inst in self.instances.values():
                if inst.instance_guid == guid:
                    return inst
        return None

    @staticmethod
    def _may_read(token: _Token, inst: SimInstance) -> bool:
        return token.org == inst.org and token.has_scope(READ_SCOPE)

    # ---- storage: instances

    def _get_instance(self, req: _Request, party: str, guid: str) -> _Response:
        token = self._altinn_token(req)
        inst = self._find(guid, party)
        if inst is None:
            # altinn-storage InstancesController.Get: NotFound for a missing instance and for any exception.
            return _json_string(404, f"Unable to find instance {_guid(guid) or guid}")
        if not self._may_read(token, inst):
            return _empty(403)  # AuthorizeEnrichedInstanceAction(instance, "read") false -> Forbid()
        with self._lock:
            doc = inst.to_json(omit_nulls=True)
        return _json(200, doc)

    def _storage_body(self, token: _Token, party: str, guid: str, element_id: str) -> tuple[SimInstance, dict[str, Any], _Body]:
        """altinn-storage src/Storage/Controllers/DataController.cs Get, up to the blob read; raises the error answers."""
        if _is_int32(party) and int(party) == 0:
            raise _Reply(_json_string(400, "Missing parameter value: instanceOwnerPartyId can not be empty"))
        inst = self._find(guid, party)
        if inst is None:
            raise _Reply(_json_string(404, f"Unable to find any instance with id: {party}/{_guid(guid) or guid}."))
        if not self._may_read(token, inst):
            raise _Reply(_empty(403))
        with self._lock:
            try:
                element = copy.deepcopy(inst.element(_guid(element_id) or element_id))
            except KeyError:
                raise _Reply(_json_string(404, f"Unable to find any data element with id: {element_id}.")) from None
            body = inst._body(str(element["id"]))
            sim_app = self._apps.get((inst.org, inst.app))
        if sim_app is None:
            raise _Reply(_json_string(404, f"Cannot find application {inst.org}/{inst.app} in storage"))
        data_type = sim_app.data_type(element.get("dataType"))
        if data_type is None:
            # GetDataTypeAsync: the element's data type must still be in the app's metadata.
            raise _Reply(_json_string(400, "Requested element type is not declared in application metadata"))
        if data_type.get("actionRequiredToRead"):
            # DataTypeExtensions.CanRead asks the policy for that action; the simulator's policy grants none.
            raise _Reply(_empty(403))
        # (DeleteStatus.IsHardDeleted elements are 404 for anyone but the app owner, the only caller here.)
        path = element.get("blobStoragePath")
        if path is not None and path != f"{inst.org}/{inst.app}/{inst.instance_guid}/data/{str(element['id']).lower()}":
            if not str(path).startswith("ondemand"):
                # Get: a blobStoragePath that is not DataElementHelper.DataFileName(...) is "not found".
                raise _Reply(_json_string(404, "Unable to find requested data item"))
        return inst, element, body

    def _get_data(self, req: _Request, party: str, guid: str, element_id: str) -> _Response:
        token = self._altinn_token(req)
        _, element, body = self._storage_body(token, party, guid, element_id)
        return self._file(element, body)

    @staticmethod
    def _file(element: dict[str, Any], body: _Body) -> _Response:
        # File(stream, dataElement.ContentType, dataElement.Filename): the stored bytes, Content-Disposition
        # only with a filename.
        filename = element.get("filename")
        headers = [("Content-Disposition", _content_disposition(filename))] if filename else []
        content_type = element.get("contentType") or "application/octet-stream"
        return _Response(200, content_type=content_type, headers=headers, stream=body.chunks(), length=body.size)

    def _complete(self, req: _Request, party: str, guid: str) -> _Response:
        token = self._altinn_token(req)
        inst = self._find(guid, party)
        # altinn-storage [Authorize(Policy = POLICY_INSTANCE_COMPLETE)] -> src/Storage/Authorization/StorageAccessHandler.cs:
        # the XACML decision for "complete" (an unknown instance is not enriched and is denied); Forbid() is an
        # empty 403. AddCompleteConfirmation itself never looks at the process.
        if inst is None or not self._may_complete(token, inst):
            return _empty(403)
        doc = self._confirm(inst)
        return _json(200, doc)

    def _may_complete(self, token: _Token, inst: SimInstance) -> bool:
        with self._lock:
            sim_app = self._apps.get((inst.org, inst.app))
        return token.org == inst.org and token.has_scope(WRITE_SCOPE) and sim_app is not None and sim_app.complete_allowed

    def _confirm(self, inst: SimInstance) -> dict[str, Any]:
        callback = self.on_complete
        if callback is not None:
            try:
                callback(inst)
            except Exception as exc:
                with self._lock:
                    self.complete_violations.append(str(exc) or repr(exc))
        now = self._now_us()
        with self._lock:
            # altinn-storage InstancesController.AddCompleteConfirmation: an org that already confirmed gets the
            # instance unchanged; else {StakeholderId = org, ConfirmedOn = now} and LastChanged = now.
            if inst.org not in inst.confirmed_by:
                inst.confirmed_by.append(inst.org)
                inst._confirmed_on[inst.org] = _iso_us(now)
                inst._set_last_changed(now)
            self.confirmations.append((inst.id, now / 1_000_000))
            return inst.to_json(omit_nulls=True)

    def _substatus(self, req: _Request, party: str, guid: str) -> _Response:
        token = self._altinn_token(req)
        # altinn-storage InstancesController.UpdateSubstatus: [FromBody] Substatus (a JSON body), 400 when it or its
        # Label is null or empty, then GetOne (a missing instance throws: 500), 403 unless the caller's org is the
        # instance's org, else Status.Substatus = the body, LastChanged = now.
        if not req.is_json():
            return _problem(415, "Unsupported Media Type")
        if not req.body.strip():
            return _problem(400, "A non-empty request body is required.")
        body = req.json()
        if body is not None and not isinstance(body, dict):
            return _problem(400, "The substatus field is required.")
        fields = {str(k).lower(): v for k, v in (body or {}).items()}
        label, description = fields.get("label"), fields.get("description")
        if any(isinstance(v, (dict, list)) for v in (label, description)):
            return _problem(400, "The JSON value could not be converted to System.String.")
        label = None if label is None else label if isinstance(label, str) else json.dumps(label)
        description = None if description is None else description if isinstance(description, str) else json.dumps(description)
        if not label:
            return _json_string(
                400, f"Invalid sub status: {json.dumps({'Label': label, 'Description': description})}. Substatus must be defined and include a label."
            )
        inst = self._find(guid, party)
        if inst is None:
            return _empty(500)
        if token.org != inst.org:
            return _empty(403)
        now = self._now_us()
        with self._lock:
            inst.substatus = {"label": label, "description": description}
            inst._set_last_changed(now)
            self.substatus_updates.append((inst.id, label, description))
            doc = inst.to_json(omit_nulls=True)
        return _json(200, doc)

    # ---- storage: query

    def _query(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        # Model binding first ([ApiController]: a value that does not bind is a 400).
        size = _int_param(req.param("size"), "size")
        flags = {
            name: _bool_param(req.param(name), name) for name in ("process.isComplete", "status.isHardDeleted", "status.isArchived", "status.isSoftDeleted")
        }
        # altinn-storage src/Storage/Controllers/InstancesController.cs GetInstances -> AuthorizeCaller / AuthorizeOrgCaller.
        if not token.org:
            return _problem(400, "Either InstanceOwnerPartyId or InstanceOwnerIdentifier need to be defined.")
        if not token.has_scope(READ_SCOPE):
            return _empty(403)
        org, app_id = req.param("org"), req.param("appId")
        if not org and not app_id:
            return _json_string(400, "Org or AppId must be defined.")
        if not org:
            org = (app_id or "").split("/")[0]
        if token.org.lower() != org.lower():
            if not app_id:
                return _json_string(400, "AppId must be defined.")
            return _empty(403)  # AuthorizeCrossOrgAccess: the simulator's policies give no org another org's apps
        # NormalizeContinuationToken: the (already query-decoded) parameter is URL-decoded once more; the raw
        # value goes back into the self link.
        raw_token = req.param("continuationToken") or None
        token_text = unquote_plus(raw_token) if raw_token else None
        # ApplyQueryDefaults: SortBy (bound from "order") defaults to desc:lastChanged, Size to 100. The owner and
        # its hard-deleted instances: ApplyHardDeleteFilter only filters for callers without a service-owner scope.
        order = req.param("order") or "desc:lastChanged"
        ascending = not order.lower().startswith("desc:")
        size = 100 if size is None else size
        try:
            keyset = self._keyset(token_text)
            date_filters = [(f, op, us) for f in ("lastChanged", "created") for op, us in _date_filters(req.params(f), f)]
        except ValueError as exc:
            # InstanceQueryParameters.GeneratePostgreSQLParameters runs inside PgInstanceRepository's try: its
            # exception becomes InstanceQueryResponse.Exception and the controller answers StatusCode(500, message).
            return _json_string(500, str(exc))
        if size < 0:
            return _json_string(500, "22023: FETCH FIRST count must not be negative")
        exclude = req.param("excludeConfirmedBy")
        with self._lock:
            rows = []
            for inst in self.instances.values():
                if inst.org != org or (app_id and f"{inst.org}/{inst.app}" != app_id):
                    continue
                process, status = inst._process_json(), inst._status_json()
                lc, created = _ticks(inst._last_changed_us), _ticks(inst._created_us)
                # storage.readinstancefromquery_v8 (src/Storage/Migration/FunctionsAndProcedures/readinstancefromquery.sql)
                if not _keyset_admits(keyset, ascending, lc, inst._seq):
                    continue
                complete = flags["process.isComplete"]
                if complete is True and process.get("ended") is None:
                    continue
                if complete is False and process.get("currentTask") is None:
                    continue
                if any(value is not None and bool(status.get(name.split(".")[1])) != value for name, value in flags.items() if name.startswith("status.")):
                    continue
                if exclude and exclude in inst.confirmed_by:
                    continue
                if not all(_compare(op, lc if f == "lastChanged" else created, _ticks(us)) for f, op, us in date_filters):
                    continue
                rows.append((lc, inst._seq, inst))
            # ORDER BY lastChanged (ASC or DESC), id -- the id is ascending in both directions, while the keyset
            # condition for DESC asks for id < the last id: ties at a page boundary are repeated or skipped.
            rows.sort(key=lambda r: (r[0] if ascending else -r[0], r[1]))
            page = rows[:size]
            docs = [inst.to_json(omit_nulls=True) for _, _, inst in page]
        # PgInstanceRepository.GetInstancesInternal: a token whenever the page is full, {LastChanged.Ticks};{id}
        # (DateTime.MinValue and -1 for an empty full page).
        next_token = None
        if len(page) == size:
            next_token = f"{page[-1][0]};{page[-1][1]}" if page else "0;-1"
        if raw_token is None:
            self_link = f"{self.url}{req.raw_path}" + (f"?{req.query_string}" if req.query_string else "")
        else:
            self_link = self._request_link(req, raw_token)
        # ExecuteQueryAndBuildResponse: HttpUtility.UrlEncode(token), then BuildRequestLink's QueryBuilder encodes again.
        next_link = self._request_link(req, _http_utility_url_encode(next_token)) if next_token else None
        return _json(200, {"count": len(docs), "self": self_link, "next": next_link, "instances": docs})

    @staticmethod
    def _keyset(token_text: str | None) -> tuple[int, int] | None:
        """(lastChanged ticks, internal id) from a continuation token; None for the first page.

        InstanceQueryParameters.GeneratePostgreSQLParameters: no token -> _continue_idx -1 (first page); a token
        with ";" -> long.Parse of both parts (a bad number throws); a token without ";" sets nothing, so the SQL
        gets NULLs and matches no row (returned as (-1, None) here: an empty page).
        """
        if not token_text:
            return None
        if ";" not in token_text:
            return (-1, -1)
        parts = token_text.split(";")
        ticks, idx = _long(parts[0]), _long(parts[1])
        if not 0 <= ticks <= _MAX_TICKS:
            raise ValueError("Ticks must be between DateTime.MinValue.Ticks and DateTime.MaxValue.Ticks. (Parameter 'ticks')")
        return (ticks, idx)

    def _request_link(self, req: _Request, continuation: str) -> str:
        """InstancesController.BuildRequestLink with a token: the other parameters (QueryHelpers.ParseQuery groups a
        key's values), then continuationToken, each key and value through UrlEncoder.Default."""
        grouped: dict[str, list[str]] = {}
        for key, value in parse_qsl(req.query_string, keep_blank_values=True):
            if key != "continuationToken":
                grouped.setdefault(key, []).append(value)
        pairs = [(k, v) for k, values in grouped.items() for v in values] + [("continuationToken", continuation)]
        query = "&".join(f"{_url_encoder_default(k)}={_url_encoder_default(v)}" for k, v in pairs)
        return f"{self.url}{req.raw_path}?{query}"

    # ---- the app API (app-lib)

    def _deployed_app(self, org: str, app: str) -> SimApp:
        with self._lock:
            sim_app = self._apps.get((org, app))
        if sim_app is None or not sim_app.deployed:
            raise _Reply(_empty(404))  # no app answers at that path
        return sim_app

    def _app_find(self, org: str, app: str, party: str, guid: str) -> SimInstance | None:
        inst = self._find(guid, party)
        if inst is None or inst.org != org or inst.app != app:
            return None
        return inst

    def _app_instance(self, req: _Request, org: str, app: str, party: str, guid: str) -> _Response:
        sim_app = self._deployed_app(org, app)
        token = self._altinn_token(req)
        inst = self._app_find(org, app, party, guid)
        if inst is None:
            return _problem(404, f"Get instance {party}/{guid} failed", "Not Found")
        if not self._may_read(token, inst):
            return _empty(403)
        with self._lock:
            doc = self._app_doc(inst, sim_app, dto=True)
        return _stj_json(200, doc)

    def _app_complete(self, req: _Request, org: str, app: str, party: str, guid: str) -> _Response:
        self._deployed_app(org, app)
        token = self._altinn_token(req)
        inst = self._app_find(org, app, party, guid)
        # app-lib-dotnet InstancesController.AddCompleteConfirmation: [Authorize(Policy = POLICY_INSTANCE_COMPLETE)],
        # then storage's /complete through the instance client; the instance it returns, with app self links.
        if inst is None:
            return _empty(404)
        if not self._may_complete(token, inst):
            return _empty(403)
        self._confirm(inst)
        with self._lock:
            doc = self._app_doc(inst, None, dto=False)
        return _stj_json(200, doc)

    def _app_data(self, req: _Request, org: str, app: str, party: str, guid: str, element_id: str, data_type: str) -> _Response:
        sim_app = self._deployed_app(org, app)
        token = self._altinn_token(req)
        # app-lib-dotnet src/Altinn.App.Api/Controllers/DataController.cs Get -> GetInstanceDataOrError.
        inst = self._app_find(org, app, party, guid)
        if inst is None:
            return _problem(404, f"Did not find instance {party}/{guid}", "Instance Not Found")
        if not self._may_read(token, inst):
            return _empty(403)
        wanted = _guid(element_id) or element_id
        with self._lock:
            element = next((copy.deepcopy(e) for e in inst.elements if e.get("id") == wanted), None)
        if element is None:
            return _problem(404, f"Did not find data element {wanted} on instance {party}/{guid}", "Data Element Not Found")
        type_doc = sim_app.data_type(element.get("dataType"))
        if type_doc is None:
            detail = f'Data element {wanted} requires data type "{element.get("dataType")}", but it was not found in applicationmetadata.json'
            response = _problem(500, detail, "Data Type Not Found")
            return response
        if data_type and type_doc.get("id") != data_type:
            return _text(400, f"Data type {data_type} does not match data element {wanted}, which is of type {type_doc.get('id')}")
        if type_doc.get("actionRequiredToRead"):
            return _problem(403, f"Access denied for data element of type {type_doc.get('id')}", "Unauthorized")
        try:
            _, stored, body = self._storage_body(token, party, guid, wanted)
        except _Reply as reply:
            # The platform client's PlatformHttpException -> HandlePlatformHttpException: storage's status.
            return _empty(reply.response.status)
        if (type_doc.get("appLogic") or {}).get("classRef") is None:
            return self._file(stored, body)  # GetBinaryData: the stored bytes
        # GetFormData: the model deserialized from the stored XML, data processors run, returned with Ok(model):
        # content negotiation over the JSON (first) and XML formatters.
        if body.size > _MAX_FORM_PARSE:
            return _empty(500)
        try:
            root, namespace, model = _form_model(body.read())
        except ValueError:
            return _empty(500)  # XmlSerializer throws: an unhandled exception
        if _wants_xml(req.headers.get("Accept")):
            return _Response(200, _form_xml(root, namespace, model), "application/xml; charset=utf-8")
        return _stj_json(200, model)

    def _party_json(self, inst: SimInstance) -> dict[str, Any]:
        """app-lib-dotnet src/Altinn.App.Api/Models/InstanceResponse.cs PartyResponse.From(the register's party)."""
        owner = inst.instance_owner
        registered = self.parties.get(str(inst.party_id)) or {}
        ssn = registered.get("ssn") or owner.get("personNumber")
        org_number = registered.get("orgNumber") or owner.get("organisationNumber")
        if org_number:
            party_type, default_name, unit_type = 2, "TESTBEDRIFT AS", "AS"  # PartyType.Organisation
        elif ssn:
            party_type, default_name, unit_type = 1, "OLA NORDMANN", None  # PartyType.Person
        elif owner.get("username"):
            party_type, default_name, unit_type = 3, str(owner["username"]), None  # PartyType.SelfIdentified
        else:
            party_type, default_name, unit_type = 1, f"PARTY {inst.party_id}", None
        return {
            "partyId": int(inst.party_id),
            "partyUuid": registered.get("partyUuid"),
            "partyTypeName": party_type,
            "ssn": ssn or None,
            "orgNumber": org_number or None,
            "unitType": unit_type,
            "name": inst.party_name or registered.get("name") or default_name,
            "isDeleted": False,
        }

    def _app_doc(self, inst: SimInstance, sim_app: SimApp | None, *, dto: bool) -> dict[str, Any]:
        """The instance as app-lib's System.Text.Json writes it (camelCase, nulls written, enums without a
        System.Text.Json converter as numbers); ``dto`` adds InstanceResponse's party and filters elements.

        app-lib-dotnet src/Altinn.App.Api/Controllers/InstancesController.cs Get: InstanceResponse.From(
        instance.WithOnlyAccessibleDataElements(...)) -- DataElementAccessChecker.GetReaderProblem throws for a
        data type missing from applicationmetadata.json (the controller answers 500) and drops elements whose
        ActionRequiredToRead the policy denies. Field order and numbers as in app-lib's verified snapshot
        test/Altinn.App.Api.Tests/Controllers/InstancesController_GetTests.ReturnsOkResult_Raw.verified.txt.
        """
        doc = inst.to_json()
        elements = []
        for element in doc.get("data") or []:
            if dto:
                type_doc = sim_app.data_type(element.get("dataType"), ignore_case=True) if sim_app else None
                if type_doc is None:
                    raise _Reply(_stj_string_response(500, f"Get instance {inst.id} failed"))
                if type_doc.get("actionRequiredToRead"):
                    continue
            out = {k: element.get(k, _ELEMENT_DEFAULTS.get(k)) for k in _ELEMENT_KEYS}
            # SelfLinkHelper.SetInstanceAppSelfLinks: apps from the request's host; platform from storage.
            out["selfLinks"] = {"apps": inst.app_data_url(element.get("id")), "platform": inst.data_url(element.get("id"))}
            elements.append(out)
        process = doc.get("process")
        if isinstance(process, dict):
            process = {k: process.get(k) for k in _PROCESS_KEYS}
            if isinstance(process.get("currentTask"), dict):
                process["currentTask"] = {k: process["currentTask"].get(k) for k in _TASK_KEYS}
        status = doc.get("status") if isinstance(doc.get("status"), dict) else {}
        status = {k: status.get(k, _STATUS_DEFAULTS.get(k)) for k in _STATUS_KEYS}
        # Storage.Interface ReadStatus carries only Newtonsoft's StringEnumConverter: System.Text.Json writes a number.
        read_status = status.get("readStatus")
        status["readStatus"] = read_status if isinstance(read_status, int) else _READ_STATUS.get(str(read_status), 0)
        if isinstance(status.get("substatus"), dict):
            status["substatus"] = {"label": status["substatus"].get("label"), "description": status["substatus"].get("description")}
        confirmations = doc.get("completeConfirmations")
        if isinstance(confirmations, list):
            confirmations = [{"stakeholderId": c.get("stakeholderId"), "confirmedOn": c.get("confirmedOn")} for c in confirmations if isinstance(c, dict)]
        owner: dict[str, Any] = {k: inst.instance_owner.get(k) for k in _OWNER_KEYS}
        if dto:
            owner["party"] = self._party_json(inst)
        return {
            "id": inst.id,
            "instanceOwner": owner,
            "appId": f"{inst.org}/{inst.app}",
            "org": inst.org,
            "selfLinks": {"apps": inst.app_url, "platform": inst.platform_url},
            "dueBefore": doc.get("dueBefore"),
            "visibleAfter": doc.get("visibleAfter"),
            "process": process,
            "status": status,
            "completeConfirmations": confirmations,
            "data": elements,
            "presentationTexts": doc.get("presentationTexts"),
            "dataValues": doc.get("dataValues"),
            "created": doc.get("created"),
            "createdBy": doc.get("createdBy"),
            "lastChanged": doc.get("lastChanged"),
            "lastChangedBy": doc.get("lastChangedBy"),
        }

    # ---- events: subscriptions

    def _endpoint_ok(self, value: Any) -> bool:
        # altinn-events src/Events/Controllers/SubscriptionController.cs IsValidUri: absolute with the https scheme.
        # The simulator also takes http for loopback hosts, so tests can subscribe a local receiver.
        if not isinstance(value, str):
            return False
        parts = urlsplit(value)
        if not parts.netloc:
            return False
        return parts.scheme.lower() == "https" or (parts.scheme.lower() == "http" and _is_loopback(parts.hostname))

    def _party_from_alternative_subject(self, alternative: str) -> str | None:
        """altinn-events src/Events/Services/AppSubscriptionService.cs GetPartyFromAlternativeSubject."""
        org_number = ssn = None
        if alternative.startswith("/org/"):
            org_number = alternative[len("/org/") :]
        elif alternative.startswith("/organisation/"):
            org_number = alternative[len("/organisation/") :]
        elif alternative.startswith("/person/"):
            ssn = alternative[len("/person/") :]
        else:
            return None
        with self._lock:
            for party_id, party in self.parties.items():
                if (org_number and party.get("orgNumber") == org_number) or (ssn and party.get("ssn") == ssn):
                    return f"/party/{party_id}"
            for inst in self.instances.values():
                owner = inst.instance_owner
                if (org_number and owner.get("organisationNumber") == org_number) or (ssn and owner.get("personNumber") == ssn):
                    return f"/party/{inst.party_id}"
        return None

    def _create_subscription(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        # SubscriptionController.Post: [Consumes("application/json")], [FromBody] SubscriptionRequestModel
        # (System.Text.Json, property names case-insensitive).
        if not req.is_json():
            return _problem(415, "Unsupported Media Type")
        body = req.json()
        if not isinstance(body, dict):
            return _problem(400, "The subscriptionRequest field is required.")
        fields = {str(k).lower(): v for k, v in body.items()}
        for name in ("endpoint", "sourcefilter", "subjectfilter", "resourcefilter", "alternativesubjectfilter", "typefilter"):
            if fields.get(name) is not None and not isinstance(fields[name], str):
                return _problem(400, f"The JSON value could not be converted for {name}.")
        if not isinstance(fields.get("includesubunits", False), bool):
            return _problem(400, "The JSON value could not be converted to System.Boolean.")
        endpoint, source = fields.get("endpoint"), fields.get("sourcefilter")
        subject, resource = fields.get("subjectfilter"), fields.get("resourcefilter")
        alternative, type_filter = fields.get("alternativesubjectfilter"), fields.get("typefilter")
        include_subunits = bool(fields.get("includesubunits", False))
        if not self._endpoint_ok(endpoint):
            return _stj_string_response(400, "Missing or invalid endpoint to push events towards")
        if source is not None and not self._endpoint_ok(source):
            return _stj_string_response(400, "SourceFilter must be an absolute URL with the https scheme.")
        apps_host = urlsplit(self.apps_url).hostname or ""
        is_app = bool(resource and resource.lower().startswith(_APP_RESOURCE_PREFIX)) or bool(source and (urlsplit(source).hostname or "").endswith(apps_host))
        if not is_app and not token.has_scope(EVENTS_SUBSCRIBE_SCOPE):
            return _empty(403)
        # UriExtensions.IsValidUrn (case-sensitive pattern).
        if resource is not None and not re.fullmatch(r"urn:[a-z0-9-]{1,30}(:[a-z0-9()+,.\-;$_!/]{1,100}){1,10}", resource):
            return _stj_string_response(400, "Resource filter must be a valid urn")
        if not is_app:
            return _stj_string_response(400, "the simulator only models app subscriptions (GenericSubscriptionService is not simulated)")
        # AppSubscriptionService.CreateSubscription: EnrichSubject (alternativeSubjectFilter -> /party/{id} via the
        # register), consumer and createdBy from the token, ValidateSubscription, SetResourceFilterIfEmpty.
        if not subject and alternative:
            subject = self._party_from_alternative_subject(alternative)
        consumer = f"/org/{token.org}" if token.org else None
        source_path = urlsplit(source).path if source else None
        if not subject and not token.org:
            return _stj_string_response(400, "A valid subject to the authenticated identity is required")
        if alternative and not subject:
            return _stj_string_response(400, "A valid subject to the authenticated identity is required")
        if include_subunits and not subject:
            return _stj_string_response(400, "IncludeSubunits requires a subject filter.")
        if not consumer:
            return _stj_string_response(400, "Missing event consumer")
        if source_path is not None and len(source_path.split("/")) != 3:
            return _stj_string_response(400, "A valid app id is required in source filter {environment}/{org}/{app}")
        from_source = None
        if source_path is not None:
            _, sf_org, sf_app = source_path.split("/")
            from_source = f"{_APP_RESOURCE_PREFIX}{sf_org}_{sf_app}"
        if resource and from_source and resource != from_source:
            return _stj_string_response(400, "Provided resource filter and source filter are not compatible")
        resource = resource or from_source
        if not resource:
            return _empty(500)  # GetResourceFilterFromSource(null) throws
        # SubscriptionService.CompleteSubscriptionCreation: the consumer must be authorized for the resource.
        resource_org = resource[len(_APP_RESOURCE_PREFIX) :].split("_")[0] if resource.lower().startswith(_APP_RESOURCE_PREFIX) else ""
        if resource_org.lower() != str(token.org).lower():
            return _stj_string_response(403, f"Not authorized to create a subscription for resource {resource}.")
        # SubscriptionRepository: stored and found by the lower-cased resource filter and the AbsoluteUri forms;
        # events.find_subscription matches resource, source, subject, type, consumer, endpoint and includesubunits.
        fields_out = {
            "endPoint": _absolute_uri(str(endpoint)),
            "sourceFilter": _absolute_uri(source) if source else None,
            "resourceFilter": resource.lower(),
            "subjectFilter": subject,
            "typeFilter": type_filter,
            "consumer": consumer,
            "includeSubunits": include_subunits,
        }
        with self._lock:
            sub = next((s for s in self.subscriptions.values() if all(s.get(k) == v for k, v in fields_out.items())), None)
            if sub is None:
                sub_id = self._next_subscription
                self._next_subscription += 1
                sub = {
                    "id": sub_id,
                    "endPoint": fields_out["endPoint"],
                    "sourceFilter": fields_out["sourceFilter"],
                    "resourceFilter": fields_out["resourceFilter"],
                    "subjectFilter": subject,
                    "typeFilter": type_filter,
                    "consumer": consumer,
                    "createdBy": consumer,
                    "created": _iso_us(self._now_us()),
                    "validated": False,
                    "includeSubunits": include_subunits,
                }
                self.subscriptions[sub_id] = sub
            # ... and publishes a validation event for the found or created subscription, every time.
            thread = threading.Thread(target=self._validate_subscription, args=(sub["id"], sub["endPoint"]), name=f"validate-{sub['id']}", daemon=True)
            self._background = [t for t in self._background if t.is_alive()] + [thread]
            response = _stj_json(201, _drop_nulls(dict(sub)))
        thread.start()
        # Created("/events/api/v1/subscription/" + id, ...): a relative Location, "subscription" in the singular.
        response.headers.append(("Location", f"/events/api/v1/subscription/{sub['id']}"))
        return response

    def _validate_subscription(self, sub_id: int, endpoint: str) -> None:
        # altinn-events src/Events/Services/SubscriptionService.cs SendAndValidate (a new CreateValidateEvent per
        # attempt; a non-2xx or no answer throws and is retried by the Wolverine policy), then SetValidSubscription.
        delays = list(self.validation_retry_delays)
        attempt = 0
        while True:
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": f"{self.url}/events/api/v1/subscriptions/{sub_id}",
                "type": "platform.events.validatesubscription",
            }
            status = _post_json(endpoint, event, self.validation_timeout)
            with self._lock:
                self.validation_attempts.append((sub_id, status))
                if 200 <= status < 300:
                    if sub_id in self.subscriptions:
                        self.subscriptions[sub_id]["validated"] = True
                    return
            if attempt >= len(delays) or self._stopping.wait(delays[attempt]):
                return  # given up: the subscription stays validated false
            attempt += 1

    def _list_subscriptions(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        consumer = f"/org/{token.org}"
        with self._lock:
            subs = [_drop_nulls(dict(s)) for s in self.subscriptions.values() if s["consumer"] == consumer]
        return _stj_json(200, {"count": len(subs), "subscriptions": subs})

    def _one_subscription(self, req: _Request, raw_id: str) -> _Response:
        token = self._altinn_token(req)
        # SubscriptionController.Get(int id) / Delete(int id): an id that does not bind is a 400.
        if not _is_int32(raw_id):
            return _problem(400, f"The value '{raw_id}' is not valid.")
        with self._lock:
            sub = self.subscriptions.get(int(raw_id))
            if sub is None:
                return _empty(404)
            # SubscriptionService.AuthorizeAccessToSubscription: CreatedBy must be the caller.
            if sub["createdBy"] != f"/org/{token.org}":
                return _empty(403)
            if req.method == "DELETE":
                del self.subscriptions[int(raw_id)]
                return _empty(200)
            return _stj_json(200, _drop_nulls(dict(sub)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _date_filters(values: list[str], name: str) -> list[tuple[str, int]]:
    """InstanceQueryParameters.AddDateParamIfNotNull: "op:time"; a value without ":" or a bad time throws."""
    out = []
    for value in values:
        operator, colon, rest = value.partition(":")
        parsed = _parse_time_us(rest) if colon else None
        if parsed is None:
            raise ValueError(f"Invalid date expression: {value} for query key: {name}")
        if operator in _QUERY_DATE_OPERATORS:  # other operators name no SQL parameter and are ignored
            out.append((operator, parsed))
    return out


def _compare(operator: str, left: int, right: int) -> bool:
    return {"eq": left == right, "gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[operator]


def _keyset_admits(keyset: tuple[int, int] | None, ascending: bool, lc: int, seq: int) -> bool:
    """readinstancefromquery.sql: (_continue_idx <= 0 OR (asc AND (lc > L OR (lc = L AND id > I))) OR
    (desc AND (lc < L OR (lc = L AND id < I)))); a NULL _continue_idx (a token without ";") matches nothing."""
    if keyset is None:
        return True
    ticks, idx = keyset
    if ticks == -1 and idx == -1:
        return False
    if idx <= 0:
        return True
    if ascending:
        return lc > ticks or (lc == ticks and seq > idx)
    return lc < ticks or (lc == ticks and seq < idx)


def _subscription_matches(sub: dict[str, Any], event: dict[str, Any]) -> bool:
    """events.getsubscriptions_v2 (resource, subject, type; validated) and OutboundService's
    ``sub.SourceFilter.IsBaseOf(cloudEvent.Source)``."""
    if str(sub.get("resourceFilter") or "").lower() != str(event.get("resource") or "").lower():
        return False
    if sub.get("subjectFilter") and sub["subjectFilter"] != event.get("subject"):
        return False
    if sub.get("typeFilter") and sub["typeFilter"] != event.get("type"):
        return False
    return not sub.get("sourceFilter") or _is_base_of(sub["sourceFilter"], str(event.get("source", "")))


def _post_json(url: str, payload: dict[str, Any], timeout: float) -> int:
    """POST a CloudEvent as Altinn does; the status, or 0 when there was no answer."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": _JSON_UTF8})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except (OSError, ValueError):
        return 0


# --------------------------------------------------------------------------------------------
# By hand


def main(argv: list[str] | None = None) -> int:
    """Run a simulator with a demo instance until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devtools.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the platform's port (0: any)")
    parser.add_argument("--apps-port", type=int, default=0, help="the app host's port (0: any)")
    parser.add_argument("--client-id", help="Maskinporten client id to register")
    parser.add_argument("--public-key", metavar="PEMFILE", help="the client's public key (or private key, or certificate) PEM")
    parser.add_argument("--kid", help="key id for --public-key (default: the client id)")
    parser.add_argument("--certificate", metavar="PEMFILE", help="the client's certificate (for x5c grants)")
    parser.add_argument("--org", default="ttd")
    parser.add_argument("--app", default="demo-app")
    parser.add_argument("--no-demo", action="store_true", help="do not seed a demo instance")
    parser.add_argument("--quote-exchange-token", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    sim = Simulator(host=args.host, port=args.port, apps_port=args.apps_port, quote_exchange_token=args.quote_exchange_token)
    sim.verbose = args.verbose
    kid = None
    if args.client_id and (args.public_key or args.certificate):
        kid = (args.kid or args.client_id) if args.public_key else None
        public_key = open(args.public_key, "rb").read() if args.public_key else None
        certificate = open(args.certificate, "rb").read() if args.certificate else None
        sim.register_client(args.client_id, public_key_pem=public_key, kid=kid, certificate_pem=certificate, org=args.org)
    elif args.client_id or args.public_key or args.certificate:
        parser.error("--client-id needs --public-key and/or --certificate (and the other way round)")
    stop = threading.Event()

    def interrupt(signum: int, frame: Any) -> None:
        stop.set()

    # Explicit handlers: a parent (a background job, a test runner) may have left SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    if not args.no_demo:
        inst = sim.add_instance(
            args.org,
            args.app,
            [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 3 * _BLOCK + 123, "Søknad – vedlegg.pdf", "Clean")],
        )
    sim.start()
    try:
        print(f"Altinn + Maskinporten simulator at {sim.url}")
        print(f"  app host: {sim.apps_url}")
        print(f"  ALTINN_PLATFORM_URL={sim.url}")
        print(f"  ALTINN_APPS_URL={sim.apps_url}")
        print(f"  MASKINPORTEN_URL={sim.maskinporten_issuer}")
        print(f"  token endpoint: {sim.token_endpoint}")
        if args.client_id:
            print(f"  MASKINPORTEN_CLIENT_ID={args.client_id}" + (f"  MASKINPORTEN_KID={kid}" if kid else ""))
        else:
            print("  (no Maskinporten client registered: give --client-id and --public-key PEMFILE)")
        if not args.no_demo:
            print(f"  demo instance: {inst.platform_url}")
            print(f"  demo instance on the app API: {inst.app_url}")
            print(f"  demo event: {json.dumps(sim.cloud_event(inst))}")
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
