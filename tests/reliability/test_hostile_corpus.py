"""The hostile webhook corpus (tests/data/hostile/*.json, format in its README) thrown at the
webhook over real HTTP through the local host.

For every case: the expected status (and problem ``code`` where given), never a 5xx, a problem
document for every 4xx the function itself answers, nothing queued unless the case expects 202 (and
then exactly one message, for exactly the expected instance), and no outbound connection at all
(the socket guard allows only Azurite and the local host).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
CASES = sorted(CORPUS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def body_of(case: dict[str, Any]) -> bytes:
    if "body_base64" in case:
        body = base64.b64decode(case["body_base64"])
    elif "body_json" in case:
        body = json.dumps(case["body_json"]).encode("utf-8")
    else:
        body = str(case.get("body", "")).encode("utf-8", "surrogatepass")
    expand = case.get("body_repeat")
    if expand:
        body = body.replace(expand["placeholder"].encode(), expand["text"].encode() * int(expand["count"]))
    return body


def send(host: Any, case: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as the case describes it (http.client adds nothing but Host and length)."""
    body = body_of(case)
    key = host.function_key
    if "raw" in case:
        head = case["raw"].replace("{HOST}", f"127.0.0.1:{host.port}").replace("{KEY}", key).replace("{LENGTH}", str(len(body)))
        with socket.create_connection(("127.0.0.1", host.port), timeout=30) as sock:
            sock.sendall(head.encode("latin-1") + body)
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    method = case.get("method", "POST")
    path = case.get("path", "/api/events")
    auth = case.get("auth", "header")
    headers = dict(case.get("headers", {}))
    if auth == "query":
        path += f"?code={key}"
    elif auth == "header":
        headers["x-functions-key"] = key
    elif auth == "wrong":
        headers["x-functions-key"] = key[::-1] + "x"
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    try:
        conn.putrequest(method, path)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_the_corpus_is_big_and_well_formed():
    assert len(CASES) >= 50
    for path in CASES:
        case = load(path)
        assert case["description"] and isinstance(case["expected_status"], int), path.name
        assert len({"body", "body_json", "body_base64"} & set(case)) <= 1, path.name
        assert set(case) <= {
            "description",
            "expected_status",
            "expected_code",
            "expected_instance",
            "method",
            "path",
            "auth",
            "headers",
            "body",
            "body_json",
            "body_base64",
            "body_repeat",
            "raw",
        }, path.name
        assert ("expected_instance" in case) == (case["expected_status"] == 202), path.name
    assert {load(p)["expected_status"] for p in CASES} >= {400, 413, 415, 401, 404, 200, 202}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hostile_request(webhook_host, sent_messages, socket_guard, path):
    case = load(path)
    status, headers, payload = send(webhook_host, case)
    assert status < 500, f"{path.name}: {status} {payload[:300]!r}"
    assert status == case["expected_status"], f"{path.name} ({case['description']}): {status} {payload[:300]!r}"
    queued = [json.loads(c) for q, c in sent_messages if q == "altinn-events"]  # before base64 encoding
    if status == 202:
        assert len(queued) == 1, queued
        ref = queued[0]["instance"]
        assert f"{ref['org']}/{ref['app']}/{ref['partyId']}/{ref['instanceGuid']}" == case["expected_instance"]
        assert headers["content-type"].startswith("application/json")
    else:
        assert queued == [], f"{path.name}: queued for a {status}"
    if "expected_code" in case:
        assert headers.get("content-type", "").startswith("application/problem+json"), headers
        problem = json.loads(payload)
        assert problem["code"] == case["expected_code"] and problem["status"] == status and problem["detail"]
    if 400 <= status < 500 and payload:
        assert headers.get("content-type", "").startswith("application/problem+json")
    assert "set-cookie" not in headers and "x-injected" not in headers
    assert socket_guard.violations == []
