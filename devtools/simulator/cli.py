"""``python -m devtools.simulator``: a simulator with a demo instance, until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from . import __doc__ as _package_doc
from .content import _BLOCK
from .core import Simulator
from .instance import SimInstance
from .model import ElementSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.simulator", description=(_package_doc or "").splitlines()[0])
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
    return parser


def _register_client(sim: Simulator, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """Register ``--client-id`` with its key and/or certificate; the key's kid (None without a key)."""
    kid = None
    if args.client_id and (args.public_key or args.certificate):
        kid = (args.kid or args.client_id) if args.public_key else None
        public_key = open(args.public_key, "rb").read() if args.public_key else None
        certificate = open(args.certificate, "rb").read() if args.certificate else None
        sim.register_client(args.client_id, public_key_pem=public_key, kid=kid, certificate_pem=certificate, org=args.org)
    elif args.client_id or args.public_key or args.certificate:
        parser.error("--client-id needs --public-key and/or --certificate (and the other way round)")
    return kid


def _print_banner(sim: Simulator, args: argparse.Namespace, kid: str | None, inst: SimInstance | None) -> None:
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
    if inst is not None:
        print(f"  demo instance: {inst.platform_url}")
        print(f"  demo instance on the app API: {inst.app_url}")
        print(f"  demo event: {json.dumps(sim.cloud_event(inst))}")
    print("Ctrl-C to stop.", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run a simulator with a demo instance until Ctrl-C."""
    parser = _parser()
    args = parser.parse_args(argv)

    sim = Simulator(host=args.host, port=args.port, apps_port=args.apps_port, quote_exchange_token=args.quote_exchange_token)
    sim.verbose = args.verbose
    kid = _register_client(sim, args, parser)
    stop = threading.Event()

    def interrupt(signum: int, frame: Any) -> None:
        stop.set()

    # Explicit handlers: a parent (a background job, a test runner) may have left SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    inst = None
    if not args.no_demo:
        inst = sim.add_instance(
            args.org,
            args.app,
            [ElementSpec(), ElementSpec("vedlegg", "application/pdf", 3 * _BLOCK + 123, "Søknad – vedlegg.pdf", "Clean")],
        )
    sim.start()
    try:
        _print_banner(sim, args, kid, inst)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0
