"""Text from upstream made safe for logs and terminals, and strict JSON."""

from __future__ import annotations

import pytest

from shared.errors import PermanentError, TransientError
from shared.http import parse_json, safe_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x1b[2J\x07", "\\x1b[2J\\x07"),
        ("\x9b31m", "\\x9b31m"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("Søknad 😀", "Søknad 😀"),
    ],
)
def test_safe_text(raw, shown):
    assert safe_text(raw) == shown


def test_safe_text_is_bounded():
    assert safe_text("x" * 1000, 10) == "x" * 10 + "..."


@pytest.mark.parametrize("body", [b'{"a": 1, "a": 2}', b"NaN", b'{"a": Infinity}', b"\xff", b"[" * 100_000, b"{"])
def test_strict_json(body):
    with pytest.raises(TransientError):
        parse_json(body, "x")
    with pytest.raises(PermanentError):
        parse_json(body, "x", permanent=True)
