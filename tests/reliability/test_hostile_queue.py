"""Our own queues, and what reaches an operator's terminal, are untrusted too: a message too large to
replay, an unreadable message too large to park as it is, control characters in reasons and in
upstream error bodies. Azurite is the real queue; the hostile Altinn stands in for Maskinporten.

Points 9, 10 and 11 of the issue "Treat every answer from upstream as untrusted input".
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

from tests.support.flow import cli as _cli

GUID = "0fc98a23-fe31-4ef5-8fb9-dd3f479354ce"


def _raw(azurite: Any, name: str) -> Any:
    from azure.storage.queue import QueueClient

    return QueueClient.from_connection_string(azurite.connection_string, name)


def _message(guid: str, *, pad: int = 0, reason: str = "access denied by Altinn (HTTP 403)") -> dict[str, Any]:
    return {
        "version": 1,
        "event": {"id": "e-" + guid[:8], "type": "app.instance.process.completed", "source": "x", "time": None, "pad": "p" * pad},
        "instance": {"org": "ttd", "app": "apps-test", "partyId": "50012345", "instanceGuid": guid},
        "via": "webhook",
        "queuedAt": "2025-01-01T10:00:00Z",
        "failure": {"reason": reason, "status": 403, "permanent": True, "at": "2025-01-01T10:00:01Z", "dequeueCount": 1},
    }


# -- 9. one message must not block a replay --------------------------------------------------------


def test_a_message_too_large_to_replay_is_skipped_and_reported_and_the_rest_go_on(altinn, azurite):
    from shared import poison
    from shared.config import EVENTS_QUEUE, POISON_QUEUE
    from shared.runtime import get_runtime

    parked = _raw(azurite, POISON_QUEUE)
    guids = [str(uuid.uuid4()) for _ in range(3)]
    parked.send_message(base64.b64encode(json.dumps(_message(guids[0])).encode()).decode())
    # Stored as plain JSON text just under the limit: base64 makes it 4/3 as long, over 64 KiB.
    big = parked.send_message(json.dumps(_message(guids[1], pad=60_000)))
    parked.send_message(base64.b64encode(json.dumps(_message(guids[2])).encode()).decode())

    report = poison.replay(get_runtime())
    assert [s["messageId"] for s in report.skipped] == [big.id] and "too large" in report.skipped[0]["reason"]
    assert sorted(e.instance.rsplit("/", 1)[1] for e in report.replayed) == sorted([guids[0], guids[2]])
    assert not report.ok
    left = [m.id for m in parked.peek_messages(max_messages=32)]
    assert left == [big.id]  # left where it was, not lost
    assert _raw(azurite, EVENTS_QUEUE).get_queue_properties().approximate_message_count == 2

    code, out, _ = _cli("replay-poison", "--all")
    assert code == 1 and f"skipped {big.id}: too large" in out


# -- 10. parking an unreadable message stays under the queue's limit ---------------------------


def test_an_unreadable_message_outside_the_bmp_is_parked_within_the_limit_and_the_log_says_what_was_kept(altinn, azurite, caplog):
    from shared.config import POISON_QUEUE
    from shared.pipeline import handle_message

    text = "\U0001f600" * 20_000  # not JSON; 80 KB of UTF-8, far more once escaped and base64-encoded
    with caplog.at_level(logging.ERROR, logger="altinn_mottak"):
        result = handle_message(text.encode("utf-8"))
    assert result.outcome == "parked" and result.failure_class == "unreadable"
    stored = _raw(azurite, POISON_QUEUE).peek_messages(max_messages=1)
    assert len(stored) == 1 and len(stored[0].content) <= 64 * 1024
    doc = json.loads(base64.b64decode(stored[0].content))
    assert doc["raw"] and set(doc["raw"]) == {"\U0001f600"} and doc["failure"]["class"] == "unreadable"
    line = next(r for r in caplog.records if r.getMessage().startswith("parked in poison:"))
    assert f"kept {len(doc['raw'])} of its 20000 characters" in line.getMessage()
    assert line.outcome == "parked" and line.failure_class == "unreadable"


# -- 11. control characters never reach the terminal or a console log -------------------------------


def test_a_crafted_poison_reason_cannot_clear_the_screen_or_forge_a_line(altinn, azurite):
    from shared.config import POISON_QUEUE

    crafted = "\x1b[2J\x1b[H\rpoison queue empty\n\x1b]0;owned\x07"
    _raw(azurite, POISON_QUEUE).send_message(base64.b64encode(json.dumps(_message(GUID, reason=crafted)).encode()).decode())
    code, out, err = _cli("poison")
    assert code == 0
    for stream in (out, err):
        assert "\x1b" not in stream and "\r" not in stream and "\x07" not in stream
    assert "\\x1b[2J" in out and "poison queue empty" in out
    assert all(not line.startswith("poison queue empty") for line in out.splitlines())  # no forged line of its own
    code, doc_text, _ = _cli("poison", "--json")
    assert json.loads(doc_text)["messages"][0]["reason"] == crafted  # JSON carries it exactly, escaped by JSON itself


def test_a_maskinporten_error_body_cannot_overwrite_the_status_line(altinn, azurite):
    evil = "\r  token:     ok\x1b[K\n  problem: none"
    altinn.on("POST", "/maskinporten/token", lambda req: altinn.json({"error": "invalid_grant", "error_description": evil}, status=400))
    code, out, err = _cli("status")
    assert code == 1
    assert "\r" not in out and "\x1b" not in out
    token_lines = [line for line in out.splitlines() if line.strip().startswith("token:")]
    assert len(token_lines) == 1 and "FAILED" in token_lines[0] and "\\r" in token_lines[0]
    assert not any(line.strip() == "problem: none" for line in out.splitlines())


def test_console_logs_escape_upstream_text():
    from shared.telemetry import ConsoleFormatter

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("\x1b[31mred\r\nforged line",), None)
    record.reason = "a\x1b[2Jb"
    text = ConsoleFormatter("%(message)s").format(record)
    assert "\x1b" not in text and "\r" not in text and "\n" not in text
    assert text == "failed: \\x1b[31mred\\r\\nforged line [reason=a\\x1b[2Jb]"
