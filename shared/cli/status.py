"""``altinn-mottak status``: queue depths, the last archives, deferred attempts, token health."""

from __future__ import annotations

import argparse
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from shared.cli.arguments import add_command, positive
from shared.cli.common import FAILED, OK, PROG, Output, runtime
from shared.http import safe_text

if TYPE_CHECKING:
    from shared.cli.arguments import Subparsers
    from shared.runtime import Runtime

REFUSED_CAUSE = (
    "the app's policy does not grant the 'complete' action to the org at the instance's end event (the standard "
    "policy grants it at EndEvent_1 only): fix the app's policy.xml, then `altinn-mottak archive ORG/APP PARTYID/GUID`"
)


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "status",
        cmd_status,
        help="queue depths, last archives, token health",
        description="Queue and poison queue depth, the last archived instances, and whether a token can be had now.",
    )
    p.add_argument("--recent", type=positive, default=10, metavar="N", help="how many recent archives to show (default 10)")
    p.add_argument(
        "--scan-limit",
        type=positive,
        default=5000,
        metavar="N",
        help="blobs to scan for manifests at most (default 5000); the listing is by name, so newer archives may lie beyond",
    )
    p.add_argument("--no-token", action="store_true", help="skip the token check")


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    payload, unread = status_payload(runtime(), recent=args.recent, scan_limit=args.scan_limit, token=not args.no_token)
    out.result(payload, render_status(payload, unread_queues=unread, recent=args.recent))
    return OK if payload["ok"] else FAILED


# -- gathering --------------------------------------------------------------------------------


def status_payload(rt: Runtime, *, recent: int = 10, scan_limit: int = 5000, token: bool = True) -> tuple[dict[str, Any], list[str]]:
    """What ``status --json`` prints, and the queues whose depth could not be read (``null`` in
    the JSON like an absent queue; the text tells them apart)."""
    problems: list[str] = []
    queues, unread = _queue_depths(rt, problems)
    archives = _recent_archives_or_empty(rt, recent, scan_limit, problems)
    deferred, deferred_more = _deferred(rt, recent, problems)
    checked = _token_check(rt) if token else None
    if checked is not None and not checked["ok"]:
        problems.append(f"token: {checked['error']}")
    s = rt.settings
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
        "recentArchives": archives,
        "confirmationRefused": archives["confirmationRefused"],
        "deferred": {"items": deferred, "more": deferred_more},
        "token": checked,
    }
    return payload, unread


def _queue_depths(rt: Runtime, problems: list[str]) -> tuple[dict[str, int | None], list[str]]:
    """Each queue's depth (None: absent or unreadable) and the unreadable ones."""
    from shared import poison
    from shared.config import EVENTS_QUEUE, POISON_QUEUE
    from shared.errors import MottakError

    queues: dict[str, int | None] = {}
    unread: list[str] = []
    for name in (EVENTS_QUEUE, POISON_QUEUE):
        try:
            queues[name] = poison.depth(rt, name)
        except MottakError as exc:
            queues[name] = None
            unread.append(name)
            problems.append(str(exc))
    return queues, unread


def _recent_archives_or_empty(rt: Runtime, limit: int, scan_limit: int, problems: list[str]) -> dict[str, Any]:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        return recent_archives(rt, limit, scan_limit)
    except ResourceNotFoundError:
        pass  # no container yet: nothing archived
    except AzureError as exc:
        problems.append(f"cannot list the archive ({type(exc).__name__})")
    return {"items": [], "manifests": 0, "scanned": 0, "truncated": False, "confirmationRefused": []}


