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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

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
    def __init__(self, as_json: bool, stdout: TextIO, stderr: TextIO, progress: Progress) -> None:
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress

    def result(self, payload: dict[str, Any], text: str) -> None:
        self.progress.close()
        if self.as_json:
            self.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
        else:
            self.stdout.write(terminal_text(text.rstrip("\n")) + "\n")
        self.stdout.flush()

    def error(self, message: str, payload: dict[str, Any] | None = None) -> None:
        self.progress.close()
        self.stderr.write(f"{PROG}: error: {terminal_text(message)}\n")
        self.stderr.flush()
        if self.as_json:
            doc = {"ok": False, "error": message}
            if payload:
                doc.update({k: v for k, v in payload.items() if k not in ("ok", "error")})
            self.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
            self.stdout.flush()


# -- arguments --------------------------------------------------------------------------------


class _ArgumentError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # main() prints it (and, with --json, a JSON error) and exits 2
        raise _ArgumentError(self, message)


def _app_arg(text: str) -> tuple[str, str]:
    org, sep, app = text.strip().partition("/")
    if not sep or not org or not app or "/" in app:
        raise argparse.ArgumentTypeError(f"{text!r} is not org/app")
    return org, app


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the options work before and after the command name, without one resetting the other.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout (errors too)")
    common.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help="progress on stderr (default: only on a terminal)"
    )
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log to stderr: -v info, -vv debug")
    common.add_argument(
        "--settings", metavar="FILE", default=argparse.SUPPRESS, help="load Values from a local.settings.json (the environment wins)"
    )

    parser = _Parser(
        prog=PROG,
        description="Operate altinn-mottak: subscriptions, catch-up, one-off archives, the poison queue, status.",
        epilog="Exit codes: 0 done, 1 failed, 2 wrong usage. Settings: the same environment variables as the functions.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("status", parents=[common], help="queue depths, last archives, token health",
                       description="Queue and poison queue depth, the last archived instances, and whether a token can be had now.")
    p.add_argument("--recent", type=_positive, default=10, metavar="N", help="how many recent archives to show (default 10)")
    p.add_argument("--scan-limit", type=_positive, default=5000, metavar="N",
                   help="blobs to scan for manifests at most (default 5000); the listing is by name, so newer archives may lie beyond")
    p.add_argument("--no-token", action="store_true", help="skip the token check")

    p = sub.add_parser("subscribe", parents=[common], help="subscribe our webhook to Altinn Events",
                       description="Create Altinn Events subscriptions (one per app and event type) for the webhook, and wait until Altinn "
                                   "has validated them. An identical existing subscription is reused.")
    p.add_argument("--endpoint", required=True, help="the webhook URL with its function key: https://<app>.azurewebsites.net/api/events?code=<key>")
    p.add_argument("--app", dest="apps", action="append", type=_app_arg, metavar="ORG/APP", help="an app in ALTINN_APPS (repeatable; default: all)")
    p.add_argument("--type", dest="types", action="append", metavar="TYPE", help="event type (repeatable; default: ALTINN_EVENT_TYPES)")
    p.add_argument("--wait", type=_seconds, default=30.0, metavar="SECONDS", help="how long to wait for Altinn's validation (default 30; 0: do not wait)")
    p.add_argument("--no-key-check", action="store_true", help="allow an endpoint without ?code= (e.g. behind a gateway)")

    p = sub.add_parser("subscriptions", parents=[common], help="list our org's subscriptions",
                       description="List the Altinn Events subscriptions of our org (endpoints shown with the function key masked).")
    p.add_argument("--app", dest="apps", action="append", type=_app_arg, metavar="ORG/APP", help="only this app (repeatable)")
    p.add_argument("--all", action="store_true", help="also subscriptions for sources that are not our configured apps")

    p = sub.add_parser("unsubscribe", parents=[common], help="delete subscriptions", description="Delete Altinn Events subscriptions by id.")
    p.add_argument("ids", nargs="+", type=_positive, metavar="ID", help="subscription id (see `subscriptions`)")

    p = sub.add_parser("catch-up", parents=[common], help="enqueue completed instances we have not confirmed",
                       description="Query Altinn storage for completed instances our org has not confirmed and put them on the queue, "
                                   "like the hourly timer. Bounded by CATCHUP_MAX_INSTANCES and CATCHUP_TIME_BUDGET_SECONDS.")
    p.add_argument("--app", dest="apps", action="append", type=_app_arg, metavar="ORG/APP", help="only this app (repeatable; default: all)")
    p.add_argument("--dry-run", action="store_true", help="list what would be enqueued, enqueue nothing")
    p.add_argument("--max-instances", type=_positive, metavar="N", help="override CATCHUP_MAX_INSTANCES for this run")
    p.add_argument("--time-budget", type=_seconds, metavar="SECONDS", help="override CATCHUP_TIME_BUDGET_SECONDS for this run")
    p.add_argument("--page-size", type=_positive, default=100, metavar="N", help="instances per query page (default 100)")

    p = sub.add_parser("archive", parents=[common], help="archive one instance now",
                       description="Archive one instance now with the same pipeline as the queue (idempotent): download, manifest, confirm.")
    p.add_argument("app", type=_app_arg, metavar="ORG/APP")
    p.add_argument("instance", metavar="PARTYID/INSTANCEGUID")
    p.add_argument("--enqueue", action="store_true", help="put it on the queue for the archive function instead")

    p = sub.add_parser("poison", parents=[common], help="list the poison queue with the reasons",
                       description="Show the first messages of the poison queue (at most 32: a peek takes no message) with why they are there.")
    p.add_argument("--limit", type=_positive, default=32, metavar="N", help="messages to show (at most 32)")

    p = sub.add_parser("replay-poison", parents=[common], help="move poison messages back to the queue",
                       description="Move messages from altinn-events-poison back to altinn-events, without the failure record. "
                                   "Written to the main queue first, then deleted from the poison queue: nothing is lost.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--instance", dest="instances", action="append", metavar="INSTANCE",
                       help="partyId/instanceGuid or org/app/partyId/instanceGuid (repeatable)")
    which.add_argument("--all", action="store_true", help="every readable message")
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    p.add_argument("--limit", type=_positive, metavar="N", help="replay at most N messages")
    return parser


