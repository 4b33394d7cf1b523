"""The local host runner (devtools.localhost) against a real Azurite, over real sockets.

Small FunctionApps defined here stand in for the real one, so that each host behaviour (keys,
routes, queue encoding, dequeue count, poison queue, batching and polling, queue creation,
functionTimeout, timers and their past-due status) is tested on its own.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
import pytest
import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContainerClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devtools.azurite import Azurite
from devtools.localhost import (
    BACKOFF_RANDOMIZATION,
    POLL_MINIMUM,
    HostSettings,
    LocalHost,
    _Backoff,
    _Schedule,
    default_host_id,
    parse_timespan,
    processor_count,
)
from tests.support.flow import read_until

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "lh-events"
POISON = f"{QUEUE}-poison"
SIDE_QUEUE = "lh-side"
BATCH_QUEUE = "lh-batch"
POLL_QUEUE = "lh-poll"
TIMEOUT_QUEUE = "lh-timeout"
TRIGGER_QUEUES = (QUEUE, SIDE_QUEUE, BATCH_QUEUE, POLL_QUEUE, TIMEOUT_QUEUE)  # created by the `clean` fixture
MAX_DEQUEUE = 3
NEVER = "0001-01-01T00:00:00+00:00"

# -- the test apps --------------------------------------------------------------------------

_lock = threading.Lock()
deliveries: list[tuple[str, int]] = []  # (body, dequeue_count) per invocation of `consume`, `side`, `absent`
ticks: list[bool] = []  # past_due per invocation of `tick`, `side_tick`
_storage = {"connection_string": ""}

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="events", methods=["POST"])
def receive(req: func.HttpRequest) -> func.HttpResponse:
    """Queues the body the way the real receive does: azure-storage-queue, base64."""
    client = QueueClient.from_connection_string(
        _storage["connection_string"],
        QUEUE,
        message_encode_policy=TextBase64EncodePolicy(),
        connection_timeout=1,
        read_timeout=1,
        retry_total=0,
    )
    client.send_message(req.get_body().decode("utf-8"))
    return func.HttpResponse(json.dumps({"queued": True}), status_code=202, mimetype="application/json")


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")


@app.route(route="ping", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"pong {req.params.get('q', '')}")


@app.queue_trigger(arg_name="msg", queue_name=QUEUE, connection="AzureWebJobsStorage")
def consume(msg: func.QueueMessage) -> None:
    """Records the body; fails while the dequeue count is at most the body's "fail" field."""
    body = msg.get_body().decode("utf-8")
    with _lock:
        deliveries.append((body, msg.dequeue_count))
    fail = json.loads(body).get("fail", 0) if body.startswith("{") else 0
    if msg.dequeue_count <= fail:
        raise ValueError(f"planned failure {msg.dequeue_count}/{fail}")


