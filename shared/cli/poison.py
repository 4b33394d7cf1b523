"""``altinn-mottak poison | replay-poison``: what is on the poison queue and why; move it back."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from shared.cli.arguments import add_command, positive
from shared.cli.common import FAILED, OK, PROG, Output, UsageError, runtime
from shared.http import safe_text

if TYPE_CHECKING:
    from shared.cli.arguments import Subparsers


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "poison",
        cmd_poison,
        help="list the poison queue with the reasons",
        description="Show the first messages of the poison queue (at most 32: a peek takes no message) with why they are there.",
    )
    p.add_argument("--limit", type=positive, default=32, metavar="N", help="messages to show (at most 32)")

    p = add_command(
        subparsers,
        "replay-poison",
        cmd_replay_poison,
        help="move poison messages back to the queue",
        description="Move messages from altinn-events-poison back to altinn-events, without the failure record. "
        "Written to the main queue first, then deleted from the poison queue: nothing is lost.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--instance", dest="instances", action="append", metavar="INSTANCE", help="partyId/instanceGuid or org/app/partyId/instanceGuid (repeatable)"
    )
    which.add_argument("--all", action="store_true", help="every readable message")
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    p.add_argument("--limit", type=positive, metavar="N", help="replay at most N messages")


# -- poison -----------------------------------------------------------------------------------


def cmd_poison(args: argparse.Namespace, out: Output) -> int:
    from shared import poison

    entries, count = poison.peek(runtime(), args.limit)
    payload = {"ok": True, "count": count, "messages": [e.to_dict() for e in entries]}
    out.result(payload, render_poison(payload))
    return OK


def render_poison(payload: dict[str, Any]) -> str:
    """The text of ``poison``: ``count`` null means the queue does not exist."""
    count = payload["count"]
    entries: list[dict[str, Any]] = payload["messages"]
    if count is None:
        return "the poison queue does not exist (nothing was ever parked)"
    lines = [f"poison queue: about {count} message(s)" + (f"; showing the first {len(entries)}" if count > len(entries) else "")]
    for e in entries:
        status = f" HTTP {e['status']}" if e["status"] else ""
        # Each value on its own is escaped: a newline in a message's reason cannot start a line of ours.
        where, by, why = (safe_text(v, 2000) for v in (e["instance"] or "(unreadable)", e["parkedBy"], e["reason"]))
        lines.append(f"  {safe_text(e['insertedOn'] or '?', 64)}  {where}  [{by}]{status}  {why}")
    if entries:
        lines.append(f"replay: `{PROG} replay-poison --instance PARTYID/GUID` or `--all` (after fixing the cause)")
    return "\n".join(lines)


# -- replay-poison ----------------------------------------------------------------------------


def cmd_replay_poison(args: argparse.Namespace, out: Output) -> int:
    from shared import poison

    rt = runtime()
    instances = None
    if args.instances:
        try:
            instances = [poison.parse_selector(i) for i in args.instances]
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def progress(report: poison.ReplayReport) -> None:
        out.progress.update(f"replay: {len(report.replayed)} {'would be ' if report.dry_run else ''}replayed, {report.left} left")

    report = poison.replay(rt, instances=instances, dry_run=args.dry_run, limit=args.limit, progress=progress)
    payload = report.to_dict()
    out.result(payload, render_replay(payload, selected=bool(instances)))
    return OK if report.ok else FAILED


def render_replay(payload: dict[str, Any], *, selected: bool = False) -> str:
    """The text of ``replay-poison``; ``selected``: instances were given (not ``--all``)."""
    verb = "would replay" if payload["dryRun"] else "replayed"
    lines = [
        f"{verb} {payload['replayed']} message(s); left {payload['left']} (not selected), {payload['unreadable']} unreadable, "
        f"{payload['repeated']} parked again during the replay"
    ]
    lines.extend(f"  {safe_text(e['instance'], 2000)}  [{safe_text(e['parkedBy'], 200)}]  {safe_text(e['reason'], 2000)}" for e in payload["messages"])
    if payload["deleteFailed"]:
        lines.append(f"{payload['deleteFailed']} replayed message(s) could not be deleted from the poison queue and are there twice (harmless)")
    for skipped in payload["skipped"]:
        lines.append(f"  skipped {safe_text(skipped['messageId'], 200)}: {safe_text(skipped['reason'], 2000)} (left on the poison queue)")
    if selected and not payload["replayed"]:
        lines.append("no poison message matched the given instance(s)")
    return "\n".join(lines)