# -- commands ---------------------------------------------------------------------------------


def _runtime() -> Any:
    from shared.runtime import get_runtime

    return get_runtime()


def _selected_apps(settings: Any, apps: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if not apps:
        return sorted(settings.apps)
    unknown = [f"{o}/{a}" for o, a in apps if (o, a) not in settings.apps]
    if unknown:
        raise UsageError(f"not in ALTINN_APPS: {', '.join(unknown)} (configured: {', '.join(f'{o}/{a}' for o, a in sorted(settings.apps))})")
    return sorted(set(apps))


def _token_check(rt: Any) -> dict[str, Any]:
    from shared.errors import ConfigError, MottakError

    started = time.monotonic()
    try:
        rt.altinn.token()  # a Maskinporten grant and the Altinn exchange, unless cached
    except ConfigError as exc:  # UnresolvedKeyVaultReference says what to check
        return {"ok": False, "error": str(exc), "seconds": round(time.monotonic() - started, 3)}
    except MottakError as exc:
        return {"ok": False, "error": str(exc), "seconds": round(time.monotonic() - started, 3)}
    return {"ok": True, "error": None, "seconds": round(time.monotonic() - started, 3)}


REFUSED_CAUSE = (
    "the app's policy does not grant the 'complete' action to the org at the instance's end event (the standard "
    "policy grants it at EndEvent_1 only): fix the app's policy.xml, then `altinn-mottak archive ORG/APP PARTYID/GUID`"
)


def recent_archives(rt: Any, limit: int = 10, scan_limit: int = 5000) -> dict[str, Any]:
    """Newest manifests among the first ``scan_limit`` blobs (a bounded listing, by name), and the
    archives whose confirmation Altinn refused."""
    from shared.archive import MANIFEST, REFUSED

    found: list[tuple[Any, str, str | None]] = []
    refused: dict[str, str] = {}
    scanned = 0
    truncated = False
    for blob in rt.container.list_blobs(include=["metadata"], results_per_page=min(scan_limit, 5000)):
        if scanned >= scan_limit:
            truncated = True
            break
        scanned += 1
        if blob.name.endswith("/" + MANIFEST):
            found.append((blob.last_modified, blob.name[: -len(MANIFEST) - 1], (blob.metadata or {}).get("confirmed")))
        elif f"/{REFUSED}" in blob.name:
            prefix = blob.name.split(f"/{REFUSED}", 1)[0]
            refused[prefix] = max(refused.get(prefix, ""), (blob.metadata or {}).get("refusedAt") or "")
    found.sort(key=lambda f: f[0], reverse=True)
    items = [{"instance": name, "lastModified": when.isoformat() if when else None, "confirmed": confirmed} for when, name, confirmed in found[:limit]]
    confirmed = {name for _, name, c in found if c}
    unconfirmable = [{"instance": name, "lastRefusal": at, "likelyCause": REFUSED_CAUSE} for name, at in sorted(refused.items()) if name not in confirmed]
    return {"items": items, "manifests": len(found), "scanned": scanned, "truncated": truncated, "confirmationRefused": unconfirmable}


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    from shared import poison
    from shared.config import EVENTS_QUEUE, POISON_QUEUE
    from shared.errors import MottakError

    rt = _runtime()
    s = rt.settings
    problems: list[str] = []
    queues: dict[str, int | None] = {}
    shown: dict[str, str] = {}
    for name in (EVENTS_QUEUE, POISON_QUEUE):
        try:
            queues[name] = poison.depth(rt, name)
            shown[name] = "absent" if queues[name] is None else str(queues[name])
        except MottakError as exc:
            queues[name] = None
            shown[name] = "?"
            problems.append(str(exc))
    recent: dict[str, Any] = {"items": [], "manifests": 0, "scanned": 0, "truncated": False, "confirmationRefused": []}
    try:
        recent = recent_archives(rt, args.recent, args.scan_limit)
    except ResourceNotFoundError:
        pass  # no container yet: nothing archived
    except AzureError as exc:
        problems.append(f"cannot list the archive ({type(exc).__name__})")
    deferred: list[dict[str, Any]] = []
    deferred_more = False
    try:
        deferred, deferred_more = rt.retry_records.list(limit=args.recent)
    except AzureError as exc:
        problems.append(f"cannot list the deferred attempts ({type(exc).__name__})")
    token = None if args.no_token else _token_check(rt)
    if token is not None and not token["ok"]:
        problems.append(f"token: {token['error']}")
    payload = {
        "ok": not problems,
        "problems": problems,
        "environment": s.environment,
        "platform": s.platform_url,
        "apps": [f"{o}/{a}" for o, a in sorted(s.apps)],
        "eventTypes": sorted(s.event_types),
        "container": s.archive_container,
        "catchupSchedule": s.catchup_schedule,
        "queues": queues,
        "recentArchives": recent,
        "confirmationRefused": recent["confirmationRefused"],
        "deferred": {"items": deferred, "more": deferred_more},
        "token": token,
    }
    lines = [
        f"altinn-mottak status ({s.environment}, {s.platform_url})",
        f"  apps:      {', '.join(payload['apps'])}",
        f"  archive:   container {s.archive_container}; catch-up schedule {s.catchup_schedule!r}",
    ]
    lines.append(f"  queues:    {', '.join(f'{n} {d}' for n, d in shown.items())}")
    if queues.get(POISON_QUEUE):
        lines.append(f"             the poison queue is not empty: `{PROG} poison` shows why, `{PROG} replay-poison` moves them back")
    if token is None:
        lines.append("  token:     not checked")
    elif token["ok"]:
        lines.append(f"  token:     ok (Maskinporten grant and Altinn exchange in {token['seconds']:.2f} s)")
    else:
        lines.append(f"  token:     FAILED: {token['error']}")
    scope = f"newest of {recent['manifests']} manifest(s) in the first {recent['scanned']} blob(s)" + (" - more exist" if recent["truncated"] else "")
    lines.append(f"  archived:  {scope}")
    for item in recent["items"]:
        state = f"confirmed {item['confirmed']}" if item["confirmed"] else "NOT confirmed"
        lines.append(f"    {item['lastModified']}  {item['instance']}  {state}")
    if recent["confirmationRefused"]:
        lines.append(f"  archived, confirmation refused: {len(recent['confirmationRefused'])} (likely cause: {REFUSED_CAUSE})")
        for item in recent["confirmationRefused"][: args.recent]:
            lines.append(f"    {item['instance']}  last refused {item['lastRefusal'] or '?'}")
    if deferred:
        lines.append(f"  deferred:  {len(deferred)}{'+' if deferred_more else ''} instance(s) waiting for their next attempt")
        for d in deferred:
            inst = d.get("instance") or {}
            where = f"{inst.get('org')}/{inst.get('app')}/{inst.get('partyId')}/{inst.get('instanceGuid')}"
            lines.append(f"    {where}  attempt {d.get('attempt')}, next {d.get('nextAttemptAt')}: {d.get('lastReason')}")
    for problem in problems:
        lines.append(f"  problem:   {problem}")
    out.result(payload, "\n".join(lines))
    return OK if not problems else FAILED


def cmd_subscribe(args: argparse.Namespace, out: Output) -> int:
    from shared import subscriptions

    rt = _runtime()
    apps = _selected_apps(rt.settings, args.apps)
    types = sorted(set(args.types or rt.settings.event_types))
    try:
        endpoint = subscriptions.check_endpoint(args.endpoint, require_key=not args.no_key_check)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    results = subscriptions.subscribe(rt, apps, endpoint, types, wait=args.wait, progress=lambda t: out.progress.update(t, force=True))
    pending = [r for r in results if not r.validated]
    lines = []
    for r in results:
        state = "validated" if r.validated else "NOT VALIDATED YET"
        lines.append(f"{'exists ' if r.existed else 'created'}  #{r.subscription.id}  {r.app}  {r.type}  {r.subscription.endpoint_redacted}  {state}")
    if pending:
        lines.append(
            f"\n{len(pending)} subscription(s) not validated by Altinn yet: Altinn delivers nothing until the endpoint has answered its "
            "validation event with 2xx. Check that the endpoint is reachable from Altinn and the function key is right, then run "
            f"`{PROG} subscriptions`; delete and subscribe again to get a new validation event."
        )
    payload = {"ok": not pending or args.wait == 0, "subscriptions": [r.to_dict() for r in results], "notValidated": [r.subscription.id for r in pending]}
    out.result(payload, "\n".join(lines))
    return OK if payload["ok"] else FAILED


def cmd_subscriptions(args: argparse.Namespace, out: Output) -> int:
    from shared import subscriptions

    rt = _runtime()
    apps = [f"{o}/{a}" for o, a in _selected_apps(rt.settings, args.apps)] if args.apps else None
    subs = subscriptions.list_subscriptions(rt, apps, ours_only=not args.all)
    lines = [f"{len(subs)} subscription(s)"]
    for s in subs:
        state = "validated" if s.validated else "NOT VALIDATED"
        lines.append(f"  #{s.id}  {s.app or s.source_filter or '-'}  {s.type_filter or '(all types)'}  {s.endpoint_redacted}  {state}  {s.created or ''}")
    unvalidated = [s.id for s in subs if not s.validated]
    if unvalidated:
        lines.append(f"not validated (no events are delivered to them): {', '.join(f'#{i}' for i in unvalidated)}")
    out.result({"ok": True, "count": len(subs), "subscriptions": [s.to_dict() for s in subs]}, "\n".join(lines))
    return OK


def cmd_unsubscribe(args: argparse.Namespace, out: Output) -> int:
    from shared import subscriptions
    from shared.errors import MottakError

    rt = _runtime()
    results = []
    for sub_id in args.ids:
        try:
            subscriptions.unsubscribe(rt, sub_id)
            results.append({"id": sub_id, "deleted": True, "error": None})
        except MottakError as exc:
            results.append({"id": sub_id, "deleted": False, "error": str(exc)})
    ok = all(r["deleted"] for r in results)
    lines = [f"#{r['id']}: deleted" if r["deleted"] else f"#{r['id']}: NOT deleted: {r['error']}" for r in results]
    if ok:
        lines.append("Altinn caches subscriptions for up to an hour: events may still arrive for a while.")
    out.result({"ok": ok, "results": results}, "\n".join(lines))
    return OK if ok else FAILED


def cmd_catch_up(args: argparse.Namespace, out: Output) -> int:
    from shared.catchup import CatchupReport, run_catchup

    rt = _runtime()
    apps = _selected_apps(rt.settings, args.apps)

    def progress(report: CatchupReport) -> None:
        pages = sum(a.pages for a in report.apps)
        verb = "would enqueue" if report.dry_run else "enqueued"
        out.progress.update(f"catch-up: {pages} page(s), found {report.found}, {verb} {report.enqueued}, skipped {report.skipped}")

    report = run_catchup(
        rt, apps=apps, dry_run=args.dry_run, max_instances=args.max_instances, time_budget=args.time_budget, page_size=args.page_size, progress=progress
    )
    verb = "would enqueue" if report.dry_run else "enqueued"
    lines = [f"catch-up{' (dry run)' if report.dry_run else ''}: found {report.found}, {verb} {report.enqueued}, skipped {report.skipped} "
             f"in {report.duration:.1f} s"]
    for a in report.apps:
        skipped = ", ".join(f"{k} {v}" for k, v in a.skipped.items() if v)
        lines.append(f"  {a.app_id}: found {a.found}, {verb} {a.enqueued} ({a.awaiting_confirmation} archived awaiting confirmation)"
                     + (f", skipped {skipped}" if skipped else "") + ("" if a.complete else " - not finished") + (f"  ERROR: {a.error}" if a.error else ""))
    if report.stopped:
        lines.append(f"stopped early: {report.stopped}" + (f" ({report.error})" if report.error else "") + "; run again (or wait for the timer) to continue")
    if report.dry_run and report.instances:
        lines.append("instances:")
        lines.extend(f"  {i['app']} {i['instance']}  {i['state']}" for i in report.instances)
    out.result(report.to_dict(), "\n".join(lines))
    return OK if report.ok else FAILED


def cmd_archive(args: argparse.Namespace, out: Output) -> int:
    from shared import events, telemetry
    from shared.errors import ConfigError, PermanentError, TransientError

    rt = _runtime()
    org, app = args.app
    _selected_apps(rt.settings, [args.app])
    try:
        ref = events.InstanceRef.parse(org, app, args.instance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    target = f"{ref.app_id} {ref.instance_id}"
    if args.enqueue:
        from azure.core.exceptions import AzureError

        from shared.pipeline import enqueue

        try:
            enqueue(rt.events_queue, events.queue_message(None, ref, via="cli"))
        except AzureError as exc:
            raise Failure(f"could not enqueue {target} ({type(exc).__name__})") from None
        out.result({"ok": True, "instance": ref.to_dict(), "outcome": "enqueued"}, f"{target}: enqueued for the archive function")
        return OK
    from shared.pipeline import archive_instance

    out.progress.update(f"archiving {target} ...", force=True)
    with telemetry.log_context(instance=ref.instance_id, org=ref.org, app=ref.app, via="cli"):
        try:
            result = archive_instance(rt, ref)
        except ConfigError:
            raise
        except (PermanentError, TransientError) as exc:
            kind = "permanent" if isinstance(exc, PermanentError) else "transient"
            telemetry.record_failure(kind, org=ref.org, app=ref.app, status=exc.status)
            raise Failure(f"{target}: {kind} failure: {exc}", {"instance": ref.to_dict(), "outcome": f"{kind}-failure", "status": exc.status}) from None
    telemetry.record_result(result.outcome, org=ref.org, app=ref.app, via="cli", nbytes=result.bytes)
    payload = {"ok": True, "instance": ref.to_dict(), "outcome": result.outcome.value, "elements": result.elements, "bytes": result.bytes}
    text = {
        "archived": f"{target}: archived {result.elements} data element(s), {result.bytes} bytes, and confirmed",
        "confirmed-only": f"{target}: was archived already; confirmed now",
        "already-archived": f"{target}: already archived and confirmed; nothing to do",
    }.get(result.outcome.value, f"{target}: {result.outcome.value}")
    out.result(payload, text)
    return OK


def cmd_poison(args: argparse.Namespace, out: Output) -> int:
    from shared import poison

    rt = _runtime()
    entries, count = poison.peek(rt, args.limit)
    if count is None:
        text = "the poison queue does not exist (nothing was ever parked)"
    else:
        lines = [f"poison queue: about {count} message(s)" + (f"; showing the first {len(entries)}" if count > len(entries) else "")]
        for e in entries:
            status = f" HTTP {e.status}" if e.status else ""
            lines.append(f"  {e.inserted_on or '?'}  {e.instance or '(unreadable)'}  [{e.parked_by}]{status}  {e.reason}")
        if entries:
            lines.append(f"replay: `{PROG} replay-poison --instance PARTYID/GUID` or `--all` (after fixing the cause)")
        text = "\n".join(lines)
    out.result({"ok": True, "count": count, "messages": [e.to_dict() for e in entries]}, text)
    return OK


def cmd_replay_poison(args: argparse.Namespace, out: Output) -> int:
    from shared import poison

    rt = _runtime()
    instances = None
    if args.instances:
        try:
            instances = [poison.parse_selector(i) for i in args.instances]
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def progress(report: poison.ReplayReport) -> None:
        out.progress.update(f"replay: {len(report.replayed)} {'would be ' if report.dry_run else ''}replayed, {report.left} left")

    report = poison.replay(rt, instances=instances, dry_run=args.dry_run, limit=args.limit, progress=progress)
    verb = "would replay" if report.dry_run else "replayed"
    lines = [f"{verb} {len(report.replayed)} message(s); left {report.left} (not selected), {report.unreadable} unreadable, "
             f"{report.repeated} parked again during the replay"]
    lines.extend(f"  {e.instance}  [{e.parked_by}]  {e.reason}" for e in report.replayed)
    if report.delete_failed:
        lines.append(f"{report.delete_failed} replayed message(s) could not be deleted from the poison queue and are there twice (harmless)")
    for skipped in report.skipped:
        lines.append(f"  skipped {skipped['messageId']}: {skipped['reason']} (left on the poison queue)")
    if instances and not report.replayed:
        lines.append("no poison message matched the given instance(s)")
    out.result(report.to_dict(), "\n".join(lines))
    return OK if report.ok else FAILED


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "status": cmd_status,
    "subscribe": cmd_subscribe,
    "subscriptions": cmd_subscriptions,
    "unsubscribe": cmd_unsubscribe,
    "catch-up": cmd_catch_up,
    "archive": cmd_archive,
    "poison": cmd_poison,
    "replay-poison": cmd_replay_poison,
}


# -- entry point ------------------------------------------------------------------------------


def _load_settings_file(path: str) -> None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --settings {path}: {type(exc).__name__}") from None
    values = data.get("Values") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise UsageError(f"--settings {path}: no \"Values\" object")
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
    except _ArgumentError as exc:
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

    from shared import telemetry
    from shared.errors import ConfigError, MottakError

    verbosity = getattr(args, "verbose", 0) or 0
    root_level = logging.getLogger().level
    handler = telemetry.setup_console_logging({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG), stderr)
    try:
        if getattr(args, "settings", None):
            _load_settings_file(args.settings)
        telemetry.configure(service_name="altinn-mottak-cli")
        return COMMANDS[args.command](args, out)
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


if __name__ == "__main__":
    sys.exit(main())