@app.timer_trigger(schedule="%LH_TEST_SCHEDULE%", arg_name="timer", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    with _lock:
        ticks.append(timer.past_due)


# A second app, run by short-lived hosts in single tests.
side_app = func.FunctionApp()


@side_app.queue_trigger(arg_name="msg", queue_name=SIDE_QUEUE, connection="AzureWebJobsStorage")
def side(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode("utf-8")
    with _lock:
        deliveries.append((body, msg.dequeue_count))
    if msg.dequeue_count == 1 and body == "fail-once":
        raise ValueError("first delivery fails")
    if body.startswith("slow:"):
        time.sleep(float(body.removeprefix("slow:")))


@side_app.timer_trigger(schedule="%LH_TEST_SCHEDULE%", arg_name="timer", run_on_startup=False)
def side_tick(timer: func.TimerRequest) -> None:
    with _lock:
        ticks.append(timer.past_due)


# Batching: counts the invocations running at once. The first two return at once, the others
# wait for `batch_release`.
batch_app = func.FunctionApp()
batch_state = {"started": 0, "running": 0, "max": 0}
batch_release = threading.Event()


@batch_app.queue_trigger(arg_name="msg", queue_name=BATCH_QUEUE, connection="AzureWebJobsStorage")
def batched(msg: func.QueueMessage) -> None:
    with _lock:
        batch_state["started"] += 1
        batch_state["running"] += 1
        batch_state["max"] = max(batch_state["max"], batch_state["running"])
        number = batch_state["started"]
    try:
        if number > 2:
            batch_release.wait(30)
    finally:
        with _lock:
            batch_state["running"] -= 1


poll_app = func.FunctionApp()


@poll_app.queue_trigger(arg_name="msg", queue_name=POLL_QUEUE, connection="AzureWebJobsStorage")
def polled(msg: func.QueueMessage) -> None:
    pass


# A queue that does not exist when the host starts; every delivery fails.
absent_app = func.FunctionApp()


@absent_app.queue_trigger(arg_name="msg", queue_name="%LH_ABSENT_QUEUE%", connection="AzureWebJobsStorage")
def absent(msg: func.QueueMessage) -> None:
    with _lock:
        deliveries.append((msg.get_body().decode("utf-8"), msg.dequeue_count))
    raise ValueError("always fails")


# functionTimeout: the first delivery of a message and every HTTP call hang until `hang_release`.
timeout_app = func.FunctionApp()
hang_release = threading.Event()
hang_deliveries: list[tuple[int, float]] = []  # (dequeue_count, time.monotonic()) per invocation


@timeout_app.queue_trigger(arg_name="msg", queue_name=TIMEOUT_QUEUE, connection="AzureWebJobsStorage")
def hang_once(msg: func.QueueMessage) -> None:
    with _lock:
        hang_deliveries.append((msg.dequeue_count, time.monotonic()))
    if msg.dequeue_count == 1:
        hang_release.wait(30)


@timeout_app.route(route="hang", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def hang(req: func.HttpRequest) -> func.HttpResponse:
    hang_release.wait(30)
    return func.HttpResponse("too late")


# Timers with schedule status: every minute (so useMonitor stays on), and every 2 s whose first run
# outlasts two occurrences.
monitored_app = func.FunctionApp()
monitored_runs: list[tuple[bool, dict[str, Any]]] = []  # (past_due, schedule_status)
late_app = func.FunctionApp()
late_runs: list[tuple[float, bool]] = []  # (time.monotonic(), past_due)


@monitored_app.timer_trigger(schedule="0 * * * * *", arg_name="timer")
def monitored(timer: func.TimerRequest) -> None:
    with _lock:
        monitored_runs.append((timer.past_due, dict(timer.schedule_status or {})))


@late_app.timer_trigger(schedule="*/2 * * * * *", arg_name="timer")
def late(timer: func.TimerRequest) -> None:
    with _lock:
        late_runs.append((time.monotonic(), timer.past_due))
        first = len(late_runs) == 1
    if first:
        time.sleep(3.2)


# -- fixtures -------------------------------------------------------------------------------


def write_host_json(path: Path, *, function_timeout: str | None = None, **queues: Any) -> Path:
    settings = {"maxDequeueCount": MAX_DEQUEUE, "visibilityTimeout": "00:00:00", "batchSize": 4, "maxPollingInterval": "00:00:01", "messageEncoding": "base64"}
    settings.update(queues)
    doc: dict[str, Any] = {"version": "2.0", "extensions": {"queues": settings, "http": {"routePrefix": "api"}}}
    if function_timeout is not None:
        doc["functionTimeout"] = function_timeout
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def storage() -> Iterator[Azurite]:
    with Azurite() as server:
        _storage["connection_string"] = server.connection_string
        yield server


@pytest.fixture(scope="module")
def host(storage: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    host_json = write_host_json(tmp_path_factory.mktemp("lh") / "host.json")
    with LocalHost(app, connection_string=storage.connection_string, host_json=host_json, storage_timeout=3) as runner:
        yield runner


def raw_queue(storage: Azurite, name: str) -> QueueClient:
    """A client that sends and receives the stored text as is (no encoding)."""
    return QueueClient.from_connection_string(storage.connection_string, name)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest, storage: Azurite) -> Iterator[None]:
    """The trigger queues exist and are empty (the host does not create them; in Azure, infra does)."""
    if "host" in request.fixturenames:
        request.getfixturevalue("host").wait_idle(timeout=5)
    for name in TRIGGER_QUEUES:
        with contextlib.suppress(ResourceExistsError):
            raw_queue(storage, name).create_queue()
    for name in (*TRIGGER_QUEUES, POISON, f"{SIDE_QUEUE}-poison"):
        with contextlib.suppress(ResourceNotFoundError):
            raw_queue(storage, name).clear_messages()
    if "host" in request.fixturenames:
        request.getfixturevalue("host").reset_stats()
    with _lock:
        for recorded in (deliveries, ticks, hang_deliveries, monitored_runs, late_runs):
            recorded.clear()
        batch_state.update(started=0, running=0, max=0)
    yield


def poison_bodies(storage: Azurite, name: str = POISON) -> list[str]:
    return [m.content for m in raw_queue(storage, name).peek_messages(max_messages=32)]


def event(fail: int = 0) -> str:
    return json.dumps({"id": str(uuid.uuid4()), "text": "blåbærsyltetøy", "fail": fail})


def wait_for(condition: Callable[[], Any], timeout: float, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.02)


def observed_host(record: Callable[[requests.Response], None]) -> type[LocalHost]:
    """A LocalHost whose requests to storage are passed to ``record`` (from its first one)."""

    class Observed(LocalHost):
        def _open_storage(self) -> None:
            super()._open_storage()
            assert self._session is not None
            self._session.hooks["response"].append(lambda response, *args, **kwargs: record(response))

    return Observed


# -- HTTP -----------------------------------------------------------------------------------


def test_function_key_is_required(host: LocalHost) -> None:
    url = f"{host.url}/api/events"
    assert requests.post(url, data=event()).status_code == 401
    assert requests.post(url, params={"code": "wrong"}, data=event()).status_code == 401
    assert requests.post(url, headers={"x-functions-key": "wrong"}, data=event()).status_code == 401
    assert requests.post(host.function_url("receive"), data=event()).status_code == 202
    ok = requests.post(url, headers={"x-functions-key": host.function_key}, data=event())
    assert ok.status_code == 202
    assert ok.json() == {"queued": True}
    assert ok.headers["content-type"] == "application/json"
    assert host.wait_idle(timeout=10)
    assert len(deliveries) == 2
    assert host.stats["receive"]["invocations"] == 2


def test_wrong_method_or_route_is_404(host: LocalHost) -> None:
    key = {"code": host.function_key}
    assert requests.get(f"{host.url}/api/events", params=key).status_code == 404
    assert requests.post(f"{host.url}/api/nothing", params=key).status_code == 404
    assert requests.post(f"{host.url}/events", params=key).status_code == 404
    assert requests.get(f"{host.url}/api/ping/more").status_code == 404
    assert host.stats["receive"]["invocations"] == 0


def test_exception_is_500_with_empty_body(host: LocalHost) -> None:
    resp = requests.get(host.function_url("boom"))
    assert resp.status_code == 500
    assert resp.content == b""
    assert host.stats["boom"]["failures"] == 1
    assert host.stats["boom"]["exceptions"] == [("RuntimeError", "boom")]


def test_anonymous_route_case_insensitive(host: LocalHost) -> None:
    assert host.function_url("ping") == f"{host.url}/api/ping"  # no key for anonymous
    resp = requests.get(f"{host.url}/api/Ping/", params={"q": "x y"})
    assert resp.status_code == 200
    assert resp.text == "pong x y"
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"


# -- what this host refuses -----------------------------------------------------------------


def _app_using(feature: str) -> func.FunctionApp:
    refused = func.FunctionApp()
    if feature == "route template":

        @refused.route(route="items/{id}")
        def item(req: func.HttpRequest) -> None: ...

    elif feature == "output binding":

        @refused.route(route="enqueue")
        @refused.queue_output(arg_name="out", queue_name="q", connection="AzureWebJobsStorage")
        def enqueue(req: func.HttpRequest, out: func.Out[str]) -> None: ...

    elif feature == "async def":

        @refused.route(route="later")
        async def later(req: func.HttpRequest) -> None: ...

    elif feature == "func.Context":

        @refused.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")
        def with_context(msg: func.QueueMessage, context: func.Context) -> None: ...

    return refused


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        ("route template", "route template 'items/{id}' is not supported"),
        ("output binding", "binding 'out' (queue, an output binding) is not supported"),
        ("async def", "an `async def` function is not supported"),
        ("func.Context", "func.Context injection (parameter 'context') is not supported"),
    ],
)
def test_features_this_app_does_not_use_are_refused(feature: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        LocalHost(_app_using(feature), connection_string="UseDevelopmentStorage=true", host_json=None)
    assert "LocalHost plays the Functions host for this app only" in str(refused.value)


# -- queue trigger --------------------------------------------------------------------------


def test_message_content_is_base64_decoded(storage: Azurite, host: LocalHost) -> None:
    body = event()
    raw_queue(storage, QUEUE).send_message(b64(body))
    assert host.wait_idle(timeout=10)
    assert deliveries == [(body, 1)]
    assert host.stats["consume"]["successes"] == 1


def test_message_not_in_base64_goes_to_poison_without_invoking(storage: Azurite, host: LocalHost) -> None:
    raw_queue(storage, QUEUE).send_message('{"not": "base64"}')
    assert host.wait_idle(timeout=10)
    assert deliveries == []
    assert host.stats["consume"]["poisoned"] == 1
    assert poison_bodies(storage) == ['{"not": "base64"}']


def test_redelivery_increments_dequeue_count_until_success(storage: Azurite, host: LocalHost) -> None:
    body = event(fail=2)
    raw_queue(storage, QUEUE).send_message(b64(body))
    assert host.wait_idle(timeout=10)
    assert deliveries == [(body, 1), (body, 2), (body, 3)]
    stats = host.stats["consume"]
    assert (stats["invocations"], stats["failures"], stats["successes"], stats["poisoned"]) == (3, 2, 1, 0)
    assert stats["exceptions"] == [("ValueError", "planned failure 1/2"), ("ValueError", "planned failure 2/2")]
    assert poison_bodies(storage) == []


def test_poison_after_max_dequeue_count(storage: Azurite, host: LocalHost) -> None:
    body = event(fail=99)
    raw_queue(storage, QUEUE).send_message(b64(body))
    assert host.wait_idle(timeout=10)
    assert [count for _, count in deliveries] == [1, 2, 3]
    stats = host.stats["consume"]
    assert (stats["invocations"], stats["failures"], stats["poisoned"]) == (MAX_DEQUEUE, MAX_DEQUEUE, 1)
    assert poison_bodies(storage) == [b64(body)]  # the original content, still base64
    assert raw_queue(storage, QUEUE).get_queue_properties().approximate_message_count == 0


def test_too_high_dequeue_count_goes_to_poison_without_invoking(storage: Azurite, tmp_path: Path) -> None:
    """A message held by a host that died MAX_DEQUEUE times is parked at once on the next delivery."""
    queue = raw_queue(storage, SIDE_QUEUE)
    queue.send_message(b64("held"))
    for _ in range(MAX_DEQUEUE):  # receive and "die": the lease is dropped
        message = queue.receive_message(visibility_timeout=30)
        assert message is not None
        queue.update_message(message, pop_receipt=message.pop_receipt, visibility_timeout=0)
    with LocalHost(side_app, connection_string=storage.connection_string, host_json=write_host_json(tmp_path / "host.json")) as side_host:
        assert side_host.wait_idle(timeout=10)
        assert side_host.stats["side"]["invocations"] == 0
        assert side_host.stats["side"]["poisoned"] == 1
    assert deliveries == []
    assert poison_bodies(storage, f"{SIDE_QUEUE}-poison") == [b64("held")]


def test_wait_idle_counts_a_delayed_retry_as_work(storage: Azurite, tmp_path: Path) -> None:
    host_json = write_host_json(tmp_path / "host.json", visibilityTimeout="00:00:02")
    with LocalHost(side_app, connection_string=storage.connection_string, host_json=host_json) as side_host:
        raw_queue(storage, SIDE_QUEUE).send_message(b64("fail-once"))
        wait_for(lambda: side_host.stats["side"]["failures"] == 1, 5)
        assert not side_host.wait_idle(timeout=0.5)  # invisible for 2 s, not gone
        assert side_host.wait_idle(timeout=10)
        assert deliveries == [("fail-once", 1), ("fail-once", 2)]


def test_lease_is_renewed_while_the_function_runs(storage: Azurite, tmp_path: Path) -> None:
    """With a 2 s lease, a 3 s invocation keeps its message: no second delivery."""
    host_json = write_host_json(tmp_path / "host.json")
    with LocalHost(side_app, connection_string=storage.connection_string, host_json=host_json, message_lease=2) as side_host:
        raw_queue(storage, SIDE_QUEUE).send_message(b64("slow:3"))
        assert side_host.wait_idle(timeout=10)
    assert deliveries == [("slow:3", 1)]


def test_stop_lets_running_invocations_finish(storage: Azurite, tmp_path: Path) -> None:
    side_host = LocalHost(side_app, connection_string=storage.connection_string, host_json=write_host_json(tmp_path / "host.json"))
    side_host.start()
    try:
        raw_queue(storage, SIDE_QUEUE).send_message(b64("slow:1"))
        wait_for(lambda: deliveries, 5)
        assert deliveries == [("slow:1", 1)]
    finally:
        assert side_host.stop(timeout=10)
    assert side_host.stats["side"]["successes"] == 1
    assert raw_queue(storage, SIDE_QUEUE).get_queue_properties().approximate_message_count == 0  # deleted, not left leased


# -- 1. batches: up to batchSize + newBatchThreshold at once ----------------------------------


def test_queue_concurrency_is_batch_size_plus_new_batch_threshold(storage: Azurite, tmp_path: Path) -> None:
    """batchSize 4, newBatchThreshold 2: a batch of 4; once 2 of them are done (2 in flight, at the
    threshold), 4 more: 6 at once, and no 7th while all 6 run."""
    host_json = write_host_json(tmp_path / "host.json", batchSize=4, newBatchThreshold=2)
    queue = raw_queue(storage, BATCH_QUEUE)
    for i in range(12):
        queue.send_message(b64(f"message {i}"))
    batch_release.clear()
    with LocalHost(batch_app, connection_string=storage.connection_string, host_json=host_json) as batch_host:
        assert batch_host.batching == (4, 2) and batch_host.max_in_flight == 6
        try:
            wait_for(lambda: batch_state["running"] == 6, 10, "6 invocations at once")
            time.sleep(1.0)  # time for a 7th, which must not come
            assert (batch_state["running"], batch_state["started"], batch_state["max"]) == (6, 8, 6)
        finally:
            batch_release.set()
        assert batch_host.wait_idle(timeout=15)
    assert (batch_state["started"], batch_state["max"]) == (12, 6)
    assert batch_host.stats["batched"]["successes"] == 12


def test_new_batch_threshold_defaults_to_half_the_batch_per_processor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSITE_SKU", raising=False)
    path = write_host_json(tmp_path / "host.json", batchSize=8)
    settings = HostSettings.from_host_json(path)
    assert settings.new_batch_threshold is None
    assert settings.effective_new_batch_threshold == 4 * processor_count()
    # The shipped host.json (batchSize 4, newBatchThreshold 2 when this was written: 6).
    shipped = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    expected = shipped["batchSize"] + shipped.get("newBatchThreshold", shipped["batchSize"] // 2 * processor_count())
    assert LocalHost(app, connection_string="UseDevelopmentStorage=true", host_json=ROOT / "host.json").max_in_flight == expected
    monkeypatch.setenv("WEBSITE_SKU", "Dynamic")  # Consumption: one processor
    assert settings.effective_new_batch_threshold == 4
    assert LocalHost(app, connection_string="UseDevelopmentStorage=true", host_json=path).max_in_flight == 12
    monkeypatch.delenv("WEBSITE_SKU")
    # The local `concurrency` knob: N at once, in batches of at most batchSize.
    assert LocalHost(app, connection_string="UseDevelopmentStorage=true", host_json=ROOT / "host.json", concurrency=2).batching == (2, 0)
    with pytest.raises(ValueError, match="batchSize"):
        HostSettings.from_host_json(write_host_json(tmp_path / "bad.json", batchSize=33))


# -- 2. polling backs off while the queue is empty --------------------------------------------


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_polling_backs_off_on_an_empty_queue_and_starts_over_on_a_message(storage: Azurite, tmp_path: Path) -> None:
    """Empty polls wait 100 ms, then 100 ms + (0.8..1.2) x 100 ms x 1, 2, 4, ... up to
    maxPollingInterval (1 s here); a poll that finds a message is followed at once by the next,
    and the wait after that starts over at 100 ms."""
    polls: list[tuple[float, bool]] = []  # (when the answer came, whether it held a message)

    def record(response: requests.Response) -> None:
        request = response.request
        if request.method == "GET" and urlsplit(request.url).path.endswith(f"/{POLL_QUEUE}/messages") and "peekonly" not in (request.url or ""):
            polls.append((time.monotonic(), b"<QueueMessage>" in response.content))

    host_json = write_host_json(tmp_path / "host.json")
    slack = 0.15  # request latency and thread scheduling on a busy machine
    with observed_host(record)(poll_app, connection_string=storage.connection_string, host_json=host_json):
        time.sleep(4.8)
        empty = [t for t, found in polls]
        gaps = _gaps(empty)
        assert len(gaps) >= 7, gaps
        low = [POLL_MINIMUM] + [POLL_MINIMUM + (1 - BACKOFF_RANDOMIZATION) * 2**k * POLL_MINIMUM for k in range(4)] + [1.0, 1.0]
        high = [POLL_MINIMUM] + [POLL_MINIMUM + (1 + BACKOFF_RANDOMIZATION) * 2**k * POLL_MINIMUM for k in range(3)] + [1.0, 1.0, 1.0]
        for i, gap in enumerate(gaps[:7]):
            assert min(low[i], 1.0) - 0.01 <= gap <= high[i] + slack, (i, gaps)
        assert all(gap <= 1.0 + slack for gap in gaps), gaps  # never beyond maxPollingInterval

        before = len(polls)
        raw_queue(storage, POLL_QUEUE).send_message(b64("hello"))
        wait_for(lambda: any(found for _, found in polls[before:]), 3, "the message to be received")
        time.sleep(0.8)
    found_at = next(i for i in range(before, len(polls)) if polls[i][1])
    after = _gaps([t for t, _ in polls[found_at : found_at + 4]])
    assert after[0] < POLL_MINIMUM, after  # straight on after a batch
    assert POLL_MINIMUM - 0.01 <= after[1] <= POLL_MINIMUM + slack, after  # then the back-off starts over
    assert POLL_MINIMUM * 1.8 - 0.01 <= after[2] <= POLL_MINIMUM * 2.2 + slack, after


def test_backoff_sequence() -> None:
    rng = random.Random(7)
    expected_rng = random.Random(7)
    backoff = _Backoff(0.1, 2.0, rng)
    delays = [backoff.next_delay(False) for _ in range(8)]
    expected = [0.1]
    for k in range(1, 8):
        candidate = 0.1 + expected_rng.uniform(0.8, 1.2) * 2 ** (k - 1) * 0.1
        if candidate >= 2.0:
            expected += [2.0] * (8 - len(expected))
            break
        expected.append(candidate)
    assert delays == pytest.approx(expected)
    assert delays[-1] == 2.0
    assert backoff.next_delay(True) == 0.1  # a message was found: start over
    assert 0.18 <= backoff.next_delay(False) <= 0.22


# -- 3. the trigger queue is not created; the poison queue is ---------------------------------


def test_the_trigger_queue_is_never_created_the_poison_queue_is(storage: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lh-absent-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LH_ABSENT_QUEUE", name)
    seen: list[tuple[str, str]] = []  # (method, path) of every storage request

    def record(response: requests.Response) -> None:
        seen.append((str(response.request.method), urlsplit(response.request.url).path))

    def creates() -> list[str]:  # Create Queue is a PUT on the queue itself (update_message a PUT on a message)
        return [path for method, path in seen if method == "PUT" and path.count("/") == 2]

    def exists(queue: str) -> bool:
        try:
            raw_queue(storage, queue).get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    host_json = write_host_json(tmp_path / "host.json")
    with observed_host(record)(absent_app, connection_string=storage.connection_string, host_json=host_json) as absent_host:
        time.sleep(2.0)
        assert not exists(name) and not exists(f"{name}-poison")
        checks = [path for method, path in seen if method == "GET" and path.endswith(f"/{name}")]
        assert len(checks) >= 4  # it keeps looking for the queue, backing off
        assert creates() == []  # and never creates one
        assert absent_host.wait_idle(timeout=2)  # a queue that does not exist holds no work

        raw_queue(storage, name).create_queue()
        raw_queue(storage, name).send_message(b64("doomed"))
        wait_for(lambda: absent_host.stats["absent"]["poisoned"] == 1, 15, "the message to be poisoned")
    assert [count for _, count in deliveries] == [1, 2, 3]
    assert poison_bodies(storage, f"{name}-poison") == [b64("doomed")]  # created for it
    assert creates() == [f"/devstoreaccount1/{name}-poison"]


# -- 4. timers: schedule status, past due ---------------------------------------------------


def status_blob(storage: Azurite, host_id: str, function: str) -> BlobClient:
    """Where the host keeps a timer's schedule status (StorageScheduleMonitor)."""
    return BlobClient.from_connection_string(storage.connection_string, "azure-webjobs-hosts", f"timers/{host_id}/Host.Functions.{function}/status")


def read_status(blob: BlobClient) -> dict[str, str]:
    return json.loads(blob.download_blob().readall())


def whole_minute(t: dt.datetime) -> dt.datetime:
    return t.replace(second=0, microsecond=0)


def test_a_missed_occurrence_is_invoked_once_as_past_due(storage: Azurite, tmp_path: Path) -> None:
    """The status a host left when it last ran, five minutes ago: the occurrence after that was
    missed. The next host to start invokes the timer once, at once, with past_due=True."""
    host_id = f"lh-{uuid.uuid4().hex[:12]}"
    last = whole_minute(dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    missed = last + dt.timedelta(minutes=1)
    blob = status_blob(storage, host_id, "monitored")
    with contextlib.suppress(ResourceExistsError):
        ContainerClient.from_connection_string(storage.connection_string, "azure-webjobs-hosts").create_container()
    blob.upload_blob(json.dumps({"Last": last.isoformat(), "Next": missed.isoformat(), "LastUpdated": last.isoformat()}), overwrite=True)

    started = dt.datetime.now(dt.UTC)
    host_json = write_host_json(tmp_path / "host.json")
    with LocalHost(monitored_app, connection_string=storage.connection_string, host_json=host_json, run_timers=True, host_id=host_id):
        wait_for(lambda: monitored_runs, 5, "the past-due run")
        time.sleep(0.5)
    past_due, schedule_status = monitored_runs[0]
    assert past_due is True
    assert dt.datetime.fromisoformat(schedule_status["Next"]) == missed  # the occurrence it stands for
    assert [p for p, _ in monitored_runs].count(True) == 1  # once (a minute may strike meanwhile: that run is on time)
    status = read_status(blob)
    ran = dt.datetime.fromisoformat(status["Last"])
    assert started <= ran <= dt.datetime.now(dt.UTC)
    assert dt.datetime.fromisoformat(status["Next"]) == whole_minute(ran) + dt.timedelta(minutes=1)


def test_no_past_due_without_a_missed_occurrence(storage: Azurite, tmp_path: Path) -> None:
    """A new timer records its next occurrence at start; a host restarted before it is not past due."""
    host_id = f"lh-{uuid.uuid4().hex[:12]}"
    blob = status_blob(storage, host_id, "monitored")
    host_json = write_host_json(tmp_path / "host.json")
    started = dt.datetime.now(dt.UTC)
    with LocalHost(monitored_app, connection_string=storage.connection_string, host_json=host_json, run_timers=True, host_id=host_id):
        wait_for(blob.exists, 5, "the initial status")
    status = read_status(blob)
    if not monitored_runs:  # no minute struck while it ran
        assert status["Last"] == NEVER
        recorded = dt.datetime.fromisoformat(status["LastUpdated"])
        assert started <= recorded <= dt.datetime.now(dt.UTC)
        assert dt.datetime.fromisoformat(status["Next"]) == whole_minute(recorded) + dt.timedelta(minutes=1)
    with LocalHost(monitored_app, connection_string=storage.connection_string, host_json=host_json, run_timers=True, host_id=host_id):
        time.sleep(1.0)
    assert True not in [p for p, _ in monitored_runs]


def test_a_late_occurrence_is_not_past_due(storage: Azurite, tmp_path: Path) -> None:
    """Every 2 s, the first run takes 3.2 s: the next runs once, straight after, over a second
    late, and is not past due (only an occurrence missed while no host ran is)."""
    host_json = write_host_json(tmp_path / "host.json")
    with LocalHost(late_app, connection_string=storage.connection_string, host_json=host_json, run_timers=True):
        wait_for(lambda: len(late_runs) >= 3, 12, "three runs")
    (first, _), (second, _), (third, _) = late_runs[:3]
    assert 3.1 <= second - first < 3.6  # straight after the slow one
    assert third - second < 2.1  # then on schedule: one catch-up, not one per occurrence missed
    assert [past_due for _, past_due in late_runs] == [False] * len(late_runs)


def test_run_timer(host: LocalHost) -> None:
    host.run_timer("tick")
    host.run_timer("tick", past_due=True)
    assert ticks == [False, True]
    assert host.stats["tick"]["successes"] == 2
    with pytest.raises(ValueError):
        host.run_timer("consume")


def test_timers_are_scheduled_when_asked(storage: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LH_TEST_SCHEDULE", "*/1 * * * * *")
    host_json = write_host_json(tmp_path / "host.json")
    with LocalHost(side_app, connection_string=storage.connection_string, host_json=host_json, run_timers=True) as side_host:
        wait_for(lambda: ticks, 3, "a tick")
        assert side_host.stats["side_tick"]["successes"] >= 1
    assert ticks and ticks[0] is False


# -- 5. functionTimeout ---------------------------------------------------------------------


def test_function_timeout_fails_the_invocation(storage: Azurite, tmp_path: Path) -> None:
    """functionTimeout 1 s: an invocation still running after it (and the host's 2 s grace) has
    failed. The message is not deleted: it is back after visibilityTimeout (1 s) as a second
    attempt. HTTP answers 500. The abandoned threads finish later, and change nothing."""
    host_json = write_host_json(tmp_path / "host.json", function_timeout="00:00:01", visibilityTimeout="00:00:01")
    hang_release.clear()
    try:
        with LocalHost(timeout_app, connection_string=storage.connection_string, host_json=host_json, message_lease=2) as timeout_host:
            assert timeout_host.settings.function_timeout == 1.0
            queue = raw_queue(storage, TIMEOUT_QUEUE)
            queue.send_message(b64("hangs the first time"))
            wait_for(lambda: timeout_host.stats["hang_once"]["failures"] == 1, 10, "the timeout")
            failed_at = time.monotonic()
            stats = timeout_host.stats["hang_once"]
            assert stats["timeouts"] == 1 and stats["successes"] == 0
            assert stats["exceptions"] == [("FunctionTimeoutException", "Timeout value of 00:00:01 was exceeded by function: Functions.hang_once")]
            assert 2.9 <= failed_at - hang_deliveries[0][1] < 4.5  # 1 s, then the 2 s grace
            assert queue.get_queue_properties().approximate_message_count == 1  # not deleted
            assert timeout_host.wait_idle(timeout=15)
            assert [count for count, _ in hang_deliveries] == [1, 2]
            assert hang_deliveries[1][1] - failed_at >= 0.9  # after visibilityTimeout, not before
            assert timeout_host.stats["hang_once"]["successes"] == 1

            asked = time.monotonic()
            resp = requests.get(f"{timeout_host.url}/api/hang", timeout=30)
            assert (resp.status_code, resp.content) == (500, b"")
            assert 2.9 <= time.monotonic() - asked < 4.5
            assert timeout_host.stats["hang"]["timeouts"] == 1
    finally:
        hang_release.set()
    time.sleep(0.2)  # the abandoned invocations return now
    stats = timeout_host.stats["hang_once"]
    assert (stats["invocations"], stats["successes"], stats["failures"]) == (2, 1, 1)
    assert queue.get_queue_properties().approximate_message_count == 0


def test_function_timeout_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSITE_SKU", raising=False)
    path = tmp_path / "host.json"

    def timeout(value: str | None) -> float | None:
        path.write_text(json.dumps({"version": "2.0"} if value is None else {"version": "2.0", "functionTimeout": value}))
        return HostSettings.from_host_json(path).function_timeout

    assert timeout(None) == 30 * 60
    assert timeout("00:10:00") == 600
    assert timeout("-1") is None  # unbounded
    with pytest.raises(ValueError, match="functionTimeout"):
        timeout("00:00:00.5")
    monkeypatch.setenv("WEBSITE_SKU", "Dynamic")  # Consumption: 5 minutes by default, 10 at most
    assert timeout(None) == 5 * 60
    with pytest.raises(ValueError, match="functionTimeout"):
        timeout("00:20:00")


# -- storage unavailable --------------------------------------------------------------------


def test_storage_paused_then_resumed(storage: Azurite, host: LocalHost) -> None:
    with storage.frozen():
        started = time.monotonic()
        resp = requests.post(host.function_url("receive"), data=event(), timeout=10)
        assert resp.status_code == 500  # the queue write timed out: no 2xx
        assert time.monotonic() - started < 5
    assert host.stats["receive"]["failures"] == 1
    body = event()
    assert requests.post(host.function_url("receive"), data=body, timeout=10).status_code == 202
    assert host.wait_idle(timeout=15)
    assert (body, 1) in deliveries  # the queue listener survived the outage


# -- pure parts -----------------------------------------------------------------------------


def test_host_json_defaults_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSITE_SKU", raising=False)
    assert HostSettings.from_host_json(tmp_path / "absent.json") == HostSettings(
        route_prefix="api",
        batch_size=16,
        new_batch_threshold=None,
        max_polling_interval=60.0,
        max_dequeue_count=5,
        visibility_timeout=0.0,
        message_encoding="base64",
        function_timeout=1800.0,
    )
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"extensions": {"queues": {"MaxDequeueCount": 2, "visibilityTimeout": "00:01:30"}, "http": {"routePrefix": ""}}}))
    settings = HostSettings.from_host_json(path)
    assert (settings.max_dequeue_count, settings.visibility_timeout, settings.route_prefix) == (2, 90.0, "")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:00", 0), ("00:01:00", 60), ("01:02:03", 3723), ("1.00:00:01", 86401), ("00:00:00.5", 0.5)],
)
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text) == seconds


def test_ncrontab_schedule() -> None:
    start = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)  # a Wednesday
    assert _Schedule("*/10 * * * * *").next_after(start) == start + dt.timedelta(seconds=10)
    assert _Schedule("0 30 * * * *").next_after(start) == start.replace(minute=30)
    assert _Schedule("0 0 6 * * MON").next_after(start) == dt.datetime(2025, 1, 6, 6, 0, 0, tzinfo=dt.UTC)
    assert _Schedule("00:05:00").next_after(start) == start + dt.timedelta(minutes=5)
    with pytest.raises(ValueError):
        _Schedule("* * *")
    # useMonitor is turned off for schedules that fire more than once a minute.
    assert _Schedule("*/10 * * * * *").too_frequent_for_monitor(start)
    assert _Schedule("00:00:30").too_frequent_for_monitor(start)
    assert not _Schedule("0 * * * * *").too_frequent_for_monitor(start)
    assert not _Schedule("0 7 * * * *").too_frequent_for_monitor(start)
    assert not _Schedule("00:05:00").too_frequent_for_monitor(start)


