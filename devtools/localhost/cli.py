"""``python -m devtools.localhost --app function_app:app --port 7071``: run an app until Ctrl-C."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import azure.functions as func

from .bindings import _Function
from .host import LocalHost


def _load_settings_file(path: Path) -> None:
    """Values of local.settings.json into the environment, without overriding (like func)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for name, value in (data.get("Values") or {}).items():
        os.environ.setdefault(name, str(value))


def _import_app(spec: str) -> func.FunctionApp:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--app must look like module:attribute, not {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {spec}: {exc}") from exc
    if not isinstance(obj, func.FunctionApp):
        raise SystemExit(f"{spec} is a {type(obj).__name__}, not an azure.functions.FunctionApp")
    return obj


def _describe(host: LocalHost, fn: _Function) -> str:
    if fn.route is not None:
        methods = ",".join(sorted(fn.methods)) if fn.methods else "ANY"
        return f"{fn.name}: [{methods}] {host.function_url(fn.name)}"
    if fn.queue_name:
        return f"{fn.name}: queueTrigger {fn.queue_name}"
    return f"{fn.name}: timerTrigger {fn.trigger.get('schedule')}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localhost",
        description="Run a FunctionApp locally against Azure Storage (Azurite) until Ctrl-C.",
    )
    parser.add_argument("--app", default="function_app:app", help="module:attribute")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host-json", default="host.json")
    parser.add_argument("--settings", default="local.settings.json", help="Values are loaded into the environment if the file exists")
    parser.add_argument("--key", default=None, help="function key (default: random)")
    parser.add_argument("--concurrency", type=int, default=None, help="messages of a queue at once (default: batchSize + newBatchThreshold)")
    parser.add_argument("--run-timers", action="store_true", help="schedule timer triggers")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    settings = Path(args.settings)
    if settings.exists():
        _load_settings_file(settings)
    sys.path.insert(0, os.getcwd())
    app = _import_app(args.app)
    connection = os.environ.get("AzureWebJobsStorage") or "UseDevelopmentStorage=true"
    host = LocalHost(
        app,
        connection_string=connection,
        host_json=args.host_json,
        function_key=args.key,
        http_host=args.host,
        http_port=args.port,
        concurrency=args.concurrency,
        run_timers=args.run_timers,
    )
    try:
        host.start()
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("Is Azurite running? `python -m devtools.azurite` starts one and prints AzureWebJobsStorage.", file=sys.stderr)
        return 1
    try:
        print("\nFunctions:\n")
        for fn in host._functions.values():
            print(f"    {_describe(host, fn)}")
        print("\nCtrl-C stops.\n", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        host.stop()