def _deferred(rt: Runtime, limit: int, problems: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """The first ``limit`` deferred attempts, and whether there are more."""
    from azure.core.exceptions import AzureError

    try:
        return rt.retry_records.list(limit=limit)
    except AzureError as exc:
        problems.append(f"cannot list the deferred attempts ({type(exc).__name__})")
    return [], False


def _token_check(rt: Runtime) -> dict[str, Any]:
    from shared.errors import ConfigError, MottakError

    started = time.monotonic()
    try:
        rt.altinn.token()  # a Maskinporten grant and the Altinn exchange, unless cached
    except ConfigError as exc:  # UnresolvedKeyVaultReference says what to check
        return {"ok": False, "error": str(exc), "seconds": round(time.monotonic() - started, 3)}
    except MottakError as exc:
        return {"ok": False, "error": str(exc), "seconds": round(time.monotonic() - started, 3)}
    return {"ok": True, "error": None, "seconds": round(time.monotonic() - started, 3)}


def recent_archives(rt: Runtime, limit: int = 10, scan_limit: int = 5000) -> dict[str, Any]:
    """Newest manifests among the first ``scan_limit`` blobs (a bounded listing, by name), and the
    archives whose confirmation Altinn refused."""
    from shared.archive import CONFIRMED, MANIFEST, REFUSED

    found: list[tuple[Any, str, str | None]] = []
    marked: dict[str, str] = {}  # prefix -> confirmedAt of its confirmed.json marker
    refused: dict[str, str] = {}
    scanned = 0
    truncated = False
    for blob in rt.container.list_blobs(include=["metadata"], results_per_page=min(scan_limit, 5000)):
        if scanned >= scan_limit:
            truncated = True
            break
        scanned += 1
        if blob.name.endswith("/" + MANIFEST):
            found.append((blob.last_modified, blob.name[: -len(MANIFEST) - 1], None))
        elif blob.name.endswith("/" + CONFIRMED):
            marked[blob.name[: -len(CONFIRMED) - 1]] = (blob.metadata or {}).get("confirmedAt") or "yes"
        elif f"/{REFUSED}" in blob.name:
            prefix = blob.name.split(f"/{REFUSED}", 1)[0]
            refused[prefix] = max(refused.get(prefix, ""), (blob.metadata or {}).get("refusedAt") or "")
    found = [(when, name, marked.get(name)) for when, name, _ in found]
    found.sort(key=lambda f: f[0], reverse=True)
    items = [{"instance": name, "lastModified": when.isoformat() if when else None, "confirmed": confirmed} for when, name, confirmed in found[:limit]]
    confirmed = {name for _, name, c in found if c}
    unconfirmable = [{"instance": name, "lastRefusal": at, "likelyCause": REFUSED_CAUSE} for name, at in sorted(refused.items()) if name not in confirmed]
    return {"items": items, "manifests": len(found), "scanned": scanned, "truncated": truncated, "confirmationRefused": unconfirmable}


# -- rendering (pure) -------------------------------------------------------------------------


def render_status(payload: dict[str, Any], *, unread_queues: Collection[str] = (), recent: int = 10) -> str:
    """The text of ``status``: ``payload`` as :func:`status_payload` makes it; ``unread_queues``
    are shown as ``?`` (not ``absent``), and at most ``recent`` refused confirmations are listed."""
    lines = _render_settings(payload, unread_queues)
    lines.append(_render_token(payload["token"]))
    lines.extend(_render_archives(payload["recentArchives"], payload["confirmationRefused"], recent))
    lines.extend(_render_deferred(payload["deferred"]))
    lines.extend(f"  problem:   {problem}" for problem in payload["problems"])
    return "\n".join(lines)


def _render_settings(payload: dict[str, Any], unread_queues: Collection[str]) -> list[str]:
    from shared.config import POISON_QUEUE

    queues: dict[str, int | None] = payload["queues"]
    shown = {name: "?" if name in unread_queues else "absent" if depth is None else str(depth) for name, depth in queues.items()}
    lines = [
        f"altinn-mottak status ({payload['environment']}, {payload['platform']})",
        f"  apps:      {', '.join(payload['apps'])}",
        f"  archive:   container {payload['container']}; catch-up schedule {payload['catchupSchedule']!r}",
        f"  queues:    {', '.join(f'{n} {d}' for n, d in shown.items())}",
    ]
    if queues.get(POISON_QUEUE):
        lines.append(f"             the poison queue is not empty: `{PROG} poison` shows why, `{PROG} replay-poison` moves them back")
    return lines


def _render_token(token: dict[str, Any] | None) -> str:
    if token is None:
        return "  token:     not checked"
    if token["ok"]:
        return f"  token:     ok (Maskinporten grant and Altinn exchange in {token['seconds']:.2f} s)"
    return f"  token:     FAILED: {token['error']}"


def _render_archives(archives: dict[str, Any], refused: list[dict[str, Any]], recent: int) -> list[str]:
    scope = f"newest of {archives['manifests']} manifest(s) in the first {archives['scanned']} blob(s)" + (" - more exist" if archives["truncated"] else "")
    lines = [f"  archived:  {scope}"]
    for item in archives["items"]:
        state = f"confirmed {item['confirmed']}" if item["confirmed"] else "NOT confirmed"
        lines.append(f"    {item['lastModified']}  {item['instance']}  {state}")
    if refused:
        lines.append(f"  archived, confirmation refused: {len(refused)} (likely cause: {REFUSED_CAUSE})")
        for item in refused[:recent]:
            lines.append(f"    {item['instance']}  last refused {item['lastRefusal'] or '?'}")
    return lines


def _render_deferred(deferred: dict[str, Any]) -> list[str]:
    items: list[dict[str, Any]] = deferred["items"]
    if not items:
        return []
    lines = [f"  deferred:  {len(items)}{'+' if deferred['more'] else ''} instance(s) waiting for their next attempt"]
    for d in items:
        inst = d.get("instance") or {}
        where = f"{inst.get('org')}/{inst.get('app')}/{inst.get('partyId')}/{inst.get('instanceGuid')}"
        lines.append(
            f"    {safe_text(where, 400)}  attempt {d.get('attempt')}, next {safe_text(d.get('nextAttemptAt'), 64)}: {safe_text(d.get('lastReason'), 2000)}"
        )
    return lines