def test_default_host_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AzureFunctionsWebHost__hostid", raising=False)
    host_id = default_host_id("/home/site/wwwroot")
    assert host_id == default_host_id("/home/site/wwwroot") != default_host_id("/elsewhere")
    assert re.fullmatch(r"[a-z0-9-]+", host_id) and len(host_id) <= 32 and not host_id.endswith("-")
    monkeypatch.setenv("AzureFunctionsWebHost__hostid", "configured-id")
    assert default_host_id("/home/site/wwwroot") == "configured-id"


def test_an_app_can_be_loaded_twice(storage: Azurite) -> None:
    """FunctionApp.get_functions() fails on a second call; LocalHost works around it."""
    first = LocalHost(side_app, connection_string=storage.connection_string, host_json=None)
    second = LocalHost(side_app, connection_string=storage.connection_string, host_json=None)
    assert first.function_names == second.function_names == ["side", "side_tick"]


def test_command_line(storage: Azurite, tmp_path: Path) -> None:
    """`python -m devtools.localhost` serves an app and prints its URLs with the key; Ctrl-C stops it."""
    port = free_port()
    env = dict(os.environ, AzureWebJobsStorage=storage.connection_string, LH_TEST_SCHEDULE="0 0 * * * *")
    command = [sys.executable, "-m", "devtools.localhost", "--app", "tests.integration.test_localhost:app", "--port", str(port), "--key", "cli-key"]
    command += ["--settings", str(tmp_path / "absent.json"), "--host-json", str(write_host_json(tmp_path / "host.json"))]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = "".join(read_until(process, "Ctrl-C", timeout=15))
        assert process.poll() is None, f"exited early: {banner}"
        assert f"receive: [POST] http://127.0.0.1:{port}/api/events?code=cli-key" in banner
        assert f"ping: [GET] http://127.0.0.1:{port}/api/ping\n" in banner
        assert "consume: queueTrigger lh-events" in banner
        assert requests.get(f"http://127.0.0.1:{port}/api/ping", timeout=5).text == "pong "
        assert requests.get(f"http://127.0.0.1:{port}/api/boom", params={"code": "cli-key"}, timeout=5).status_code == 500
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
