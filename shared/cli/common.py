"""What every command shares: exit codes and errors, terminal-safe text, progress on stderr, the
one place that prints a result (text or JSON), and the runtime and app selection."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.runtime import Runtime

OK, FAILED, USAGE = 0, 1, 2
PROG = "altinn-mottak"


class UsageError(Exception):
    """Wrong arguments for this configuration (exit code 2)."""


class Failure(Exception):
    """The command ran and failed (exit code 1); ``payload`` is what --json prints."""

    def __init__(self, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.payload = payload


# -- output -----------------------------------------------------------------------------------


def terminal_text(text: str) -> str:
    """Text for a terminal, line by line: whatever came from upstream (a reason, a poison message,
    an error body) has its control characters shown escaped, so it cannot move the cursor, clear
    the screen or overwrite a line we printed. (JSON output escapes them by itself.)"""
    from shared.http import safe_text

    return "\n".join(safe_text(line, 100_000) for line in text.split("\n"))


def screen_text(text: str) -> str:
    """A rendered result as printed without --json: terminal-safe, one newline at the end."""
    return terminal_text(text.rstrip("\n")) + "\n"


def json_text(doc: dict[str, Any]) -> str:
    """A result as printed with --json."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


class Progress:
    """One updating status line on stderr (a terminal), or a line per update (``--progress``)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, interval: float = 0.5) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self._last = 0.0
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + terminal_text(text) + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(terminal_text(text) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class Output:
    """Where a command's result goes: ``payload`` as JSON with --json, else the rendered text."""

    def __init__(self, as_json: bool, stdout: TextIO, stderr: TextIO, progress: Progress) -> None:
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress

    def result(self, payload: dict[str, Any], text: str) -> None:
        self.progress.close()
        self.stdout.write(json_text(payload) if self.as_json else screen_text(text))
        self.stdout.flush()

    def error(self, message: str, payload: dict[str, Any] | None = None) -> None:
        self.progress.close()
        self.stderr.write(f"{PROG}: error: {terminal_text(message)}\n")
        self.stderr.flush()
        if self.as_json:
            doc = {"ok": False, "error": message}
            if payload:
                doc.update({k: v for k, v in payload.items() if k not in ("ok", "error")})
            self.stdout.write(json_text(doc))
            self.stdout.flush()


# -- the runtime ------------------------------------------------------------------------------


def runtime() -> Runtime:
    from shared.runtime import get_runtime

    return get_runtime()


def selected_apps(settings: Settings, apps: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """The apps a command works on: ``apps`` (each must be configured), or all configured ones."""
    if not apps:
        return sorted(settings.apps)
    unknown = [f"{o}/{a}" for o, a in apps if (o, a) not in settings.apps]
    if unknown:
        raise UsageError(f"not in ALTINN_APPS: {', '.join(unknown)} (configured: {', '.join(f'{o}/{a}' for o, a in sorted(settings.apps))})")
    return sorted(set(apps))
