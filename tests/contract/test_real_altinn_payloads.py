"""Contract tests: Altinn's own payloads, fed to the product as Altinn would send or serve them.

The 14 files are read at test time from ``../shared/real-altinn/`` through
:mod:`tests.support.real_altinn` (never copied here; the tests skip, naming the folder, when it is
absent). ``SOURCES.md`` there says which repository and commit each comes from. Per file, what it is
fed to and what is checked:

Webhook (``shared.pipeline.receive_event`` in process, queue in the real Azurite; settings from the
``env`` fixture with ``ALTINN_ENVIRONMENT=production`` and ``ALTINN_APPS_URL`` unset, so the app host is
``https://{org}.apps.altinn.no`` as the files' sources have it):

- ``events-tests-data-events-1.json`` (Events database rows, ttd/endring-av-navn-v2, type
  ``instance.deleted``, ``time`` without a fraction): each row's ``cloudEvent`` re-serialized as the
  outbound POST body. Type not archived: 200 ``ignored``, nothing queued. Type archived: 202 and queued
  with the right InstanceRef and the event's id/type/source/time. App not configured, or configured for
  tt02 (another app host): 400 ``invalid_source`` problem, nothing queued. The row itself (the stored
  form, no ``specversion``): 400, nothing queued. The file as it is (a JSON array with a BOM): 400.
- ``events-tests-data-events-2.json`` (nav/app and skd/sirius, ``instance.created``/``instance.saved``,
  ``time`` with 6 fractional digits, a string ``data``): with only nav/app configured, per event: queued,
  ignored or (skd) refused, the queue holding exactly the queued ones in order, with no ``data``.
  Its rows are refused like those of -1.
- ``events-tests-data-events-events.json`` (generic events, ``source`` an ``urn:``): 400 ``invalid_source``
  problem and nothing queued, even with its type archived; its ``time`` parses, so the source is the reason.
- ``events-k6-01-app-event.json`` (the inbound model: ``{0}``/``{1}`` placeholders, no ``id``): placeholders
  filled with an instance of ttd/apps-test on the production host. Without ``id``: 400
  ``missing_attribute`` naming ``id``, nothing queued. With an ``id`` added: 200 ``ignored``
  (``app.instance.created`` not archived), or 202 and queued once the type is archived. Placeholders left
  unfilled (with an id): 400 ``invalid_source``.
- ``time`` in all four files: none or 6 fractional digits, each accepted and kept as given.

Archive (``shared.pipeline.handle_message`` in process; the simulator serves the documents through its
storage API with ``sim.load_instance(doc, contents, org="ttd", app=...)``, the apps added to ALTINN_APPS):

- ``applib-instance-task-action-ended.json`` (process ended, one empty ``default`` element): archived and
  confirmed once; the manifest's fields; ``instance.json`` equals storage's document; the data blob.
- ``applib-instance-service-tasks-a2af1cfd.json``, ``applib-instance-contributer-restriction-active.json``,
  ``applib-instance-task-action-ef41.json`` (process not ended): parked at once with a reason naming
  ``process.ended``; nothing confirmed, no manifest, no blob.
- ``applib-blob-service-tasks-fd4c42a4.xml`` (174 bytes) with ``applib-dataelement-service-tasks-fd4c42a4.json``
  (its DataElement, ``size`` 173) in the service-tasks instance, process ended, the app registered with the
  data types of ``applib-applicationmetadata-service-tasks.json`` (``Model`` has ``appLogic.classRef``):
  with 173, deferred (the byte count disagrees), no data blob, no manifest, nothing confirmed (only
  ``instance.json`` is written, before the download); with the size corrected to 174, the archived blob is
  the file byte for byte, read from storage (``sim.calls["app-data"] == 0``), while the app API answers
  something else for that element (the re-serialized model).
- The instance document of the attempt that archived: the service-tasks files (deferred at 173, then archived at
  174: instance.json and the manifest both say 174) and ``applib-instance-task-action-ended.json`` (a 503 on the
  data, then hard-deleted before the retry: the manifest and instance.json both say hard deleted). These found a
  bug (instance.json was written once before the data, freezing a deferred attempt's view); fixed in
  shared/archive.py ``write_instance``.
- ``applib-dataelement-contributer-restriction-fc121812.json`` (a full DataElement: nulls, ``isRead``,
  ``tags``, ``deleteStatus``, ``references``, ``fileScanResult``): parsed as it is, and archived in its own
  instance (contributer-restriction, process ended). Its ``fileScanResult`` (NotApplicable) decides:
  archived and not flagged. The same element with Pending is deferred, with Infected archived and flagged,
  with Clean archived.

Subscriptions (``shared.subscriptions``):

- ``events-k6-01-app-subscription.json`` (the request body, placeholders): ``subscribe`` POSTs a body with
  the same member names (camelCase) as the file, and the simulator's recorded subscription has the values
  sent; the webhook answers the validation event, so the subscription ends validated.
- ``events-tests-data-subscriptions-1.json`` (the repository's internal PascalCase rows, not the API's
  JSON): ``Subscription.from_altinn`` refuses every row with PermanentError ("without an id"), and when
  Altinn's list answers with these rows, ``list_subscriptions`` and ``subscribe`` stop with that error
  and post nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from shared import events, pipeline, subscriptions
from shared.errors import PermanentError
from shared.models import FailureClass, InstanceRef, Outcome, parse_instance
from shared.runtime import get_runtime
from tests.support import real_altinn
from tests.support.flow import queued

pytestmark = pytest.mark.timeout(120)

EVENTS_1 = "events-tests-data-events-1.json"
EVENTS_2 = "events-tests-data-events-2.json"
EVENTS_GENERIC = "events-tests-data-events-events.json"
K6_EVENT = "events-k6-01-app-event.json"
K6_SUBSCRIPTION = "events-k6-01-app-subscription.json"
SUBSCRIPTION_ROWS = "events-tests-data-subscriptions-1.json"
ENDED = "applib-instance-task-action-ended.json"
EF41 = "applib-instance-task-action-ef41.json"
SERVICE_TASKS = "applib-instance-service-tasks-a2af1cfd.json"
CONTRIBUTER = "applib-instance-contributer-restriction-active.json"
SERVICE_TASKS_ELEMENT = "applib-dataelement-service-tasks-fd4c42a4.json"
SERVICE_TASKS_BLOB = "applib-blob-service-tasks-fd4c42a4.xml"
SERVICE_TASKS_METADATA = "applib-applicationmetadata-service-tasks.json"
CONTRIBUTER_ELEMENT = "applib-dataelement-contributer-restriction-fc121812.json"

# Altinn Events' outbound POST (../shared/altinn-contracts.md section 1).
JSON_UTF8 = "application/json; charset=utf-8"
PROBLEM = "application/problem+json"
# The apps the instance documents name, all under org ttd (the simulator's client is ttd's).
DOC_APPS = {ENDED: "task-action", EF41: "task-action", SERVICE_TASKS: "service-tasks", CONTRIBUTER: "contributer-restriction"}
# Set when a test ends a document's process, as storage does at process end.
ENDED_AT = "2024-09-02T05:10:22.1147281Z"
# What the k6 script fills in: the environment's domain, a party id, a person number (test data).
K6_DOMAIN, K6_PARTY, K6_PERSON = "altinn.no", "50660768", "07837399275"


# ---------------------------------------------------------------------------------------------
# Helpers


def outbound_body(event: dict[str, Any]) -> bytes:
    """A CloudEvent as Altinn's outbound delivery POSTs it: structured JSON, the attribute names as
    they are (lower camelCase), UTF-8, no BOM."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def deliver(event: dict[str, Any]) -> pipeline.Reply:
    return pipeline.receive_event(outbound_body(event), JSON_UTF8)


