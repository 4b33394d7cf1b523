"""The argument parser's parts: a parser that reports wrong usage to ``main`` instead of exiting,
the options every command takes, one call to add a command, and the argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from shared.cli.common import Output

Handler: TypeAlias = Callable[[argparse.Namespace, Output], int]


class ArgumentError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # main() prints it (and, with --json, a JSON error) and exits 2
        raise ArgumentError(self, message)


if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[Parser]


def common_options() -> Parser:
    """The options of every command, as a parent parser (also of the top parser)."""
    common = Parser(add_help=False)
    # SUPPRESS: the options work before and after the command name, without one resetting the other.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout (errors too)")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help="progress on stderr (default: only on a terminal)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log to stderr: -v info, -vv debug")
    common.add_argument("--settings", metavar="FILE", default=argparse.SUPPRESS, help="load Values from a local.settings.json (the environment wins)")
    return common


def add_command(subparsers: Subparsers, name: str, handler: Handler, **kwargs: Any) -> Parser:
    """A command's parser, with the common options, that runs ``handler(args, out)``."""
    parser = subparsers.add_parser(name, parents=[common_options()], **kwargs)
    parser.set_defaults(handler=handler)
    return parser


def app_arg(text: str) -> tuple[str, str]:
    org, sep, app = text.strip().partition("/")
    if not sep or not org or not app or "/" in app:
        raise argparse.ArgumentTypeError(f"{text!r} is not org/app")
    return org, app


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value
