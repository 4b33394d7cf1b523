"""Property-based tests of the webhook (hypothesis): thousands of generated requests.

Properties, for every request:

* never a 5xx;
* a message is queued if and only if the answer is 202, and then exactly one, naming exactly the
  instance of the event's ``source`` on its configured host;
* for structured events the status is the one an independent oracle predicts: the oracle knows the
  contract (CloudEvent 1.0, id/type alphabets, a JSON content type or none, 64 KiB, and the
  only acceptable sources written out as one regular expression), not the implementation;
* no outbound connection or name lookup to anything but Azurite and the local host, for the whole
  run (``socket_guard``: the receiver is configured for the real TT02 hosts, so any attempt to
  contact Altinn or Maskinporten would be caught).

Most examples call the function object in process (``function_app``'s ``receive`` with a
``func.HttpRequest``, storage in Azurite); a smaller set goes over HTTP through the local host.
``FUZZ_SCALE=10`` multiplies the example counts; ``HYPOTHESIS_PROFILE=random`` drops the fixed seed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import string
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

settings.register_profile(
    "fuzz-ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("random", parent=settings.get_profile("fuzz-ci"), derandomize=False)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
EXAMPLES = {"structured": 2500 * SCALE, "arbitrary": 1500 * SCALE, "http-structured": 300 * SCALE, "http-arbitrary": 200 * SCALE}
RUN: dict[str, int] = {}

# -- the oracle: the contract, written independently of shared/events.py -----------------------------

APPS = {("ttd", "apps-test"), ("digdir", "skjema")}  # ALTINN_APPS of the webhook_env fixture
ARCHIVED = "app.instance.process.completed"
VALIDATION = "platform.events.validatesubscription"
SOURCE = re.compile(
    r"https://(?P<org>[a-z]+)\.apps\.tt02\.altinn\.no/(?P=org)/(?P<app>[a-z-]+)/instances/"
    r"(?P<party>[1-9][0-9]{0,18})/(?P<guid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
    re.ASCII,
)
ID = re.compile(r"[!-~]{1,256}", re.ASCII)
TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)
JSON_MEDIA = {"application/json", "application/cloudevents+json", "text/json"}
CORE = {"specversion", "id", "type", "source", "time"}
MAX_BODY = 64 * 1024


def source_instance(source: Any) -> tuple[str, str, str, str] | None:
    if not isinstance(source, str):
        return None
    m = SOURCE.fullmatch(source)
    if not m or (m["org"], m["app"]) not in APPS:
        return None
    return m["org"], m["app"], m["party"], m["guid"]


def content_type_ok(content_type: str | None) -> bool:
    return not content_type or not content_type.strip() or content_type.split(";")[0].strip().lower() in JSON_MEDIA


@dataclass
class Expectation:
    statuses: set[int]
    instance: tuple[str, str, str, str] | None = None


def predict(doc: dict[str, Any], content_type: str | None, body: bytes, time_known: bool) -> Expectation:
    if not content_type_ok(content_type):
        return Expectation({415})
    if len(body) > MAX_BODY:
        return Expectation({413})
    bad = (
        doc.get("specversion") != "1.0"
        or not (isinstance(doc.get("id"), str) and ID.fullmatch(doc["id"]))
        or not (isinstance(doc.get("type"), str) and TYPE.fullmatch(doc["type"]))
        or not (isinstance(doc.get("source"), str) and 0 < len(doc["source"]) <= 2048)
        or ("time" in doc and doc["time"] is not None and not isinstance(doc["time"], str))
    )
    if bad:
        return Expectation({400})
    if doc["type"] == VALIDATION:
        valid = Expectation({200})
    else:
        instance = source_instance(doc["source"])
        if instance is None:
            valid = Expectation({400})
        elif doc["type"] != ARCHIVED:
            valid = Expectation({200})
        else:
            valid = Expectation({202}, instance)
    if not time_known:  # a generated time string may or may not be a valid timestamp
        valid.statuses.add(400)
    return valid


# -- strategies ---------------------------------------------------------------------------------------

NASTY = [
    "..", "/..", "%2F", "%2f", "%252F", "/", "//", "\\", "@", "@evil.example", ":443", ":8443", "?", "?a=b", "#", "#x", ";x", "\x00", "\n", "\t", " ",
    "\u0430", "\uff0f", "\u200b", "\u0660", "\uff15", ".", "-", "A", "0", "evil.", ".evil.example", "xn--", "%00", "%0d%0a",
]  # fmt: skip
ID_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@st.composite
def canonical_source(draw: Any) -> str:
    org, app = draw(st.sampled_from(sorted(APPS)))
    party = draw(st.from_regex(r"[1-9][0-9]{0,18}", fullmatch=True))
    guid = str(draw(st.uuids()))
    return f"https://{org}.apps.tt02.altinn.no/{org}/{app}/instances/{party}/{guid}"


@st.composite
def mutated_source(draw: Any) -> str:
    text = draw(canonical_source())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "nasty", "swapcase", "truncate", "other-org", "other-app"]))
        if how == "insert":
            text = text[:i] + draw(st.characters()) + text[i:]
        elif how == "delete" and text:
            text = text[: max(0, i - 1)] + text[i:]
        elif how == "replace" and text:
            j = min(i, len(text) - 1)
            text = text[:j] + draw(st.characters()) + text[j + 1 :]
        elif how == "nasty":
            text = text[:i] + draw(st.sampled_from(NASTY)) + text[i:]
        elif how == "swapcase":
            text = text[:i] + text[i:].swapcase()
        elif how == "truncate":
            text = text[:i]
        elif how == "other-org":
            text = text.replace("ttd", draw(st.sampled_from(["digdir", "evil", "TTD", "tt"])), 1)
        elif how == "other-app":
            text = text.replace("/apps-test/", draw(st.sampled_from(["/skjema/", "/apps-test2/", "/other/", "/"])), 1)
    return text


SOURCES = st.one_of(
    canonical_source(),
    mutated_source(),
    mutated_source(),
    st.text(max_size=200),
    st.sampled_from(
        ["http://169.254.169.254/latest/meta-data/", "https://ttd.apps.altinn.no/ttd/apps-test/instances/1/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12]
    ),
    JSON_LEAF,
)
IDS = st.one_of(
    st.text(alphabet=ID_CHARS, min_size=1, max_size=256),
    st.text(alphabet=ID_CHARS, min_size=257, max_size=300),
    st.text(max_size=40),
    st.just(""),
    JSON_LEAF,
)
TYPES = st.one_of(
    st.just(ARCHIVED),
    st.just(ARCHIVED),
    st.just(VALIDATION),
    st.sampled_from(["app.instance.created", "app.instance.process.movedTo.Task_2", "app.instance.substatus.changed"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
    st.text(max_size=30),
    JSON_LEAF,
)


@st.composite
def rfc3339(draw: Any) -> str:
    """A valid RFC 3339 timestamp, fractions of 0-9 digits (Altinn sends 7), Z or an offset."""
    d = draw(st.datetimes(min_value=__import__("datetime").datetime(1000, 1, 1)))
    fraction = draw(st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ".123456789"]))
    zone = draw(st.sampled_from(["Z", "+00:00", "+01:00", "-05:30", "+14:00"]))
    return d.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


CONTENT_TYPES_OK = st.one_of(
    st.none(),
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/cloudevents+json", "text/json", " application/json ; x=y", ""]
    ),
)
CONTENT_TYPES = st.one_of(
    CONTENT_TYPES_OK,
    st.sampled_from(["text/plain", "application/xml", "application/jsonp", "multipart/form-data", "application/json-seq", "text/json5"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40),
)
FIELDS = ("specversion", "id", "type", "source", "time", "content-type", "missing")


@st.composite
def structured_request(draw: Any) -> tuple[dict[str, Any], str | None, bytes, bool]:
    """A valid event, then 0 to 3 of its parts spoiled (or not: a mutation may keep it valid; the
    oracle decides). About a third of the examples are left valid."""
    spoil = set(draw(st.lists(st.sampled_from(FIELDS), max_size=3))) if draw(st.integers(0, 2)) else set()
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(st.text(alphabet=ID_CHARS, min_size=1, max_size=256)),
        "type": draw(st.sampled_from([ARCHIVED] * 6 + [VALIDATION, "app.instance.created", "app.instance.process.movedTo.Task_2"])),
        "source": draw(canonical_source()),
    }
    time_known = True
    if draw(st.booleans()):
        doc["time"] = draw(rfc3339())
    content_type = draw(CONTENT_TYPES_OK)
    if "specversion" in spoil:
        doc["specversion"] = draw(st.one_of(st.sampled_from(["0.3", "1.0 ", "1", "1.1", "v1.0"]), JSON_LEAF))
    if "id" in spoil:
        doc["id"] = draw(IDS)
    if "type" in spoil:
        doc["type"] = draw(TYPES)
    if "source" in spoil:
        doc["source"] = draw(SOURCES)
    if "time" in spoil:
        doc["time"] = draw(st.one_of(st.text(max_size=40), JSON_LEAF, st.datetimes().map(lambda d: d.isoformat())))
        time_known = doc["time"] is None or not isinstance(doc["time"], str)
    if "content-type" in spoil:
        content_type = draw(CONTENT_TYPES)
    if "missing" in spoil:
        doc.pop(draw(st.sampled_from(["specversion", "id", "type", "source", "time"])), None)
    extras = draw(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in CORE), JSON_VALUE, max_size=4))
    doc.update(extras)
    order = draw(st.permutations(list(doc)))
    doc = {k: doc[k] for k in order}
    body = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2]))).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 30)) == 0:
        body = b"\xef\xbb\xbf" + body
    if draw(st.integers(0, 60)) == 0:
        body += b" " * (MAX_BODY + 1 - len(body))  # just over the limit
    return doc, content_type, body, time_known


ARBITRARY_BODIES = st.one_of(
    st.binary(max_size=400),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"[" * 5000, b'{"a":' * 3000, b"1" * 5000, b"NaN", b"{}", b"\xef\xbb\xbf", b'{"specversion":"1.0"}']),
)


# -- running one request ------------------------------------------------------------------------------


def receive_function() -> Any:
    import function_app

    (fn,) = [f for f in function_app.app.get_functions() if f.get_function_name() == "receive"]
    return fn.get_user_function()


def call_in_process(fn: Any, body: bytes, content_type: str | None) -> int:
    import azure.functions as func

    headers = {} if content_type is None else {"content-type": content_type}
    req = func.HttpRequest(method="POST", url="http://127.0.0.1/api/events", headers=headers, params={}, route_params={}, body=body)
    resp = fn(req)
    if 400 <= resp.status_code < 500:
        problem = json.loads(resp.get_body())
        assert problem["status"] == resp.status_code and problem["detail"], problem
    return resp.status_code


def call_over_http(host: Any, body: bytes, content_type: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/events")
        conn.putheader("x-functions-key", host.function_key)
        if content_type is not None:
            conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def check(status: int, sent: list[tuple[str, str]], before: int, doc: dict[str, Any] | None, expect: Expectation | None) -> None:
    assert status < 500, f"{status} for {doc!r}"[:2000]
    queued = [json.loads(content) for name, content in sent[before:] if name == "altinn-events"]
    if status != 202:
        assert queued == [], f"queued for a {status}"
    else:
        assert len(queued) == 1, queued
        inst = queued[0]["instance"]
        source = queued[0]["event"]["source"]
        assert source_instance(source) == (inst["org"], inst["app"], inst["partyId"], inst["instanceGuid"]), (source, inst)
    if expect is not None:
        assert status in expect.statuses, f"got {status}, the contract says {sorted(expect.statuses)} for {doc!r}"[:3000]
        if status == 202:
            assert expect.instance is not None
            assert (inst["org"], inst["app"], inst["partyId"], inst["instanceGuid"]) == expect.instance
            assert queued[0]["event"]["id"] == doc["id"] and queued[0]["event"]["type"] == doc["type"]


def count(name: str) -> None:
    RUN[name] = RUN.get(name, 0) + 1


# -- the tests ----------------------------------------------------------------------------------------


def test_structured_events_in_process(webhook_env, socket_guard, sent_messages):
    fn = receive_function()

    @settings(settings.get_profile(PROFILE), max_examples=EXAMPLES["structured"])
    @given(structured_request())
    def run(request: tuple[dict[str, Any], str | None, bytes, bool]) -> None:
        doc, content_type, body, time_known = request
        count("structured")
        before = len(sent_messages)
        status = call_in_process(fn, body, content_type)
        check(status, sent_messages, before, doc, predict(doc, content_type, body, time_known))

    run()
    print(f"\nfuzz: {RUN.get('structured', 0)} structured events in process, {len(sent_messages)} queued")
    assert socket_guard.violations == []


def test_arbitrary_bodies_in_process(webhook_env, socket_guard, sent_messages):
    fn = receive_function()

    @settings(settings.get_profile(PROFILE), max_examples=EXAMPLES["arbitrary"])
    @given(ARBITRARY_BODIES, CONTENT_TYPES)
    def run(body: bytes, content_type: str | None) -> None:
        count("arbitrary")
        before = len(sent_messages)
        status = call_in_process(fn, body, content_type)
        check(status, sent_messages, before, None, None)
        assert status in (400, 413, 415, 200), status

    run()
    print(f"\nfuzz: {RUN.get('arbitrary', 0)} arbitrary bodies in process")
    assert socket_guard.violations == []


def test_structured_events_over_http(webhook_host, socket_guard, sent_messages):
    @settings(settings.get_profile(PROFILE), max_examples=EXAMPLES["http-structured"])
    @given(structured_request())
    def run(request: tuple[dict[str, Any], str | None, bytes, bool]) -> None:
        doc, content_type, body, time_known = request
        count("http-structured")
        before = len(sent_messages)
        status = call_over_http(webhook_host, body, content_type)
        check(status, sent_messages, before, doc, predict(doc, content_type, body, time_known))

    run()
    print(f"\nfuzz: {RUN.get('http-structured', 0)} structured events over HTTP")
    assert socket_guard.violations == []


def test_arbitrary_bodies_over_http(webhook_host, socket_guard, sent_messages):
    @settings(settings.get_profile(PROFILE), max_examples=EXAMPLES["http-arbitrary"])
    @given(ARBITRARY_BODIES, CONTENT_TYPES)
    def run(body: bytes, content_type: str | None) -> None:
        count("http-arbitrary")
        before = len(sent_messages)
        status = call_over_http(webhook_host, body, content_type)
        check(status, sent_messages, before, None, None)

    run()
    print(f"\nfuzz: {RUN.get('http-arbitrary', 0)} arbitrary bodies over HTTP; total so far {sum(RUN.values())}")
    assert socket_guard.violations == []


def test_the_guard_would_have_caught_an_outbound_call(socket_guard):
    """The socket guard is not decorative: a connection to Altinn's TT02 host is refused and recorded."""
    import requests

    with pytest.raises(requests.RequestException):
        requests.get("https://platform.tt02.altinn.no/authentication/api/v1/exchange/maskinporten", timeout=2)
    with pytest.raises(OSError):
        import socket

        socket.create_connection(("169.254.169.254", 80), timeout=1)
    assert len(socket_guard.violations) == 2
    socket_guard.violations.clear()


def test_the_oracle_agrees_with_the_documented_examples():
    guid = "428a4575-2c04-4400-89a3-1aaadd2579cd"
    assert source_instance(f"https://ttd.apps.tt02.altinn.no/ttd/apps-test/instances/50660768/{guid}") == ("ttd", "apps-test", "50660768", guid)
    assert source_instance(f"https://ttd.apps.tt02.altinn.no/digdir/skjema/instances/50660768/{guid}") is None
    assert source_instance(f"https://ttd.apps.tt02.altinn.no/ttd/apps-test/instances/050660768/{guid}") is None
    assert source_instance(f"https://ttd.apps.tt02.altinn.no/ttd/apps-test/instances/50660768/{guid}\n") is None
    assert source_instance(f"https://ttd.apps.tt02.altinn.no/ttd/apps-test/instances/５/{guid}") is None
    assert set(string.digits) <= set(ID_CHARS)