def cloud_events(name: str) -> list[dict[str, Any]]:
    """The ``cloudEvent`` objects of an Events database file (rows that wrap them)."""
    return [row["cloudEvent"] for row in real_altinn.read_json(name)]


def assert_problem(reply: pipeline.Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.content_type == PROBLEM
    assert reply.body["status"] == status and reply.body["code"] == code
    assert reply.body["type"] == f"urn:altinn-mottak:problem:{code}" and reply.body["title"] and reply.body["detail"]


def ref_of(source: str) -> dict[str, str]:
    """The InstanceRef a source ``https://{org}.apps.altinn.no/{org}/{app}/instances/{party}/{guid}`` names."""
    org, app, instances, party, guid = source.split("/", 3)[3].split("/")
    assert instances == "instances"
    return {"org": org, "app": app, "partyId": party, "instanceGuid": guid}


def assert_queued_message(message: dict[str, Any], event: dict[str, Any]) -> None:
    assert message["version"] == 1 and message["via"] == "webhook" and message["queuedAt"]
    assert message["instance"] == ref_of(event["source"])
    # Only the hint travels on: id, type, source and time as given (no data, no subject).
    assert message["event"] == {"id": event["id"], "type": event["type"], "source": event["source"], "time": event["time"]}


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Callable[..., None]:
    """Settings for the production app host ``https://{org}.apps.altinn.no`` (ALTINN_APPS_URL unset)."""

    def configure(apps: str, types: str | None = None, environment: str = "production") -> None:
        monkeypatch.setenv("ALTINN_ENVIRONMENT", environment)
        monkeypatch.delenv("ALTINN_APPS_URL", raising=False)
        monkeypatch.setenv("ALTINN_APPS", apps)
        if types is None:
            monkeypatch.delenv("ALTINN_EVENT_TYPES", raising=False)  # the default: app.instance.process.completed
        else:
            monkeypatch.setenv("ALTINN_EVENT_TYPES", types)

    return configure


def k6_event(*, fill: bool = True, event_id: str | None = None) -> dict[str, Any]:
    """The k6 app event with its placeholders filled in (or not), and an ``id`` only when given."""
    event = real_altinn.read_json(K6_EVENT)
    if fill:
        event["source"] = event["source"].replace("{0}", K6_DOMAIN).replace("{1}", K6_PARTY)
        event["subject"] = event["subject"].replace("{0}", K6_PARTY)
        event["alternativesubject"] = event["alternativesubject"].replace("{0}", K6_PERSON)
    if event_id is not None:
        event["id"] = event_id
    return event


# ---------------------------------------------------------------------------------------------
# 1. CloudEvents through the webhook


def test_events_1_of_a_configured_app_are_ignored_when_their_type_is_not_archived(production, queues) -> None:
    """events-tests-data-events-1.json: instance.deleted of ttd/endring-av-navn-v2 -> 200 ignored, nothing queued."""
    production("ttd/endring-av-navn-v2")
    for event in cloud_events(EVENTS_1):
        reply = deliver(event)
        assert reply.status == 200 and reply.content_type == "application/json"
        assert reply.body == {"status": "ignored", "id": event["id"], "reason": "event type instance.deleted is not archived"}
    assert queued(queues[0]) == []


def test_events_1_are_queued_with_their_instance_when_their_type_is_archived(production, queues) -> None:
    """events-tests-data-events-1.json: with instance.deleted archived -> 202, queued in order with the InstanceRef
    (ttd/endring-av-navn-v2, parties 1337 and 1234324); ``time`` without a fraction kept as given."""
    production("ttd/endring-av-navn-v2", types="instance.deleted")
    sent = cloud_events(EVENTS_1)
    for event in sent:
        reply = deliver(event)
        assert reply.status == 202 and reply.body == {"status": "queued", "id": event["id"]}
    messages = queued(queues[0])
    assert len(messages) == len(sent) == 2
    for message, event in zip(messages, sent, strict=True):
        assert_queued_message(message, event)
    assert [m["instance"]["partyId"] for m in messages] == ["1337", "1234324"]
    assert {m["instance"]["instanceGuid"] for m in messages} == {"6fb3f738-6800-4f29-9f3e-1c66862656cd"}
    assert [m["event"]["time"] for m in messages] == ["2020-10-13T11:50:29Z", "2020-10-13T12:50:29Z"]


@pytest.mark.parametrize(
    ("apps", "environment"),
    [("ttd/apps-test", "production"), ("ttd/endring-av-navn", "production"), ("ttd/endring-av-navn-v2", "tt02")],
    ids=["other-app", "app-name-prefix", "app-on-tt02-host"],
)
def test_events_1_of_an_app_not_configured_on_its_host_are_refused(production, queues, apps, environment) -> None:
    """events-tests-data-events-1.json: its app not configured (or only its name's prefix, or configured for
    tt02, whose app host is ttd.apps.tt02.altinn.no) -> 400 invalid_source problem, nothing queued, even with
    the type archived."""
    production(apps, types="instance.deleted", environment=environment)
    for event in cloud_events(EVENTS_1):
        assert_problem(deliver(event), 400, "invalid_source")
    assert queued(queues[0]) == []


@pytest.mark.parametrize("name", [EVENTS_1, EVENTS_2])
def test_events_database_rows_are_not_cloud_events(production, queues, name) -> None:
    """events-tests-data-events-1.json and -2.json: a whole row (the stored form: sequenceno, the cloudEvent
    inside, no specversion) POSTed as is -> 400 unsupported_specversion, nothing queued."""
    rows = real_altinn.read_json(name)
    apps = ",".join(sorted({"/".join(ref_of(row["source"])[k] for k in ("org", "app")) for row in rows}))
    production(apps, types="instance.deleted,instance.created,instance.saved,instance.restored")
    for row in rows:
        assert_problem(deliver(row), 400, "unsupported_specversion")
    assert queued(queues[0]) == []


@pytest.mark.parametrize("name", [EVENTS_1, EVENTS_2, EVENTS_GENERIC])
def test_event_files_as_they_are_are_refused(production, queues, name) -> None:
    """events-tests-data-events-1.json, -2.json, -events.json: the file's bytes (a JSON array, starting with a
    UTF-8 BOM) -> 400 not_an_object; a batch is not a CloudEvent."""
    raw = real_altinn.read_bytes(name)
    assert raw.startswith(b"\xef\xbb\xbf")
    production("ttd/endring-av-navn-v2,nav/app,skd/sirius", types="instance.deleted,instance.created,instance.saved")
    assert_problem(pipeline.receive_event(raw, JSON_UTF8), 400, "not_an_object")
    assert queued(queues[0]) == []


@pytest.mark.parametrize("types", [None, "instance.saved"], ids=["default-types", "instance.saved-archived"])
def test_events_2_queues_ignores_or_refuses_each_event(production, queues, types) -> None:
    """events-tests-data-events-2.json: only nav/app configured. nav/app events of an archived type -> 202 and
    queued (in order, with the InstanceRef, without the event's ``data``); of another type -> 200 ignored;
    skd/sirius (not configured) -> 400 invalid_source. ``time`` with 6 fractional digits kept as given."""
    production("nav/app", types=types)
    archived = {"instance.saved"} if types else set()
    sent = cloud_events(EVENTS_2)
    assert [e["type"] for e in sent] == ["instance.created", "instance.saved", "instance.saved", "instance.saved", "instance.saved"]
    expected_queue = []
    for event in sent:
        reply = deliver(event)
        if ref_of(event["source"])["org"] == "skd":
            assert_problem(reply, 400, "invalid_source")
        elif event["type"] in archived:
            assert reply.status == 202 and reply.body == {"status": "queued", "id": event["id"]}
            expected_queue.append(event)
        else:
            assert reply.status == 200 and reply.body["status"] == "ignored" and reply.body["id"] == event["id"]
    messages = queued(queues[0])
    assert len(messages) == len(expected_queue) == (3 if types else 0)
    for message, event in zip(messages, expected_queue, strict=True):
        assert_queued_message(message, event)
        assert message["instance"]["org"] == "nav" and message["instance"]["app"] == "app"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", message["event"]["time"])
    assert "data field" not in json.dumps(messages)


def test_events_2_nav_event_of_an_archived_type_goes_on_to_the_archive_as_an_instance_ref(production, queues) -> None:
    """events-tests-data-events-2.json: the queued message of the first instance.saved event parses back
    (shared.models.parse_message) into the InstanceRef its source names, and nothing else."""
    production("nav/app", types="instance.saved")
    event = cloud_events(EVENTS_2)[1]
    assert deliver(event).status == 202
    (message,) = queues[0].peek_messages(max_messages=32)
    parsed = events.parse_message(message.content)
    assert parsed.ref == InstanceRef("nav", "app", "1337", "e31dbb11-2208-4dda-a549-92a0db8c8808") and parsed.via == "webhook"
    assert parsed.event is not None and parsed.event.id == event["id"] and parsed.event.time == "2020-06-16T12:50:29.463221Z"


def test_generic_events_with_an_urn_source_are_refused(production, queues) -> None:
    """events-tests-data-events-events.json: source urn:altinn:systemx -> 400 invalid_source problem, nothing
    queued, even with its type (instance.deleted) archived; the rest of the event parses, time included."""
    production("ttd/apps-test,ttd/endring-av-navn-v2", types="instance.deleted")
    sent = real_altinn.read_json(EVENTS_GENERIC)
    assert {e["source"] for e in sent} == {"urn:altinn:systemx"}
    for event in sent:
        parsed = events.parse_cloud_event(event)
        assert (parsed.id, parsed.type, parsed.time) == (event["id"], "instance.deleted", event["time"])
        assert_problem(deliver(event), 400, "invalid_source")
    assert queued(queues[0]) == []


def test_k6_app_event_without_an_id_is_refused(production, queues) -> None:
    """events-k6-01-app-event.json: placeholders filled with an instance of ttd/apps-test on the production host,
    type app.instance.created archived; the file has no ``id`` -> 400 missing_attribute naming 'id', nothing queued."""
    production("ttd/apps-test", types="app.instance.created")
    event = k6_event()
    assert "id" not in event and event["source"] == f"https://ttd.apps.altinn.no/ttd/apps-test/instances/{K6_PARTY}/573993d4-af79-4c5e-b852-85cd691ee7fd"
    reply = deliver(event)
    assert_problem(reply, 400, "missing_attribute")
    assert "'id'" in reply.body["detail"]
    assert queued(queues[0]) == []


@pytest.mark.parametrize("types", [None, "app.instance.created"], ids=["default-types", "created-archived"])
def test_k6_app_event_with_an_id_is_ignored_or_queued(production, queues, types) -> None:
    """events-k6-01-app-event.json, filled in, with an ``id`` added (what Events adds before delivery):
    app.instance.created not archived -> 200 ignored, nothing queued; archived -> 202 and queued with the
    InstanceRef ttd/apps-test/50660768/573993d4-...; ``time`` with 6 fractional digits kept as given."""
    production("ttd/apps-test", types=types)
    event = k6_event(event_id=str(uuid.uuid4()))
    reply = deliver(event)
    messages = queued(queues[0])
    if types is None:
        assert reply.status == 200 and reply.body["status"] == "ignored"
        assert messages == []
    else:
        assert reply.status == 202 and reply.body == {"status": "queued", "id": event["id"]}
        (message,) = messages
        assert_queued_message(message, event)
        assert message["instance"] == {"org": "ttd", "app": "apps-test", "partyId": K6_PARTY, "instanceGuid": "573993d4-af79-4c5e-b852-85cd691ee7fd"}
        assert message["event"]["time"] == "2022-11-18T09:20:02.931677Z"


def test_k6_app_event_with_its_placeholders_unfilled_is_refused(production, queues) -> None:
    """events-k6-01-app-event.json, placeholders left as they are (host ttd.apps.{0}, party {1}), an id added
    -> 400 invalid_source problem, nothing queued."""
    production("ttd/apps-test", types="app.instance.created")
    event = k6_event(fill=False, event_id=str(uuid.uuid4()))
    assert "{0}" in event["source"] and "{1}" in event["source"]
    assert_problem(deliver(event), 400, "invalid_source")
    assert queued(queues[0]) == []


def test_time_formats_of_the_event_files_are_accepted_as_given() -> None:
    """events-tests-data-events-1.json, -2.json, -events.json, events-k6-01-app-event.json: every ``time`` has no
    fraction or 6 fractional digits, UTC ``Z``; each parses (shared.events) and is kept exactly as given."""
    times = [e["time"] for e in cloud_events(EVENTS_1) + cloud_events(EVENTS_2) + real_altinn.read_json(EVENTS_GENERIC)]
    times.append(real_altinn.read_json(K6_EVENT)["time"])
    assert len(times) == 10
    digits = {len(m.group(1) or "") for t in times if (m := re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d+))?Z", t))}
    assert digits == {0, 6} and all(re.fullmatch(r".*(?::\d\d|\.\d{6})Z", t) for t in times)
    for t in times:
        event = events.parse_cloud_event({"specversion": "1.0", "id": "x", "type": "app.instance.process.completed", "source": "s", "time": t})
        assert event.time == t


# ---------------------------------------------------------------------------------------------
# 2. Instance documents through the archive


@pytest.fixture
def doc_apps(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """ALTINN_APPS with the apps the instance documents name (under org ttd)."""
    monkeypatch.setenv("ALTINN_APPS", ",".join([env["ALTINN_APPS"], *sorted({f"ttd/{a}" for a in DOC_APPS.values()})]))


def with_process_ended(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as storage has it once the process has ended (no current task, ended, archived)."""
    doc = copy.deepcopy(doc)
    process = {k: v for k, v in doc["process"].items() if k != "currentTask"}
    process.update(ended=ENDED_AT, endEvent="EndEvent_1")
    doc["process"] = process
    doc.setdefault("status", {}).update(isArchived=True, archived=ENDED_AT)
    return doc


def archive_message(inst: Any) -> str:
    ref = InstanceRef.parse(inst.org, inst.app, inst.id)
    return json.dumps(events.queue_message(None, ref, via="webhook"))


def blob_names(container: Any, inst: Any) -> list[str]:
    if not container.exists():
        return []
    prefix = f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"
    return sorted(b.name[len(prefix) :] for b in container.list_blobs(name_starts_with=prefix))


def read_blob(container: Any, inst: Any, name: str) -> tuple[bytes, Any]:
    blob = container.get_blob_client(f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/{name}")
    return blob.download_blob().readall(), blob.get_blob_properties()


def altinn_get(url: str, **headers: str) -> requests.Response:
    """A GET to the simulator with the product's own Altinn token (the test reads what Altinn serves)."""
    session = requests.Session()
    session.trust_env = False
    return session.get(url, headers={"Authorization": f"Bearer {get_runtime().altinn.token()}", **headers}, timeout=10)


def confirmed_ids(sim: Any) -> list[str]:
    return [instance_id for instance_id, _ in sim.confirmations]


def test_task_action_ended_is_archived_and_confirmed(sim, doc_apps, container, queues) -> None:
    """applib-instance-task-action-ended.json (process ended, one empty ``default`` element), served by storage as
    ttd/task-action: archived and confirmed once; manifest fields; instance.json equals storage's document."""
    doc = real_altinn.read_json(ENDED)
    inst = sim.load_instance(doc, org="ttd", app="task-action")
    element = doc["data"][0]
    served = altinn_get(inst.platform_url)
    assert served.status_code == 200
    storage_doc = served.json()
    assert storage_doc["process"] == doc["process"] and storage_doc["status"] == doc["status"] and storage_doc["id"] == doc["id"]

    result = pipeline.handle_message(archive_message(inst))

    assert result.outcome is Outcome.ARCHIVED and result.elements == 1 and result.bytes == 0
    assert confirmed_ids(sim) == [doc["id"]]
    assert blob_names(container, inst) == sorted(["instance.json", "manifest.json", "confirmed.json", "handoff.json", f"data/{element['id']}"])
    archived_doc, _ = read_blob(container, inst, "instance.json")
    assert json.loads(archived_doc) == storage_doc
    manifest_bytes, props = read_blob(container, inst, "manifest.json")
    manifest = json.loads(manifest_bytes)
    assert read_blob(container, inst, "confirmed.json")[1].metadata.get("confirmedAt")
    prefix = f"ttd/task-action/1337/{inst.instance_guid}/"
    assert inst.instance_guid == "b1135209-628e-4a6e-9efd-e4282068ef41"
    fields = ("org", "app", "partyId", "instanceGuid", "instanceId", "eventId", "processEnded", "hardDeleted", "totalBytes", "infected")
    assert {k: manifest[k] for k in fields} == {
        "org": "ttd",
        "app": "task-action",
        "partyId": "1337",
        "instanceGuid": inst.instance_guid,
        "instanceId": doc["id"],
        "eventId": None,
        "processEnded": doc["process"]["ended"],
        "hardDeleted": False,
        "totalBytes": 0,
        "infected": [],
    }
    assert manifest["archivedAt"] and manifest["instanceBlob"] == prefix + "instance.json"
    assert manifest["dataElements"] == [
        {
            "dataElementId": element["id"],
            "dataType": "default",
            "contentType": "application/xml",
            "filename": None,
            "size": 0,
            "sha256": hashlib.sha256(b"").hexdigest(),
            "blob": f"{prefix}data/{element['id']}",
            "fileScanResult": "NotApplicable",
            "infected": False,
        }
    ]
    data, data_props = read_blob(container, inst, f"data/{element['id']}")
    assert data == b"" and data_props.content_settings.content_type == "application/xml"
    assert data_props.metadata["sha256"] == hashlib.sha256(b"").hexdigest() and data_props.metadata["dataType"] == "default"
    assert sim.calls["app-instance"] == 0 and sim.calls["app-data"] == 0
    assert queued(queues[1]) == []
    # Once more (a duplicate delivery): nothing new, not confirmed again.
    assert pipeline.handle_message(archive_message(inst)).outcome is Outcome.ALREADY_ARCHIVED
    assert confirmed_ids(sim) == [doc["id"]]


@pytest.mark.parametrize("name", [SERVICE_TASKS, CONTRIBUTER, EF41])
def test_instances_whose_process_has_not_ended_are_parked(sim, doc_apps, container, queues, name) -> None:
    """applib-instance-service-tasks-a2af1cfd.json (with its stored blob), applib-instance-contributer-restriction-active.json
    (no data at all), applib-instance-task-action-ef41.json (process at Task_1): refused, parked at once with a
    reason naming process.ended; nothing confirmed, no manifest, nothing written."""
    doc = real_altinn.read_json(name)
    assert "ended" not in doc["process"] and doc["process"]["currentTask"]["elementId"] == "Task_1"
    contents = {SERVICE_TASKS: {"fd4c42a4-a6a0-4aec-b8e9-9f5d34c445ca": real_altinn.read_bytes(SERVICE_TASKS_BLOB)}}.get(name)
    inst = sim.load_instance(doc, contents, org="ttd", app=DOC_APPS[name])

    result = pipeline.handle_message(archive_message(inst))

    assert result.outcome is Outcome.PARKED and result.failure_class is FailureClass.PERMANENT
    assert "process.ended" in (result.reason or "")
    assert sim.confirmations == [] and blob_names(container, inst) == []
    (parked,) = queued(queues[1])
    assert "process.ended" in parked["failure"]["reason"] and parked["failure"]["class"] == "permanent" and parked["failure"]["permanent"] is True
    assert parked["instance"] == {"org": "ttd", "app": DOC_APPS[name], "partyId": inst.party_id, "instanceGuid": inst.instance_guid}
    assert queued(queues[0]) == []
    assert sim.calls["data"] == 0 and sim.calls["complete"] == 0


def service_tasks_ended(sim: Any, *, size: int | None = None) -> tuple[Any, dict[str, Any], bytes]:
    """The service-tasks instance with its full DataElement (size as in the file, or ``size``), its stored blob,
    the process ended, served for the app registered with the data types of its applicationmetadata.json."""
    metadata = real_altinn.read_json(SERVICE_TASKS_METADATA)
    sim.add_app("ttd", "service-tasks", data_types=metadata["dataTypes"])
    assert sim.app("ttd", "service-tasks").is_form("Model")
    element = real_altinn.read_json(SERVICE_TASKS_ELEMENT)
    blob = real_altinn.read_bytes(SERVICE_TASKS_BLOB)
    doc = with_process_ended(real_altinn.read_json(SERVICE_TASKS))
    assert doc["data"][0]["id"] == element["id"] and element["instanceGuid"] == doc["id"].split("/")[1]
    if size is not None:
        element["size"] = size
    doc["data"] = [element]
    return sim.load_instance(doc, {element["id"]: blob}, org="ttd", app="service-tasks"), element, blob


def test_service_tasks_blob_with_its_recorded_size_173_is_deferred(sim, doc_apps, container, queues) -> None:
    """applib-blob-service-tasks-fd4c42a4.xml (174 bytes) with applib-dataelement-service-tasks-fd4c42a4.json
    (size 173), process ended: deferred (the byte count disagrees: Content-Length 174, the instance says 173);
    no data blob, no manifest, nothing confirmed, nothing parked."""
    inst, element, blob = service_tasks_ended(sim)
    assert element["size"] == 173 and len(blob) == 174

    result = pipeline.handle_message(archive_message(inst))

    assert result.outcome is Outcome.DEFERRED and result.failure_class is FailureClass.TRANSIENT
    assert "174" in (result.reason or "") and "173" in (result.reason or "")
    names = blob_names(container, inst)
    assert "manifest.json" not in names and not [n for n in names if n.startswith("data/")]
    assert sim.confirmations == [] and sim.calls["complete"] == 0
    assert queued(queues[1]) == []


def test_service_tasks_blob_is_archived_byte_for_byte_from_storage_not_the_app_api(sim, doc_apps, container, queues) -> None:
    """applib-blob-service-tasks-fd4c42a4.xml with applib-dataelement-service-tasks-fd4c42a4.json, size corrected to
    174, process ended, app metadata from applib-applicationmetadata-service-tasks.json (Model has classRef): the
    archived blob is the file byte for byte, from storage (no app-data call), while the app API answers the
    re-serialized model for that element, not the stored bytes."""
    inst, element, blob = service_tasks_ended(sim, size=174)

    result = pipeline.handle_message(archive_message(inst))

    assert result.outcome is Outcome.ARCHIVED and result.bytes == len(blob)
    assert sim.calls["app-data"] == 0 and sim.calls["app-instance"] == 0 and sim.calls["data"] == 1
    assert confirmed_ids(sim) == [inst.id]
    data, props = read_blob(container, inst, f"data/{element['id']}")
    assert data == blob
    assert props.content_settings.content_type == "application/xml" and props.metadata["dataType"] == "Model"
    manifest = json.loads(read_blob(container, inst, "manifest.json")[0])
    (entry,) = manifest["dataElements"]
    assert entry["size"] == 174 and entry["sha256"] == hashlib.sha256(blob).hexdigest() and entry["dataType"] == "Model"
    # The app API for that element: the model deserialized and re-serialized, whatever the Accept.
    as_json = altinn_get(inst.app_data_url(element["id"]))
    as_xml = altinn_get(inst.app_data_url(element["id"]), Accept="application/xml")
    assert as_json.status_code == 200 and as_xml.status_code == 200
    assert as_json.json() == {"Navn": "Testnavn"}
    assert as_json.content != blob and as_xml.content != blob


def test_service_tasks_archive_after_a_deferred_attempt_keeps_storage_document_of_the_attempt_that_archived(sim, doc_apps, container) -> None:
    """applib-blob-service-tasks-fd4c42a4.xml with applib-dataelement-service-tasks-fd4c42a4.json: the first attempt is
    deferred (size 173), then storage's size is corrected to the blob's 174 and the retry archives: instance.json
    must be the document the archive was built from, consistent with the manifest."""
    inst, element, blob = service_tasks_ended(sim)
    assert pipeline.handle_message(archive_message(inst)).outcome is Outcome.DEFERRED
    inst.element(element["id"])["size"] = len(blob)
    storage_doc = altinn_get(inst.platform_url).json()

    assert pipeline.handle_message(archive_message(inst)).outcome is Outcome.ARCHIVED

    manifest = json.loads(read_blob(container, inst, "manifest.json")[0])
    archived_doc = json.loads(read_blob(container, inst, "instance.json")[0])
    assert read_blob(container, inst, f"data/{element['id']}")[0] == blob and manifest["dataElements"][0]["size"] == 174
    assert archived_doc["data"][0]["size"] == manifest["dataElements"][0]["size"]
    assert archived_doc == storage_doc


def test_task_action_ended_hard_deleted_between_attempts_keeps_instance_json_and_manifest_consistent(sim, doc_apps, container) -> None:
    """applib-instance-task-action-ended.json: the first attempt fails on the data download (503, transient), the
    submitter then hard-deletes the instance (storage keeps it for the org), the retry archives and confirms:
    instance.json must agree with the manifest and be storage's document of the attempt that archived."""
    doc = real_altinn.read_json(ENDED)
    inst = sim.load_instance(doc, org="ttd", app="task-action")
    sim.add_fault("data", status=503, times=3)
    assert pipeline.handle_message(archive_message(inst)).outcome is Outcome.DEFERRED
    inst.hard_deleted = True
    storage_doc = altinn_get(inst.platform_url).json()
    assert storage_doc["status"]["isHardDeleted"] is True

    assert pipeline.handle_message(archive_message(inst)).outcome is Outcome.ARCHIVED

    assert confirmed_ids(sim) == [doc["id"]]
    manifest = json.loads(read_blob(container, inst, "manifest.json")[0])
    archived_doc = json.loads(read_blob(container, inst, "instance.json")[0])
    assert manifest["hardDeleted"] is True
    assert archived_doc["status"]["isHardDeleted"] is manifest["hardDeleted"]
    assert archived_doc == storage_doc


def test_full_data_element_fc121812_parses_as_it_is() -> None:
    """applib-dataelement-contributer-restriction-fc121812.json, nulls and all, as the one element of its instance
    (applib-instance-contributer-restriction-active.json, process ended): shared.models.parse_instance reads it."""
    element = real_altinn.read_json(CONTRIBUTER_ELEMENT)
    assert {"isRead", "tags", "deleteStatus", "references", "fileScanResult", "selfLinks", "contentHash"} <= set(element)
    doc = with_process_ended(real_altinn.read_json(CONTRIBUTER))
    doc["data"] = [element]
    ref = InstanceRef.parse("tdd", "contributer-restriction", doc["id"])
    parsed = parse_instance(doc, ref)
    (got,) = parsed.data
    assert (got.id, got.data_type, got.content_type, got.filename, got.size) == (element["id"], "default", "application/xml", None, 0)
    assert got.file_scan_result.value == element["fileScanResult"] == "NotApplicable" and not got.infected
    assert parsed.process_ended == ENDED_AT and parsed.pending == []


@pytest.mark.parametrize("scan", [None, "Pending", "Clean", "Infected"], ids=["as-in-file", "Pending", "Clean", "Infected"])
def test_full_data_element_fc121812_is_archived_as_its_file_scan_result_decides(sim, doc_apps, container, queues, scan) -> None:
    """applib-dataelement-contributer-restriction-fc121812.json in its instance (contributer-restriction, process
    ended), its fileScanResult as in the file (NotApplicable) or set to another value: Pending -> deferred, nothing
    written or confirmed; Infected -> archived, confirmed and flagged; NotApplicable/Clean -> archived, not flagged."""
    element = real_altinn.read_json(CONTRIBUTER_ELEMENT)
    if scan is not None:
        element["fileScanResult"] = scan
    result_name = element["fileScanResult"]
    doc = with_process_ended(real_altinn.read_json(CONTRIBUTER))
    doc["data"] = [element]
    inst = sim.load_instance(doc, org="ttd", app="contributer-restriction")

    result = pipeline.handle_message(archive_message(inst))

    if result_name == "Pending":
        assert result.outcome is Outcome.DEFERRED and "scan" in (result.reason or "")
        assert blob_names(container, inst) == [] and sim.confirmations == [] and sim.calls["data"] == 0
        assert queued(queues[1]) == []
        return
    assert result.outcome is Outcome.ARCHIVED and confirmed_ids(sim) == [inst.id]
    infected = result_name == "Infected"
    manifest = json.loads(read_blob(container, inst, "manifest.json")[0])
    (entry,) = manifest["dataElements"]
    assert entry["dataElementId"] == element["id"] and entry["fileScanResult"] == result_name and entry["infected"] is infected
    assert entry["size"] == 0 and entry["filename"] is None and entry["dataType"] == "default"
    assert manifest["infected"] == ([element["id"]] if infected else [])
    data, props = read_blob(container, inst, f"data/{element['id']}")
    assert data == b"" and props.metadata["fileScanResult"] == result_name
    assert props.metadata.get("infected") == ("true" if infected else None)


# ---------------------------------------------------------------------------------------------
# 3. Subscription shapes


class _Webhook(BaseHTTPRequestHandler):
    """Our webhook in process (shared.pipeline.receive_event), for Altinn's validation event."""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = pipeline.receive_event(body, self.headers.get("Content-Type"))
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def webhook(env: dict[str, str]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/events?code=contract-test-key"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


CAMEL_CASE = re.compile(r"[a-z]+(?:[A-Z][a-z]*)*")
API_MEMBERS = {"endPoint", "sourceFilter", "resourceFilter", "subjectFilter", "alternativeSubjectFilter", "typeFilter", "includeSubunits"}


def test_subscribe_posts_the_member_names_of_the_k6_subscription_body(sim, env, webhook) -> None:
    """events-k6-01-app-subscription.json (endPoint, sourceFilter; placeholders): shared.subscriptions.subscribe
    POSTs JSON with the same member names, camelCase (plus typeFilter, an API member), and the simulator's
    recorded subscription holds the values sent (app host: the simulator's, as the file's values are placeholders)."""
    template = real_altinn.read_json(K6_SUBSCRIPTION)
    assert set(template) == {"endPoint", "sourceFilter"}
    rt = get_runtime()
    posted: list[requests.PreparedRequest] = []

    def record(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if resp.request.method == "POST" and resp.request.url.endswith("/events/api/v1/subscriptions"):
            posted.append(resp.request)

    rt.altinn.session.hooks["response"].append(record)
    try:
        results = subscriptions.subscribe(rt, [("ttd", "apps-test")], webhook, ["app.instance.process.completed"], wait=20)
    finally:
        rt.altinn.session.hooks["response"].remove(record)

    (request,) = posted
    assert request.headers["Content-Type"].startswith("application/json")
    body = json.loads(request.body)
    assert set(template) <= set(body) <= API_MEMBERS and all(CAMEL_CASE.fullmatch(k) for k in body)
    source = f"{sim.apps_url}/ttd/apps-test"
    assert body == {"endPoint": webhook, "sourceFilter": source, "typeFilter": "app.instance.process.completed"}
    (result,) = results
    recorded = sim.subscriptions[result.subscription.id]
    assert {k: recorded[k] for k in template} == {k: body[k] for k in template}
    assert recorded["typeFilter"] == body["typeFilter"] and recorded["resourceFilter"] == "urn:altinn:resource:app_ttd_apps-test"
    # The validation event reached our webhook (200 validated): the subscription delivers.
    assert result.validated and recorded["validated"] is True and not result.existed
    assert result.subscription.app == "ttd/apps-test" and result.subscription.source_filter == source


def test_internal_subscription_rows_are_not_api_subscriptions(env) -> None:
    """events-tests-data-subscriptions-1.json (PascalCase: Id, Sourcefilter, EndPoint, ...): Subscription.from_altinn
    refuses every row with PermanentError (no ``id``), never a Subscription with empty fields. The k6 request body
    (events-k6-01-app-subscription.json) is refused the same way."""
    from shared.config import get_settings

    settings = get_settings()
    rows = real_altinn.read_json(SUBSCRIPTION_ROWS)
    assert len(rows) == 12 and all("Id" in row and "id" not in row for row in rows)
    for row in [*rows, real_altinn.read_json(K6_SUBSCRIPTION)]:
        with pytest.raises(PermanentError, match="without an id"):
            subscriptions.Subscription.from_altinn(settings, row)


def test_internal_subscription_rows_in_altinn_list_stop_subscribe_before_posting(sim, env, webhook) -> None:
    """events-tests-data-subscriptions-1.json served as Altinn's list answer ({"count", "subscriptions": rows}):
    list_subscriptions raises PermanentError, and subscribe stops with it before posting anything."""
    rows = real_altinn.read_json(SUBSCRIPTION_ROWS)
    listing = json.dumps({"count": len(rows), "subscriptions": rows})
    rt = get_runtime()
    sim.add_fault("subscriptions", status=200, body=listing, match="/events/api/v1/subscriptions", times=2)
    with pytest.raises(PermanentError, match="without an id"):
        subscriptions.list_subscriptions(rt)
    with pytest.raises(PermanentError, match="without an id"):
        subscriptions.subscribe(rt, [("ttd", "apps-test")], webhook, ["app.instance.process.completed"], wait=0)
    assert sim.subscriptions == {}
    assert not [r for r in sim.requests if r["method"] == "POST" and r["endpoint"] == "subscriptions"]
