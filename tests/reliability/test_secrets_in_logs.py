"""No access token, grant, private key or function key in any log record or exception message.

The whole flow runs with every logger at DEBUG (ours, the Azure SDK's, urllib3's, the local
host's), through the paths where secrets are most likely to leak: token refreshes (401 from the
exchange and from Altinn), transient failures with tracebacks (500, a body cut short, a reset), a
permanent failure parked with its reason, a grant Maskinporten rejects (wrong key), a private key
that does not parse (PEM and JWK), the function key in the query string and in the header, a wrong
function key. Every record is captured (message, arguments, extra fields, formatted traceback of
the exception and of every exception in its chain), plus the exceptions the host recorded,
everything printed to stdout/stderr, every queue message (including the poison queue's failure
reasons) and every webhook answer. The secrets are collected as they are made: each grant (JWT), each
Maskinporten and Altinn access token the simulator issued, the private keys (PEM lines, base64
body, private numbers, JWK ``d``), and the function key. Not one may appear, whole or in part
(every 24-character window of its secret part: any fragment of 31 characters or more is found).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import traceback
from typing import Any

import requests

from devtools.simulator import ElementSpec
from tests.support.archive import MIB, archive_problems, peek_all, queue_client

FORM = ElementSpec(data_type="model", size=3000)
ATTACHMENT = ElementSpec(data_type="vedlegg", content_type="application/pdf", size=5 * MIB + 1, filename="a.pdf")  # streamed as blocks


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self.formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        parts = [self.format(record), repr(record.args), repr({k: v for k, v in record.__dict__.items() if k not in ("args", "msg", "exc_info")})]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1], chain=True)))
            exc: BaseException | None = record.exc_info[1]
            while exc is not None:  # every exception in the chain, with its arguments
                parts.append(repr(exc.args))
                exc = exc.__cause__ or exc.__context__
        if record.stack_info:
            parts.append(record.stack_info)
        self.texts.append("\n".join(parts))


def debug_everywhere() -> tuple[Capture, list[tuple[logging.Logger, int, bool]]]:
    # The app quiets the Azure SDK and urllib3 loggers once per process when it sets up logging;
    # let it do that first, then turn everything up to DEBUG regardless.
    try:
        from shared import telemetry

        telemetry.configure()
    except (ImportError, AttributeError):
        pass
    capture = Capture()
    root = logging.getLogger()
    saved = [(root, root.level, root.propagate)]
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    sdk = [
        "azure",
        "azure.core",
        "azure.core.pipeline.policies.http_logging_policy",
        "azure.storage",
        "azure.identity",
        "azure.monitor",
        "urllib3",
        "urllib3.connectionpool",
    ]
    for name in [*sdk, "requests", "shared", "altinn_mottak", "devtools", *logging.root.manager.loggerDict]:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.DEBUG)
        if not logger.propagate:
            logger.addHandler(capture)
    return capture, saved


def restore(capture: Capture, saved: list[tuple[logging.Logger, int, bool]]) -> None:
    for logger, level, _ in saved:
        logger.setLevel(level)
        if capture in logger.handlers:
            logger.removeHandler(capture)


def windows(secret: str, size: int = 24, step: int = 8) -> set[str]:
    if len(secret) <= size:
        return {secret}
    return {secret[i : i + size] for i in range(0, len(secret) - size + 1, step)} | {secret[-size:]}


def key_secrets(pem: str) -> set[str]:
    """Parts of a private key that must never be seen."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    body_lines = [line for line in pem.strip().splitlines() if "-----" not in line]
    found = set(body_lines) | windows("".join(body_lines))
    numbers = load_pem_private_key(pem.encode(), password=None).private_numbers()  # type: ignore[union-attr]
    for value in (numbers.d, numbers.p, numbers.q):
        found |= windows(str(value)) | windows(format(value, "x"))
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        found |= windows(base64.urlsafe_b64encode(raw).decode().rstrip("="))  # as in a JWK
    return found


