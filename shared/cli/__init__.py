"""``altinn-mottak``: operations commands, with the same settings as the functions.

    altinn-mottak status                                 queues, last archives, token health
    altinn-mottak subscribe --endpoint URL [--app A]     Altinn Events subscriptions for our apps
    altinn-mottak subscriptions | unsubscribe ID
    altinn-mottak catch-up [--app A] [--dry-run]         enqueue completed, unconfirmed instances now
    altinn-mottak archive ORG/APP PARTYID/GUID           archive (and confirm) one instance now
    altinn-mottak poison | replay-poison (--all | --instance I)

Run as ``altinn-mottak`` (console script) or ``python -m shared.cli``. Settings come from the
environment (``--settings local.settings.json`` adds that file's ``Values`` without overriding).
``--json`` prints one JSON document on stdout (errors too); progress goes to stderr, only on a
terminal or with ``--progress``. Exit codes: 0 done, 1 failed, 2 wrong usage. Nothing printed or
logged contains a token, a key or the function key.

One module per group of commands (``status``, ``subscriptions``, ``archive``, ``poison``), each
with ``register(subparsers)``; a command gathers its JSON payload, and a pure ``render_*``
function makes the text from it. ``common`` prints either; ``arguments`` has the parser's parts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from shared.cli import archive, poison, status, subscriptions
from shared.cli.arguments import ArgumentError, Handler, Parser, common_options
from shared.cli.common import FAILED, OK, PROG, USAGE, Failure, Output, Progress, UsageError, terminal_text
from shared.cli.status import REFUSED_CAUSE, recent_archives

__all__ = [
    "FAILED",
    "OK",
    "PROG",
    "REFUSED_CAUSE",
    "USAGE",
    "Failure",
    "Output",
    "Progress",
    "UsageError",
    "build_parser",
    "main",
    "recent_archives",
    "terminal_text",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Operate altinn-mottak: subscriptions, catch-up, one-off archives, the poison queue, status.",
        epilog="Exit codes: 0 done, 1 failed, 2 wrong usage. Settings: the same environment variables as the functions.",
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for group in (status, subscriptions, archive, poison):  # the order of `--help`
        group.register(sub)
    return parser


def _load_settings_file(path: str) -> None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --settings {path}: {type(exc).__name__}") from None
    values = data.get("Values") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise UsageError(f'--settings {path}: no "Values" object')
    for name, value in values.items():
        os.environ.setdefault(str(name), str(value))


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one command; returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):  # --help, --version
            args = build_parser().parse_args(argv)
    except ArgumentError as exc:
        stderr.write(exc.parser.format_usage())
        stderr.write(f"{exc.parser.prog}: error: {exc}\n")
        if "--json" in argv:
            stdout.write(json.dumps({"ok": False, "error": str(exc), "usage": True}) + "\n")
        return USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else OK
    as_json = bool(getattr(args, "json", False))
    show_progress = getattr(args, "progress", None)
    progress = Progress(bool(stderr.isatty()) if show_progress is None else show_progress, stderr)
    out = Output(as_json, stdout, stderr, progress)
    command: Handler = args.handler  # set by the command's register()

    from shared import telemetry
    from shared.errors import ConfigError, MottakError

    verbosity = getattr(args, "verbose", 0) or 0
    root_level = logging.getLogger().level
    handler = telemetry.setup_console_logging({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG), stderr)
    try:
        if getattr(args, "settings", None):
            _load_settings_file(args.settings)
        telemetry.configure(service_name="altinn-mottak-cli")
        return command(args, out)
    except UsageError as exc:
        out.error(str(exc))
        return USAGE
    except ConfigError as exc:
        out.error(f"configuration: {exc}")
        return FAILED
    except Failure as exc:
        out.error(str(exc), exc.payload)
        return FAILED
    except MottakError as exc:
        out.error(str(exc))
        return FAILED
    except KeyboardInterrupt:
        out.error("interrupted")
        return FAILED
    except Exception as exc:  # a clean message, not a traceback
        from azure.core.exceptions import AzureError

        if isinstance(exc, AzureError):
            out.error(f"storage failed ({type(exc).__name__})")
        else:
            logging.getLogger(PROG).debug("unexpected error", exc_info=True)
            out.error(f"unexpected {type(exc).__name__} (run with -vv for details)")
        return FAILED
    finally:
        progress.close()
        telemetry.flush()
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
