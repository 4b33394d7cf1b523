"""The CLI's text, made by its pure renderers from hand-built payloads (the documents ``--json``
prints): what each line says, the empty cases, and that control characters in strings from
upstream (Altinn, the queue, error bodies) reach the terminal escaped. No servers, no I/O."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from shared.cli.archive import render_archive, render_catch_up
from shared.cli.common import json_text, screen_text
from shared.cli.poison import render_poison, render_replay
from shared.cli.status import REFUSED_CAUSE, render_status
from shared.cli.subscriptions import render_subscribe, render_subscriptions, render_unsubscribe

GUID = "428a4575-2c04-4400-89a3-1aaadd2579cd"
INSTANCE = {"org": "ttd", "app": "apps-test", "partyId": "50660768", "instanceGuid": GUID}
HOSTILE = "evil\x1b[2J\x9b\u202eend"  # clear screen, a C1 CSI, a bidi override
SHOWN = "evil\\x1b[2J\\x9b\\u202eend"


# -- payloads ---------------------------------------------------------------------------------


def status_payload(**overrides: Any) -> dict[str, Any]:
    archives = {"items": [], "manifests": 0, "scanned": 0, "truncated": False, "confirmationRefused": []}
    doc: dict[str, Any] = {"ok": True, "problems": [], "environment": "test", "platform": "https://platform.tt02.altinn.no"}
    doc |= {"apps": ["ttd/apps-test", "ttd/big-app"], "eventTypes": ["app.instance.process.completed"], "container": "archive"}
    doc |= {"catchupSchedule": "0 15 * * * *", "queues": {"altinn-events": 0, "altinn-events-poison": None}, "recentArchives": archives}
    doc |= {"confirmationRefused": archives["confirmationRefused"], "deferred": {"items": [], "more": False}, "token": None}
    return doc | overrides


def archives(items: list[dict[str, Any]], refused: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    doc = {"items": items, "manifests": len(items), "scanned": 3 * len(items), "truncated": False, "confirmationRefused": refused or []}
    return doc | overrides


def subscription(sub_id: int, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": sub_id, "app": "ttd/apps-test", "typeFilter": "app.instance.process.completed", "resourceFilter": None}
    doc |= {"sourceFilter": "https://ttd.apps.tt02.altinn.no/ttd/apps-test", "endPoint": "https://mottak.example/api/events?code=***"}
    doc |= {"validated": True, "created": "2025-01-01T10:00:00Z", "consumer": "/org/ttd"}
    return doc | overrides


def subscribed(sub_id: int, *, existed: bool = False, **overrides: Any) -> dict[str, Any]:
    return {"type": "app.instance.process.completed", "existed": existed, "reposted": False, **subscription(sub_id, **overrides)}


def catch_up_payload(apps: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"ok": True, "dryRun": False, "found": sum(a["found"] for a in apps), "enqueued": sum(a["enqueued"] for a in apps)}
    doc |= {"awaitingConfirmation": sum(a["awaitingConfirmation"] for a in apps), "skipped": sum(sum(a["skipped"].values()) for a in apps)}
    doc |= {"limit": 1000, "backlog": 0, "stopped": None, "error": None, "durationSeconds": 1.234, "apps": apps}
    doc |= {"instances": [], "instancesTruncated": False}
    return doc | overrides


def app_report(app: str = "ttd/apps-test", **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"app": app, "found": 4, "enqueued": 3, "awaitingConfirmation": 1, "pages": 1, "complete": True, "error": None}
    doc |= {"skipped": {"confirmed": 0, "refused": 0, "duplicate": 1, "invalid": 0}}
    return doc | overrides


def poison_entry(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"messageId": "m1", "insertedOn": "2025-01-01T10:00:00Z", "instance": f"ttd/apps-test/50660768/{GUID}", "eventId": None}
    doc |= {"via": "webhook", "parkedBy": "pipeline", "reason": "permanent: Altinn answered 403", "status": 403, "failedAt": None}
    doc |= {"attempts": 1, "failureClass": "permanent"}
    return doc | overrides


def replay_payload(messages: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"dryRun": False, "left": 0, "unreadable": 0, "repeated": 0, "deleteFailed": 0, "skipped": [], "ok": True}
    doc |= {"replayed": len(messages), "durationSeconds": 0.5, "messages": messages}
    return doc | overrides


# -- status -----------------------------------------------------------------------------------


def test_status_with_nothing_to_report_is_exactly_six_lines() -> None:
    assert render_status(status_payload()) == "\n".join(
        [
            "altinn-mottak status (test, https://platform.tt02.altinn.no)",
            "  apps:      ttd/apps-test, ttd/big-app",
            "  archive:   container archive; catch-up schedule '0 15 * * * *'",
            "  queues:    altinn-events 0, altinn-events-poison absent",
            "  token:     not checked",
            "  archived:  newest of 0 manifest(s) in the first 0 blob(s)",
        ]
    )


def test_status_tells_an_unreadable_queue_from_an_absent_one() -> None:
    payload = status_payload(queues={"altinn-events": None, "altinn-events-poison": None}, problems=["cannot read queue altinn-events (AzureError)"])
    text = render_status(payload, unread_queues=["altinn-events"])
    assert "  queues:    altinn-events ?, altinn-events-poison absent" in text.split("\n")
    assert text.endswith("\n  problem:   cannot read queue altinn-events (AzureError)")


def test_status_points_to_the_poison_commands_only_when_the_poison_queue_has_messages() -> None:
    hint = "the poison queue is not empty: `altinn-mottak poison` shows why, `altinn-mottak replay-poison` moves them back"
    assert hint in render_status(status_payload(queues={"altinn-events": 0, "altinn-events-poison": 2}))
    assert "altinn-events-poison 2" in render_status(status_payload(queues={"altinn-events": 0, "altinn-events-poison": 2}))
    assert hint not in render_status(status_payload(queues={"altinn-events": 5, "altinn-events-poison": 0}))


@pytest.mark.parametrize(
    ("token", "line"),
    [
        (None, "  token:     not checked"),
        ({"ok": True, "error": None, "seconds": 0.4567}, "  token:     ok (Maskinporten grant and Altinn exchange in 0.46 s)"),
        (
            {"ok": False, "error": "setting MASKINPORTEN_PRIVATE_KEY: not a PEM key", "seconds": 0.0},
            "  token:     FAILED: setting MASKINPORTEN_PRIVATE_KEY: not a PEM key",
        ),
    ],
)
def test_status_token_line(token: dict[str, Any] | None, line: str) -> None:
    assert render_status(status_payload(token=token)).split("\n")[4] == line


def test_status_lists_the_recent_archives_and_says_when_the_listing_stopped() -> None:
    items: list[dict[str, Any]] = [
        {"instance": f"ttd/apps-test/1/{GUID}", "lastModified": "2025-01-02T00:00:00+00:00", "confirmed": "2025-01-02T00:00:01Z"},
        {"instance": f"ttd/apps-test/2/{GUID}", "lastModified": "2025-01-01T00:00:00+00:00", "confirmed": None},
    ]
    text = render_status(status_payload(recentArchives=archives(items, truncated=True)))
    lines = text.split("\n")
    assert "  archived:  newest of 2 manifest(s) in the first 6 blob(s) - more exist" in lines
    assert f"    2025-01-02T00:00:00+00:00  ttd/apps-test/1/{GUID}  confirmed 2025-01-02T00:00:01Z" in lines
    assert f"    2025-01-01T00:00:00+00:00  ttd/apps-test/2/{GUID}  NOT confirmed" in lines
    assert "more exist" not in render_status(status_payload(recentArchives=archives(items)))


def test_status_lists_at_most_recent_refused_confirmations_with_the_likely_cause() -> None:
    refused = [{"instance": f"ttd/apps-test/{n}/{GUID}", "lastRefusal": "2025-01-01T00:00:00Z" if n else "", "likelyCause": REFUSED_CAUSE} for n in range(3)]
    payload = status_payload(recentArchives=archives([], refused), confirmationRefused=refused)
    lines = render_status(payload, recent=2).split("\n")
    assert f"  archived, confirmation refused: 3 (likely cause: {REFUSED_CAUSE})" in lines
    assert f"    ttd/apps-test/0/{GUID}  last refused ?" in lines
    assert f"    ttd/apps-test/1/{GUID}  last refused 2025-01-01T00:00:00Z" in lines
    assert not any("ttd/apps-test/2/" in line for line in lines)


def test_status_lists_deferred_attempts_and_marks_more() -> None:
    deferred = [
        {"instance": INSTANCE, "attempt": 3, "nextAttemptAt": "2025-01-01T10:05:00Z", "lastReason": "transient: Altinn answered 503"},
        {"instance": None, "attempt": 1, "nextAttemptAt": None, "lastReason": None},
    ]
    lines = render_status(status_payload(deferred={"items": deferred, "more": True})).split("\n")
    assert "  deferred:  2+ instance(s) waiting for their next attempt" in lines
    assert f"    ttd/apps-test/50660768/{GUID}  attempt 3, next 2025-01-01T10:05:00Z: transient: Altinn answered 503" in lines
    assert "    None/None/None/None  attempt 1, next None: None" in lines
    assert "  deferred:  2 instance(s)" in render_status(status_payload(deferred={"items": deferred, "more": False}))


def test_status_shows_the_schedule_quoted_and_every_problem_last() -> None:
    payload = status_payload(catchupSchedule="0 */5 * * * *", problems=["cannot list the archive (AzureError)", "token: down"])
    lines = render_status(payload).split("\n")
    assert "  archive:   container archive; catch-up schedule '0 */5 * * * *'" in lines
    assert lines[-2:] == ["  problem:   cannot list the archive (AzureError)", "  problem:   token: down"]


# -- subscriptions ----------------------------------------------------------------------------


def test_subscribe_lines_and_the_not_validated_advice() -> None:
    payload = {"ok": False, "subscriptions": [subscribed(7, existed=True), subscribed(8, validated=False)], "notValidated": [8]}
    lines = render_subscribe(payload).split("\n")
    assert lines[0] == "exists   #7  ttd/apps-test  app.instance.process.completed  https://mottak.example/api/events?code=***  validated"
    assert lines[1] == "created  #8  ttd/apps-test  app.instance.process.completed  https://mottak.example/api/events?code=***  NOT VALIDATED YET"
    assert lines[2] == ""
    assert lines[3].startswith("1 subscription(s) not validated by Altinn yet: Altinn delivers nothing until the endpoint has answered")
    assert "then run `altinn-mottak subscriptions`" in lines[3]


def test_subscribe_shows_the_app_asked_for_and_no_advice_when_all_are_validated() -> None:
    payload = {"ok": True, "subscriptions": [subscribed(9, app=None)], "notValidated": []}
    assert render_subscribe(payload, apps=["ttd/big-app"]) == (
        "created  #9  ttd/big-app  app.instance.process.completed  https://mottak.example/api/events?code=***  validated"
    )
    assert render_subscribe({"ok": True, "subscriptions": [], "notValidated": []}) == ""


def test_subscriptions_lines_fallbacks_and_the_unvalidated_summary() -> None:
    subs = [
        subscription(1),
        subscription(2, app=None, typeFilter=None, validated=False, created=None),
        subscription(3, app=None, sourceFilter=None, validated=False),
    ]
    lines = render_subscriptions({"ok": True, "count": 3, "subscriptions": subs}).split("\n")
    assert lines == [
        "3 subscription(s)",
        "  #1  ttd/apps-test  app.instance.process.completed  https://mottak.example/api/events?code=***  validated  2025-01-01T10:00:00Z",
        "  #2  https://ttd.apps.tt02.altinn.no/ttd/apps-test  (all types)  https://mottak.example/api/events?code=***  NOT VALIDATED  ",
        "  #3  -  app.instance.process.completed  https://mottak.example/api/events?code=***  NOT VALIDATED  2025-01-01T10:00:00Z",
        "not validated (no events are delivered to them): #2, #3",
    ]


def test_subscriptions_none() -> None:
    assert render_subscriptions({"ok": True, "count": 0, "subscriptions": []}) == "0 subscription(s)"


def test_unsubscribe_warns_about_altinns_cache_only_when_all_were_deleted() -> None:
    ok = {"ok": True, "results": [{"id": 4, "deleted": True, "error": None}]}
    assert render_unsubscribe(ok) == "#4: deleted\nAltinn caches subscriptions for up to an hour: events may still arrive for a while."
    failed = {"ok": False, "results": [{"id": 4, "deleted": True, "error": None}, {"id": 999, "deleted": False, "error": "Altinn answered 404"}]}
    assert render_unsubscribe(failed) == "#4: deleted\n#999: NOT deleted: Altinn answered 404"


# -- catch-up and archive ---------------------------------------------------------------------


def test_catch_up_summary_and_app_lines() -> None:
    apps = [
        app_report(),
        app_report("ttd/big-app", found=0, enqueued=0, awaitingConfirmation=0, skipped={"confirmed": 0}, complete=False, error="Altinn answered 500"),
    ]
    lines = render_catch_up(catch_up_payload(apps)).split("\n")
    assert lines == [
        "catch-up: found 4, enqueued 3, skipped 1 in 1.2 s",
        "  ttd/apps-test: found 4, enqueued 3 (1 archived awaiting confirmation), skipped duplicate 1",
        "  ttd/big-app: found 0, enqueued 0 (0 archived awaiting confirmation) - not finished  ERROR: Altinn answered 500",
    ]


def test_catch_up_prefers_the_unrounded_duration() -> None:
    payload = catch_up_payload([], durationSeconds=0.05)
    assert render_catch_up(payload).endswith("in 0.1 s")
    assert render_catch_up(payload, duration=0.0496).endswith("in 0.0 s")


def test_catch_up_dry_run_lists_the_instances_and_says_why_it_stopped() -> None:
    instances = [{"app": "ttd/apps-test", "instance": f"50660768/{GUID}", "state": "not archived"}]
    payload = catch_up_payload([app_report()], dryRun=True, stopped="max-instances", instances=instances)
    lines = render_catch_up(payload).split("\n")
    assert lines[0] == "catch-up (dry run): found 4, would enqueue 3, skipped 1 in 1.2 s"
    assert "would enqueue 3 (1 archived" in lines[1]
    assert lines[2:] == [
        "stopped early: max-instances; run again (or wait for the timer) to continue",
        "instances:",
        f"  ttd/apps-test 50660768/{GUID}  not archived",
    ]


def test_catch_up_lists_instances_only_in_a_dry_run_and_shows_the_stop_error() -> None:
    instances = [{"app": "ttd/apps-test", "instance": f"50660768/{GUID}", "state": "not archived"}]
    text = render_catch_up(catch_up_payload([], stopped="error", error="queue unavailable", instances=instances))
    assert text.split("\n")[1:] == ["stopped early: error (queue unavailable); run again (or wait for the timer) to continue"]


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        ({"outcome": "archived", "elements": 3, "bytes": 1234}, "archived 3 data element(s), 1234 bytes, and confirmed"),
        ({"outcome": "confirmed-only", "elements": 0, "bytes": 0}, "was archived already; confirmed now"),
        ({"outcome": "already-archived", "elements": 0, "bytes": 0}, "already archived and confirmed; nothing to do"),
        ({"outcome": "enqueued"}, "enqueued for the archive function"),
        ({"outcome": "deferred", "elements": 0, "bytes": 0}, "deferred"),
    ],
)
def test_archive_says_what_happened(extra: dict[str, Any], text: str) -> None:
    assert render_archive({"ok": True, "instance": INSTANCE, **extra}) == f"ttd/apps-test 50660768/{GUID}: {text}"


# -- poison -----------------------------------------------------------------------------------


def test_poison_queue_absent_and_empty() -> None:
    assert render_poison({"ok": True, "count": None, "messages": []}) == "the poison queue does not exist (nothing was ever parked)"
    assert render_poison({"ok": True, "count": 0, "messages": []}) == "poison queue: about 0 message(s)"


def test_poison_lines_and_the_replay_hint() -> None:
    messages = [poison_entry(), poison_entry(insertedOn=None, instance=None, parkedBy="unreadable", reason="unreadable message", status=None)]
    lines = render_poison({"ok": True, "count": 40, "messages": messages}).split("\n")
    assert lines == [
        "poison queue: about 40 message(s); showing the first 2",
        f"  2025-01-01T10:00:00Z  ttd/apps-test/50660768/{GUID}  [pipeline] HTTP 403  permanent: Altinn answered 403",
        "  ?  (unreadable)  [unreadable]  unreadable message",
        "replay: `altinn-mottak replay-poison --instance PARTYID/GUID` or `--all` (after fixing the cause)",
    ]
    assert render_poison({"ok": True, "count": 1, "messages": messages[:1]}).split("\n")[0] == "poison queue: about 1 message(s)"


def test_replay_summary_and_message_lines() -> None:
    payload = replay_payload([poison_entry()], left=2, unreadable=1, repeated=1)
    assert render_replay(payload) == (
        "replayed 1 message(s); left 2 (not selected), 1 unreadable, 1 parked again during the replay\n"
        f"  ttd/apps-test/50660768/{GUID}  [pipeline]  permanent: Altinn answered 403"
    )


def test_replay_dry_run_duplicates_and_skipped() -> None:
    payload = replay_payload([], dryRun=True, deleteFailed=2, skipped=[{"messageId": "m9", "reason": "too large for the queue"}], ok=False)
    assert render_replay(payload).split("\n") == [
        "would replay 0 message(s); left 0 (not selected), 0 unreadable, 0 parked again during the replay",
        "2 replayed message(s) could not be deleted from the poison queue and are there twice (harmless)",
        "  skipped m9: too large for the queue (left on the poison queue)",
    ]


def test_replay_says_when_no_message_matched_the_instances_given() -> None:
    nothing = "no poison message matched the given instance(s)"
    assert render_replay(replay_payload([]), selected=True).endswith("\n" + nothing)
    assert nothing not in render_replay(replay_payload([]))
    assert nothing not in render_replay(replay_payload([poison_entry()]), selected=True)


# -- every renderer ---------------------------------------------------------------------------

HOSTILE_CASES: list[tuple[str, Callable[[dict[str, Any]], str], dict[str, Any]]] = [
    ("status deferred reason", render_status, status_payload(deferred={"items": [{"instance": INSTANCE, "attempt": 1, "lastReason": HOSTILE}], "more": False})),
    ("status token error", render_status, status_payload(token={"ok": False, "error": HOSTILE, "seconds": 0.1})),
    ("status environment", render_status, status_payload(environment=HOSTILE)),
    ("subscribe endpoint", render_subscribe, {"ok": True, "subscriptions": [subscribed(1, endPoint=HOSTILE)], "notValidated": []}),
    ("subscriptions created", render_subscriptions, {"ok": True, "count": 1, "subscriptions": [subscription(1, created=HOSTILE)]}),
    ("unsubscribe error", render_unsubscribe, {"ok": False, "results": [{"id": 1, "deleted": False, "error": HOSTILE}]}),
    ("catch-up app error", render_catch_up, catch_up_payload([app_report(error=HOSTILE)])),
    ("poison reason", render_poison, {"ok": True, "count": 1, "messages": [poison_entry(reason=HOSTILE)]}),
    ("replay skipped reason", render_replay, replay_payload([], skipped=[{"messageId": "m1", "reason": HOSTILE}])),
]


@pytest.mark.parametrize(("case", "render", "payload"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_control_characters_from_upstream_reach_the_terminal_escaped(case: str, render: Callable[[dict[str, Any]], str], payload: dict[str, Any]) -> None:
    raw = render(payload)
    assert HOSTILE in raw or SHOWN in raw, "the renderer passes the text on (or escapes it itself); printing escapes it"
    printed = screen_text(raw)
    assert SHOWN in printed
    assert not any(c in printed for c in "\x1b\x9b\u202e")
    assert printed.endswith("\n") and not printed.endswith("\n\n")
    assert "\\u001b[2J" in json_text(payload) and json.loads(json_text(payload)) == payload


RENDERERS: list[tuple[Callable[[dict[str, Any]], str], dict[str, Any]]] = [
    (
        render_status,
        status_payload(deferred={"items": [{"instance": INSTANCE, "attempt": 1}], "more": True}, token={"ok": True, "error": None, "seconds": 1.0}),
    ),
    (render_subscribe, {"ok": False, "subscriptions": [subscribed(1, validated=False)], "notValidated": [1]}),
    (render_subscriptions, {"ok": True, "count": 1, "subscriptions": [subscription(1)]}),
    (render_unsubscribe, {"ok": True, "results": [{"id": 1, "deleted": True, "error": None}]}),
    (render_catch_up, catch_up_payload([app_report()], dryRun=True, instances=[{"app": "a/b", "instance": "1/x", "state": "s"}])),
    (render_archive, {"ok": True, "instance": INSTANCE, "outcome": "archived", "elements": 1, "bytes": 2}),
    (render_poison, {"ok": True, "count": 1, "messages": [poison_entry()]}),
    (render_replay, replay_payload([poison_entry()])),
]


@pytest.mark.parametrize(("render", "payload"), RENDERERS, ids=[r.__name__ for r, _ in RENDERERS])
def test_rendering_leaves_the_payload_as_it_was(render: Callable[[dict[str, Any]], str], payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    first = render(payload)
    assert first and render(payload) == first
    assert payload == before


def test_json_output_keeps_text_readable_and_ends_with_a_newline() -> None:
    text = json_text({"ok": True, "reason": "ünïcödé \x1b"})
    assert text == '{\n  "ok": true,\n  "reason": "ünïcödé \\u001b"\n}\n'


def test_a_newline_inside_an_upstream_value_cannot_start_a_line_of_ours() -> None:
    from shared.cli.poison import render_poison

    entry = {"insertedOn": "2026-12-02T12:00:00Z", "instance": None, "parkedBy": "app", "status": None, "reason": "bad\n  2026-12-02  ttd/a/1/x  [app]  fake"}
    text = render_poison({"count": 1, "messages": [entry]})
    assert len(text.splitlines()) == 3 and "\\n" in text.splitlines()[1]
