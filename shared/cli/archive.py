"""``altinn-mottak catch-up | archive``: enqueue what Altinn has and we have not confirmed; archive
(and confirm) one instance now."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from shared.cli.arguments import add_command, app_arg, positive, seconds
from shared.cli.common import FAILED, OK, Failure, Output, UsageError, runtime, selected_apps

if TYPE_CHECKING:
    from shared.cli.arguments import Subparsers
    from shared.events import InstanceRef
    from shared.runtime import Runtime


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "catch-up",
        cmd_catch_up,
        help="enqueue completed instances we have not confirmed",
        description="Query Altinn storage for completed instances our org has not confirmed and put them on the queue, "
        "like the hourly timer. Bounded by CATCHUP_MAX_INSTANCES and CATCHUP_TIME_BUDGET_SECONDS.",
    )
    p.add_argument("--app", dest="apps", action="append", type=app_arg, metavar="ORG/APP", help="only this app (repeatable; default: all)")
    p.add_argument("--dry-run", action="store_true", help="list what would be enqueued, enqueue nothing")
    p.add_argument("--max-instances", type=positive, metavar="N", help="override CATCHUP_MAX_INSTANCES for this run")
    p.add_argument("--time-budget", type=seconds, metavar="SECONDS", help="override CATCHUP_TIME_BUDGET_SECONDS for this run")
    p.add_argument("--page-size", type=positive, default=100, metavar="N", help="instances per query page (default 100)")

    p = add_command(
        subparsers,
        "archive",
        cmd_archive,
        help="archive one instance now",
        description="Archive one instance now with the same pipeline as the queue (idempotent): download, manifest, confirm.",
    )
    p.add_argument("app", type=app_arg, metavar="ORG/APP")
    p.add_argument("instance", metavar="PARTYID/INSTANCEGUID")
    p.add_argument("--enqueue", action="store_true", help="put it on the queue for the archive function instead")


# -- catch-up ---------------------------------------------------------------------------------


def cmd_catch_up(args: argparse.Namespace, out: Output) -> int:
    from shared.catchup import CatchupReport, run_catchup

    rt = runtime()
    apps = selected_apps(rt.settings, args.apps)

    def progress(report: CatchupReport) -> None:
        pages = sum(a.pages for a in report.apps)
        verb = "would enqueue" if report.dry_run else "enqueued"
        out.progress.update(f"catch-up: {pages} page(s), found {report.found}, {verb} {report.enqueued}, skipped {report.skipped}")

    report = run_catchup(
        rt, apps=apps, dry_run=args.dry_run, max_instances=args.max_instances, time_budget=args.time_budget, page_size=args.page_size, progress=progress
    )
    payload = report.to_dict()
    out.result(payload, render_catch_up(payload, duration=report.duration))
    return OK if report.ok else FAILED


def render_catch_up(payload: dict[str, Any], *, duration: float | None = None) -> str:
    """The text of ``catch-up``; ``duration``: the unrounded seconds (default: the JSON's)."""
    dry_run = payload["dryRun"]
    verb = "would enqueue" if dry_run else "enqueued"
    seconds = payload["durationSeconds"] if duration is None else duration
    lines = [
        f"catch-up{' (dry run)' if dry_run else ''}: found {payload['found']}, {verb} {payload['enqueued']}, skipped {payload['skipped']} in {seconds:.1f} s"
    ]
    for a in payload["apps"]:
        skipped = ", ".join(f"{k} {v}" for k, v in a["skipped"].items() if v)
        lines.append(
            f"  {a['app']}: found {a['found']}, {verb} {a['enqueued']} ({a['awaitingConfirmation']} archived awaiting confirmation)"
            + (f", skipped {skipped}" if skipped else "")
            + ("" if a["complete"] else " - not finished")
            + (f"  ERROR: {a['error']}" if a["error"] else "")
        )
    if payload["stopped"]:
        error = payload["error"]
        lines.append(f"stopped early: {payload['stopped']}" + (f" ({error})" if error else "") + "; run again (or wait for the timer) to continue")
    if dry_run and payload["instances"]:
        lines.append("instances:")
        lines.extend(f"  {i['app']} {i['instance']}  {i['state']}" for i in payload["instances"])
    return "\n".join(lines)


# -- archive ----------------------------------------------------------------------------------


def cmd_archive(args: argparse.Namespace, out: Output) -> int:
    from shared import events

    rt = runtime()
    org, app = args.app
    selected_apps(rt.settings, [args.app])
    try:
        ref = events.InstanceRef.parse(org, app, args.instance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    payload = _enqueue(rt, ref) if args.enqueue else _archive_now(rt, ref, out)
    out.result(payload, render_archive(payload))
    return OK


def _enqueue(rt: Runtime, ref: InstanceRef) -> dict[str, Any]:
    from azure.core.exceptions import AzureError

    from shared import events
    from shared.pipeline import enqueue

    try:
        enqueue(rt.events_queue, events.queue_message(None, ref, via="cli"))
    except AzureError as exc:
        raise Failure(f"could not enqueue {_target(ref.to_dict())} ({type(exc).__name__})") from None
    return {"ok": True, "instance": ref.to_dict(), "outcome": "enqueued"}


def _archive_now(rt: Runtime, ref: InstanceRef, out: Output) -> dict[str, Any]:
    from shared import telemetry
    from shared.errors import ConfigError, PermanentError, TransientError
    from shared.pipeline import archive_instance

    target = _target(ref.to_dict())
    out.progress.update(f"archiving {target} ...", force=True)
    with telemetry.log_context(instance=ref.instance_id, org=ref.org, app=ref.app, via="cli"):
        try:
            result = archive_instance(rt, ref, via="cli")
        except ConfigError:
            raise
        except (PermanentError, TransientError) as exc:
            kind = "permanent" if isinstance(exc, PermanentError) else "transient"
            telemetry.record_failure(kind, org=ref.org, app=ref.app, status=exc.status)
            raise Failure(f"{target}: {kind} failure: {exc}", {"instance": ref.to_dict(), "outcome": f"{kind}-failure", "status": exc.status}) from None
    telemetry.record_result(result.outcome, org=ref.org, app=ref.app, via="cli", nbytes=result.bytes)
    return {"ok": True, "instance": ref.to_dict(), "outcome": result.outcome.value, "elements": result.elements, "bytes": result.bytes}


def _target(instance: dict[str, Any]) -> str:
    """``org/app partyId/instanceGuid``"""
    return f"{instance['org']}/{instance['app']} {instance['partyId']}/{instance['instanceGuid']}"


def render_archive(payload: dict[str, Any]) -> str:
    """The text of ``archive`` (``outcome``: one of the pipeline's, or ``enqueued`` with --enqueue)."""
    target = _target(payload["instance"])
    outcome = payload["outcome"]
    return {
        "enqueued": f"{target}: enqueued for the archive function",
        "archived": f"{target}: archived {payload.get('elements')} data element(s), {payload.get('bytes')} bytes, and confirmed",
        "confirmed-only": f"{target}: was archived already; confirmed now",
        "already-archived": f"{target}: already archived and confirmed; nothing to do",
    }.get(outcome, f"{target}: {outcome}")