def other_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def post_with_key_in_query(host: Any, body: bytes, key: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    try:
        conn.request("POST", f"/api/events?code={key}", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_no_secret_in_any_log_record_or_exception(rel_host, guarded, container, azurite, rsa_key, monkeypatch, capfd):
    import shared.maskinporten

    sim = guarded
    grants: list[str] = []
    original_build_grant = shared.maskinporten.build_grant

    def recording_build_grant(*args: Any, **kwargs: Any) -> str:
        grant = original_build_grant(*args, **kwargs)
        grants.append(grant)
        return grant

    monkeypatch.setattr(shared.maskinporten, "build_grant", recording_build_grant)
    answers: list[bytes] = []
    capture, saved = debug_everywhere()
    try:
        # 1. An instance through refreshes, transient failures and a redelivery.
        a = sim.add_instance("ttd", "apps-test", [FORM, ATTACHMENT])
        sim.add_fault("exchange", status=401, times=1)
        sim.add_fault("instance", status=500, times=1)
        sim.add_fault("data", status=401, times=1, match=a.elements[0]["id"])
        sim.add_fault("data", truncate_at=MIB + 10, times=1, match=a.elements[1]["id"])
        sim.add_fault("complete", reset_after=10, times=1)
        status, body = post_with_key_in_query(rel_host, json.dumps(sim.cloud_event(a)).encode(), rel_host.function_key)
        answers.append(body)
        assert status == 202
        assert rel_host.wait_idle(timeout=90)
        assert archive_problems(container, sim, a) == []

        # 2. A permanent failure, parked with its reason; the key in the header; a wrong key.
        b = sim.add_instance("ttd", "apps-test", [FORM])
        sim.remove_instance(b)
        resp = requests.post(f"{rel_host.url}/api/events", json=sim.cloud_event(b), headers={"x-functions-key": rel_host.function_key}, timeout=30)
        answers.append(resp.content)
        assert resp.status_code == 202
        resp = requests.post(f"{rel_host.url}/api/events", json=sim.cloud_event(b), headers={"x-functions-key": rel_host.function_key[:-2] + "xx"}, timeout=30)
        answers.append(resp.content)
        assert resp.status_code == 401
        sim.expire_altinn_tokens()
        sim.expire_maskinporten_tokens()
        assert rel_host.wait_idle(timeout=60)

        # 3. A grant Maskinporten rejects: a key that is not the registered one (5 attempts, parked).
        other = other_key_pem()
        monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", other)
        c = sim.add_instance("ttd", "apps-test", [FORM])
        status, body = post_with_key_in_query(rel_host, json.dumps(sim.cloud_event(c)).encode(), rel_host.function_key)
        answers.append(body)
        assert rel_host.wait_idle(timeout=60)
        assert sim.rejected_grants, "the wrong key should have been refused"

        # 4. Private keys that do not parse: a PEM with one character changed, a JWK with a bad modulus.
        lines = rsa_key["private_pem"].splitlines()
        middle = len(lines) // 2
        lines[middle] = lines[middle][:10] + ("A" if lines[middle][10] != "A" else "B") + lines[middle][11:]
        monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", "\n".join(lines))
        d = sim.add_instance("ttd", "apps-test", [FORM])
        status, body = post_with_key_in_query(rel_host, json.dumps(sim.cloud_event(d)).encode(), rel_host.function_key)
        answers.append(body)
        assert rel_host.wait_idle(timeout=60)
        jwk_d = base64.urlsafe_b64encode(b"\x01" * 256).decode().rstrip("=")
        monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": jwk_d, "kid": "k"}))
        e = sim.add_instance("ttd", "apps-test", [FORM])
        status, body = post_with_key_in_query(rel_host, json.dumps(sim.cloud_event(e)).encode(), rel_host.function_key)
        answers.append(body)
        assert rel_host.wait_idle(timeout=60)

        # 5. Settings that do not load at all: the invocation itself fails (a traceback in the host's
        # log), the host retries it and moves it after maxDequeueCount (the backstop path).
        from shared.events import InstanceRef, queue_message

        f = sim.add_instance("ttd", "apps-test", [FORM])
        body_f = json.dumps(queue_message(None, InstanceRef.parse(f.org, f.app, f.id), via="webhook"))
        monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", rsa_key["private_pem"])
        monkeypatch.delenv("MASKINPORTEN_CLIENT_ID")
        queue_client(azurite.connection_string, "altinn-events").send_message(body_f)  # the client encodes base64
        assert rel_host.wait_idle(timeout=60)
    finally:
        restore(capture, saved)

    # The paths above really happened.
    stats = rel_host.stats["archive"]
    logged = "\n".join(capture.texts)
    assert "MASKINPORTEN_PRIVATE_KEY" in logged and "Maskinporten refused the grant" in logged
    assert "outcome=deferred" in logged or "deferred" in logged
    assert stats["failures"] >= 5 and stats["poisoned"] >= 1 and "MASKINPORTEN_CLIENT_ID" in " ".join(m for _, m in stats["exceptions"])
    assert len(grants) >= 3 and len(sim._mp_tokens) >= 2 and len(sim._altinn_tokens) >= 2

    # Collect the secrets.
    secrets: dict[str, set[str]] = {"function key": {rel_host.function_key} | windows(rel_host.function_key)}
    secrets["grant"] = set()
    for grant in grants:
        secrets["grant"] |= {grant} | windows(grant.rsplit(".", 1)[1])
    secrets["maskinporten token"] = set()
    for token in sim._mp_tokens:
        secrets["maskinporten token"] |= {token} | windows(token.split(".", 1)[1])
    secrets["altinn token"] = set()
    for token in sim._altinn_tokens:
        secrets["altinn token"] |= {token} | windows(token.rsplit(".", 1)[1])
    secrets["private key"] = key_secrets(rsa_key["private_pem"]) | key_secrets(other) | {lines[middle]} | windows(jwk_d)

    # Collect everything that was written.
    out, err = capfd.readouterr()
    poison = peek_all(queue_client(azurite.connection_string, "altinn-events-poison"))
    written = {
        "log records": "\n".join(capture.texts),
        "host exceptions": "\n".join(f"{t}: {m}" for t, m in stats["exceptions"]),
        "stdout/stderr": out + err,
        "poison queue": json.dumps(poison),
        "webhook answers": b"\n".join(answers).decode("utf-8", "replace"),
    }
    assert len(capture.records) > 200, "DEBUG logging did not reach the capture"
    assert any(r.name.startswith("urllib3") for r in capture.records) and any(r.name.startswith("azure") for r in capture.records)
    assert any(r.exc_info for r in capture.records), "no traceback was logged; the test would prove little"
    leaks = [
        f"{kind} in {where}: ...{secret[:12]}..."
        for where, text in written.items()
        for kind, values in secrets.items()
        for secret in values
        if secret and secret in text
    ]
    assert leaks == [], leaks[:20]
    print(
        f"\nsecrets: {len(capture.records)} records scanned ({sum(len(t) for t in capture.texts) // 1024} KiB), "
        f"{sum(len(v) for v in secrets.values())} secret fragments from {len(grants)} grants, {len(sim._mp_tokens)} Maskinporten "
        f"and {len(sim._altinn_tokens)} Altinn tokens, 2 private keys and the function key: none found"
    )
