"""The local host runner (devtools.localhost) against a real Azurite, over real sockets.

A small FunctionApp defined here stands in for the real one, so that each host behaviour
(keys, routes, queue encoding, dequeue count, poison queue, timers) is tested on its own.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devtools.azurite import Azurite
from devtools.localhost import HostSettings, LocalHost, _compile_route, _Schedule, parse_timespan

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "lh-events"
POISON = f"{QUEUE}-poison"
SIDE_QUEUE = "lh-side"
MAX_DEQUEUE = 3

# -- the test app ---------------------------------------------------------------------------

_lock = threading.Lock()
deliveries: list[tuple[str, int]] = []  # (body, dequeue_count) per invocation of `consume`
ticks: list[bool] = []  # past_due per invocation of `tick`
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


@app.route(route="enqueue", methods=["POST"])
@app.queue_output(arg_name="out", queue_name=QUEUE, connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    """Queues the body through a queue output binding (written by the host)."""
    out.set(req.get_body().decode("utf-8"))
    return func.HttpResponse(status_code=202)


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")


@app.route(route="items/{id:int}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"item {req.route_params['id']} {req.params.get('q', '')}")


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


# -- fixtures -------------------------------------------------------------------------------


def write_host_json(path: Path, **queues: Any) -> Path:
    settings = {"maxDequeueCount": MAX_DEQUEUE, "visibilityTimeout": "00:00:00", "batchSize": 4, "messageEncoding": "base64"}
    settings.update(queues)
    path.write_text(json.dumps({"version": "2.0", "extensions": {"queues": settings, "http": {"routePrefix": "api"}}}))
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
    if "host" in request.fixturenames:
        request.getfixturevalue("host").wait_idle(timeout=5)
    for name in (QUEUE, POISON, SIDE_QUEUE, f"{SIDE_QUEUE}-poison"):
        try:
            raw_queue(storage, name).clear_messages()
        except ResourceNotFoundError:
            pass
    if "host" in request.fixturenames:
        request.getfixturevalue("host").reset_stats()
    with _lock:
        deliveries.clear()
        ticks.clear()
    yield


def poison_bodies(storage: Azurite, name: str = POISON) -> list[str]:
    return [m.content for m in raw_queue(storage, name).peek_messages(max_messages=32)]


def event(fail: int = 0) -> str:
    return json.dumps({"id": str(uuid.uuid4()), "text": "blåbærsyltetøy", "fail": fail})


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
    assert requests.get(f"{host.url}/api/items/not-a-number").status_code == 404
    assert host.stats["receive"]["invocations"] == 0


def test_exception_is_500_with_empty_body(host: LocalHost) -> None:
    resp = requests.get(host.function_url("boom"))
    assert resp.status_code == 500
    assert resp.content == b""
    assert host.stats["boom"]["failures"] == 1
    assert host.stats["boom"]["exceptions"] == [("RuntimeError", "boom")]


def test_anonymous_route_with_parameters(host: LocalHost) -> None:
    assert host.function_url("item") == f"{host.url}/api/items/{{id:int}}"  # no key for anonymous
    resp = requests.get(f"{host.url}/api/items/42", params={"q": "x y"})
    assert resp.status_code == 200
    assert resp.text == "item 42 x y"
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"


def test_queue_output_binding_writes_base64(host: LocalHost) -> None:
    body = event()
    assert requests.post(host.function_url("enqueue"), data=body.encode()).status_code == 202
    assert host.wait_idle(timeout=10)
    assert deliveries == [(body, 1)]


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
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
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
        deadline = time.monotonic() + 5
        while side_host.stats["side"]["failures"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert side_host.stats["side"]["failures"] == 1
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
        deadline = time.monotonic() + 5
        while not deliveries and time.monotonic() < deadline:
            time.sleep(0.02)
        assert deliveries == [("slow:1", 1)]
    finally:
        assert side_host.stop(timeout=10)
    assert side_host.stats["side"]["successes"] == 1
    assert raw_queue(storage, SIDE_QUEUE).get_queue_properties().approximate_message_count == 0  # deleted, not left leased


# -- timers ---------------------------------------------------------------------------------


def test_run_timer(host: LocalHost) -> None:
    host.run_timer("tick")
    assert ticks == [False]
    assert host.stats["tick"]["successes"] == 1
    with pytest.raises(ValueError):
        host.run_timer("consume")


def test_timers_are_scheduled_when_asked(storage: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LH_TEST_SCHEDULE", "*/1 * * * * *")
    host_json = write_host_json(tmp_path / "host.json")
    with LocalHost(side_app, connection_string=storage.connection_string, host_json=host_json, run_timers=True) as side_host:
        deadline = time.monotonic() + 3
        while not ticks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert side_host.stats["side_tick"]["successes"] >= 1
    assert ticks and ticks[0] is False


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


def test_host_json_defaults_when_missing(tmp_path: Path) -> None:
    assert HostSettings.from_host_json(tmp_path / "absent.json") == HostSettings(
        route_prefix="api", batch_size=16, max_dequeue_count=5, visibility_timeout=0.0, message_encoding="base64"
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


def test_route_templates() -> None:
    route = _compile_route("instances/{party:int}/{guid}/{*rest}")
    match = route.pattern.fullmatch("Instances/123/abc/data/x")
    assert match is not None
    assert dict(zip(route.params, match.groups(), strict=True)) == {"party": "123", "guid": "abc", "rest": "data/x"}
    assert route.pattern.fullmatch("instances/x/abc") is None
    optional = _compile_route("items/{id?}")
    assert optional.pattern.fullmatch("items") and optional.pattern.fullmatch("items/7")


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
        banner = read_until(process, "Ctrl-C", timeout=15)
        assert f"receive: [POST] http://127.0.0.1:{port}/api/events?code=cli-key" in banner
        assert f"item: [GET] http://127.0.0.1:{port}/api/items/{{id:int}}\n" in banner
        assert "consume: queueTrigger lh-events" in banner
        assert requests.get(f"http://127.0.0.1:{port}/api/items/5", timeout=5).text == "item 5 "
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


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Stdout of ``process`` up to the line holding ``marker``; fails after ``timeout`` s."""
    lines: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                done.set()
                return
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    assert done.wait(timeout), f"no {marker!r} within {timeout} s: {''.join(lines)}"
    assert process.poll() is None, f"exited early: {''.join(lines)}"
    return "".join(lines)
