"""``altinn-mottak subscribe | subscriptions | unsubscribe``: our Altinn Events subscriptions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.cli.arguments import add_command, app_arg, positive, seconds
from shared.cli.common import FAILED, OK, PROG, Output, UsageError, runtime, selected_apps

if TYPE_CHECKING:
    from shared.cli.arguments import Subparsers


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers,
        "subscribe",
        cmd_subscribe,
        help="subscribe our webhook to Altinn Events",
        description="Create Altinn Events subscriptions (one per app and event type) for the webhook, and wait until Altinn "
        "has validated them. An identical existing subscription is reused.",
    )
    p.add_argument("--endpoint", required=True, help="the webhook URL with its function key: https://<app>.azurewebsites.net/api/events?code=<key>")
    p.add_argument("--app", dest="apps", action="append", type=app_arg, metavar="ORG/APP", help="an app in ALTINN_APPS (repeatable; default: all)")
    p.add_argument("--type", dest="types", action="append", metavar="TYPE", help="event type (repeatable; default: ALTINN_EVENT_TYPES)")
    p.add_argument("--wait", type=seconds, default=30.0, metavar="SECONDS", help="how long to wait for Altinn's validation (default 30; 0: do not wait)")
    p.add_argument("--no-key-check", action="store_true", help="allow an endpoint without ?code= (e.g. behind a gateway)")

    p = add_command(
        subparsers,
        "subscriptions",
        cmd_subscriptions,
        help="list our org's subscriptions",
        description="List the Altinn Events subscriptions of our org (endpoints shown with the function key masked).",
    )
    p.add_argument("--app", dest="apps", action="append", type=app_arg, metavar="ORG/APP", help="only this app (repeatable)")
    p.add_argument("--all", action="store_true", help="also subscriptions for sources that are not our configured apps")

    p = add_command(subparsers, "unsubscribe", cmd_unsubscribe, help="delete subscriptions", description="Delete Altinn Events subscriptions by id.")
    p.add_argument("ids", nargs="+", type=positive, metavar="ID", help="subscription id (see `subscriptions`)")


# -- subscribe --------------------------------------------------------------------------------


def cmd_subscribe(args: argparse.Namespace, out: Output) -> int:
    from shared import subscriptions

    rt = runtime()
    apps = selected_apps(rt.settings, args.apps)
    types = sorted(set(args.types or rt.settings.event_types))
    try:
        endpoint = subscriptions.check_endpoint(args.endpoint, require_key=not args.no_key_check)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    results = subscriptions.subscribe(rt, apps, endpoint, types, wait=args.wait, progress=lambda t: out.progress.update(t, force=True))
    pending = [r for r in results if not r.validated]
    payload = {"ok": not pending or args.wait == 0, "subscriptions": [r.to_dict() for r in results], "notValidated": [r.subscription.id for r in pending]}
    out.result(payload, render_subscribe(payload, apps=[r.app for r in results]))
    return OK if payload["ok"] else FAILED


def render_subscribe(payload: dict[str, Any], *, apps: Sequence[str] | None = None) -> str:
    """The text of ``subscribe``. ``apps``: the app each subscription was made for (the JSON's
    ``app`` is the subscription's own, null when Altinn's source filter is not one of ours)."""
    subs: list[dict[str, Any]] = payload["subscriptions"]
    lines = []
    for i, s in enumerate(subs):
        state = "validated" if s["validated"] else "NOT VALIDATED YET"
        app = apps[i] if apps is not None else s["app"]
        lines.append(f"{'exists ' if s['existed'] else 'created'}  #{s['id']}  {app}  {s['type']}  {s['endPoint']}  {state}")
    if payload["notValidated"]:
        lines.append(
            f"\n{len(payload['notValidated'])} subscription(s) not validated by Altinn yet: Altinn delivers nothing until the endpoint has answered its "
            "validation event with 2xx. Check that the endpoint is reachable from Altinn and the function key is right, then run "
            f"`{PROG} subscriptions`; delete and subscribe again to get a new validation event."
        )
    return "\n".join(lines)


# -- subscriptions ----------------------------------------------------------------------------


def cmd_subscriptions(args: argparse.Namespace, out: Output) -> int:
    from shared import subscriptions

    rt = runtime()
    apps = [f"{o}/{a}" for o, a in selected_apps(rt.settings, args.apps)] if args.apps else None
    subs = subscriptions.list_subscriptions(rt, apps, ours_only=not args.all)
    payload = {"ok": True, "count": len(subs), "subscriptions": [s.to_dict() for s in subs]}
    out.result(payload, render_subscriptions(payload))
    return OK


def render_subscriptions(payload: dict[str, Any]) -> str:
    """The text of ``subscriptions``."""
    subs: list[dict[str, Any]] = payload["subscriptions"]
    lines = [f"{len(subs)} subscription(s)"]
    for s in subs:
        state = "validated" if s["validated"] else "NOT VALIDATED"
        lines.append(
            f"  #{s['id']}  {s['app'] or s['sourceFilter'] or '-'}  {s['typeFilter'] or '(all types)'}  {s['endPoint']}  {state}  {s['created'] or ''}"
        )
    unvalidated = [s["id"] for s in subs if not s["validated"]]
    if unvalidated:
        lines.append(f"not validated (no events are delivered to them): {', '.join(f'#{i}' for i in unvalidated)}")
    return "\n".join(lines)


# -- unsubscribe ------------------------------------------------------------------------------


def cmd_unsubscribe(args: argparse.Namespace, out: Output) -> int:
    from shared import subscriptions
    from shared.errors import MottakError

    rt = runtime()
    results: list[dict[str, Any]] = []
    for sub_id in args.ids:
        try:
            subscriptions.unsubscribe(rt, sub_id)
            results.append({"id": sub_id, "deleted": True, "error": None})
        except MottakError as exc:
            results.append({"id": sub_id, "deleted": False, "error": str(exc)})
    payload = {"ok": all(r["deleted"] for r in results), "results": results}
    out.result(payload, render_unsubscribe(payload))
    return OK if payload["ok"] else FAILED


def render_unsubscribe(payload: dict[str, Any]) -> str:
    """The text of ``unsubscribe``."""
    lines = [f"#{r['id']}: deleted" if r["deleted"] else f"#{r['id']}: NOT deleted: {r['error']}" for r in payload["results"]]
    if payload["ok"]:
        lines.append("Altinn caches subscriptions for up to an hour: events may still arrive for a while.")
    return "\n".join(lines)
