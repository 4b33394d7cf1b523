"""Observability: correlation fields on every record about an instance (console and OpenTelemetry),
custom metrics exported to an Application Insights ingestion endpoint (a local HTTP server that
records what the real exporter sends), and no cost and no error without a connection string."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from devtools.simulator import ElementSpec
from shared import telemetry

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("event_id", "instance", "org", "app", "dequeue_count")


class Capture(logging.Handler):
    """Keeps each record's attributes as they are when a handler emits it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(dict(record.__dict__, message=record.getMessage()))


@pytest.fixture
def captured():
    root = logging.getLogger()
    handler, stream = Capture(), io.StringIO()
    console = logging.StreamHandler(stream)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.addHandler(console)
    root.setLevel(logging.DEBUG)
    yield handler, stream
    root.removeHandler(handler)
    root.removeHandler(console)
    root.setLevel(level)


def ours(records):
    return [r for r in records if r["name"].startswith(("altinn_mottak", "shared."))]


def test_every_record_about_an_instance_carries_the_correlation_fields(host, sim, captured):
    handler, console = captured
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(size=2000), ElementSpec(data_type="vedlegg", size=5000, filename="a.pdf")])
    event = sim.cloud_event(inst)
    assert requests.post(host.function_url("receive"), json=event, timeout=30).status_code == 202
    assert host.wait_idle(timeout=60)
    gone = sim.add_instance("ttd", "apps-test", [ElementSpec()])
    sim.add_fault("instance", status=403, times=1, match=gone.instance_guid)  # a permanent failure: parked at once
    gone_event = sim.cloud_event(gone)
    assert requests.post(host.function_url("receive"), json=gone_event, timeout=30).status_code == 202
    assert host.wait_idle(timeout=60)

    archive_records = [r for r in ours(handler.records) if r["threadName"].startswith("archive")]
    assert len(archive_records) >= 4  # tokens, archived and confirmed, parked ...
    for r in archive_records:  # whoever wrote it: the Altinn client, Maskinporten, the pipeline
        assert {f: r.get(f) for f in FIELDS} == {
            "event_id": event["id"] if r["instance"] == inst.id else gone_event["id"],
            "instance": r["instance"],
            "org": "ttd",
            "app": "apps-test",
            "dequeue_count": 1,
        }, r["message"]
        assert r["instance"] in (inst.id, gone.id)
    assert any(r["name"] == "shared.altinn" for r in archive_records)  # bound by the context, not passed by hand

    done = [r for r in archive_records if r["message"] == "archived and confirmed"]
    assert len(done) == 1 and done[0]["outcome"] == "archived" and done[0]["instance"] == inst.id and done[0]["bytes"] == 7000
    failed = [r for r in archive_records if r["message"].startswith("parked in poison:")]
    assert len(failed) == 1 and failed[0]["outcome"] == "parked" and failed[0]["status"] == 403 and failed[0]["failure_class"] == "permanent"
    queued = [r for r in ours(handler.records) if r["message"] == "event queued"]
    assert [(r["event_id"], r["instance"], r["outcome"]) for r in queued] == [(event["id"], inst.id, "queued"), (gone_event["id"], gone.id, "queued")]
    # Nothing is None: OpenTelemetry attributes cannot be, so empty fields are dropped.
    assert all(r.get(f, "absent") is not None for r in ours(handler.records) for f in telemetry.CORRELATION_FIELDS)

    text = console.getvalue()
    line = next(x for x in text.splitlines() if "archived and confirmed" in x)
    for part in (f"instance={inst.id}", f"event_id={event['id']}", "org=ttd", "app=apps-test", "dequeue_count=1", "outcome=archived"):
        assert part in line


def test_catch_up_records_name_the_instances(env, sim, captured):
    from shared.catchup import run_catchup
    from shared.runtime import get_runtime

    handler, _ = captured
    telemetry.install_log_correlation()
    inst = sim.add_instance("ttd", "big-app", [ElementSpec()])
    run_catchup(get_runtime(), apps=[("ttd", "big-app")])
    enqueued = [r for r in handler.records if r["name"] == "altinn_mottak.catchup" and r.get("outcome") == "enqueued"]
    assert [(r["instance"], r["org"], r["app"], r["via"]) for r in enqueued] == [(inst.id, "ttd", "big-app", "catch-up")]
    summary = [r for r in handler.records if r["name"] == "altinn_mottak.catchup" and "found 1" in r["message"]]
    assert summary and summary[-1]["enqueued"] == 1


def test_console_formatter():
    fmt = telemetry.ConsoleFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("altinn_mottak", logging.ERROR, __file__, 1, "failed: %s", ("x",), None)
    record.__dict__.update(instance="5/abc", org="ttd", reason="two words", status=None)
    assert fmt.format(record) == 'ERROR failed: x [instance=5/abc org=ttd reason="two words"]'
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
        record.exc_text = None
    first, rest = fmt.format(record).split("\n", 1)
    assert first.endswith('[instance=5/abc org=ttd reason="two words"]') and "ValueError: boom" in rest


def test_log_context_nests_and_resets():
    with telemetry.log_context(instance="1/a", org="ttd", app=None):
        with telemetry.log_context(outcome="archived"):
            assert telemetry.current_context() == {"instance": "1/a", "org": "ttd", "outcome": "archived"}
        assert telemetry.current_context() == {"instance": "1/a", "org": "ttd"}
    assert telemetry.current_context() == {}
    assert telemetry.message_fields(b"not json", 3) == {"dequeue_count": 3}


# -- OpenTelemetry ----------------------------------------------------------------------------

PROBE = r"""
import json, sys, time
from shared import telemetry
t = time.perf_counter()
enabled = telemetry.configure()
configure_s = time.perf_counter() - t
n = 100_000 if not enabled else 1_000
t = time.perf_counter()
for _ in range(n):
    telemetry.record_result("archived", org="ttd", app="a", via="webhook", nbytes=10, event_time="2025-01-01T10:00:00Z")
    telemetry.record_failure("transient", org="ttd", app="a", status=503)
per_call_us = (time.perf_counter() - t) / (2 * n) * 1e6
# Odd input never raises.
telemetry.record_result("archived", org=None, app=None, nbytes=None, event_time=12)
telemetry.record_failure(None)
telemetry.record_catchup(3, org="ttd", app="a")
telemetry.flush()
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor")))
print(json.dumps({"enabled": enabled, "loaded": loaded, "per_call_us": per_call_us, "configure_s": configure_s}))
"""


def probe(env):
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "PYTHON_APPLICATIONINSIGHTS_", "OTEL_"))}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"},  # no connection string
        {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000"},  # not enabled
        {"APPLICATIONINSIGHTS_CONNECTION_STRING": " ", "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"},
    ],
    ids=["nothing", "flag-only", "connection-only", "blank-connection"],
)
def test_without_application_insights_telemetry_costs_nothing(settings):
    result = probe(clean_env(**settings))
    assert result["enabled"] is False
    assert result["loaded"] == []  # OpenTelemetry is not even imported
    assert result["per_call_us"] < 2.0, result  # a metric call is one attribute check
    assert result["configure_s"] < 0.05, result


def test_an_unreachable_ingestion_endpoint_raises_nothing_and_leaves_nothing(tmp_path):
    with socket_closed_port() as port:
        result = probe(
            clean_env(
                APPLICATIONINSIGHTS_CONNECTION_STRING=f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:{port}/",
                PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY="true",
                APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
                TMPDIR=str(tmp_path),
            )
        )
    assert result["enabled"] is True and "azure.monitor.opentelemetry" in result["loaded"]
    # No retry files: a CLI run must not leave telemetry behind (nor feed the exporter's own
    # failure warnings back into the exporter, which filled the temp directory before).
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


class socket_closed_port:  # noqa: N801 - a context manager used like a function
    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()  # nothing listens there now
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


class Ingestion:
    """A stand-in for the Application Insights ingestion endpoint, recording each telemetry item."""

    def __init__(self) -> None:
        items: list[dict] = []
        raw: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                raw.append(body)
                batch = json.loads(body)
                items.extend(batch if isinstance(batch, list) else [batch])
                answer = json.dumps({"itemsReceived": len(batch), "itemsAccepted": len(batch), "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.items, self.raw = items, raw
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def metrics(self, name):
        return [
            (m, item["data"]["baseData"]["properties"])
            for item in self.items
            if item.get("data", {}).get("baseType") == "MetricData"
            for m in item["data"]["baseData"]["metrics"]
            if m["name"] == name
        ]

    def messages(self, text=None):
        found = [item["data"]["baseData"] for item in self.items if item.get("data", {}).get("baseType") == "MessageData"]
        return [m for m in found if text is None or m["message"] == text]


FLOW = r"""
import json, logging, sys
from shared import telemetry
from shared.pipeline import handle_message
assert telemetry.configure() is True
logging.getLogger().setLevel(logging.INFO)
for body, count in json.loads(sys.argv[1]):
    with telemetry.message_context(body, count):
        handle_message(body, dequeue_count=count)
telemetry.flush()
"""


def test_with_application_insights_the_metrics_and_fields_reach_it(env, sim, container, rsa_key):
    from shared.events import InstanceRef, queue_message

    ingestion = Ingestion()
    try:
        inst = sim.add_instance("ttd", "apps-test", [ElementSpec(size=3000), ElementSpec(data_type="vedlegg", size=40_000, filename="v.pdf")])
        gone = sim.add_instance("ttd", "big-app", [ElementSpec()])
        sim.add_fault("instance", status=403, times=1, match=gone.instance_guid)  # a permanent failure: parked at once
        event = sim.cloud_event(inst)
        from shared.events import Event

        ev = Event(event["id"], event["type"], event["source"], event["time"])
        bodies = [
            (json.dumps(queue_message(ev, InstanceRef.parse("ttd", "apps-test", inst.id), via="webhook")), 1),
            (json.dumps(queue_message(None, InstanceRef.parse("ttd", "big-app", gone.id), via="catch-up")), 2),
        ]
        proc = subprocess.run(
            [sys.executable, "-c", FLOW, json.dumps(bodies)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=clean_env(
                APPLICATIONINSIGHTS_CONNECTION_STRING=f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={ingestion.url}",
                PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY="true",
                APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
                OTEL_SERVICE_NAME="altinn-mottak-test",
            ),
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        ingestion.close()

    ((archived, props),) = ingestion.metrics("altinn_mottak.instances.archived")
    assert archived["value"] == 1 and props == {"org": "ttd", "app": "apps-test", "outcome": "archived", "via": "webhook"}
    ((nbytes, _),) = ingestion.metrics("altinn_mottak.archived.bytes")
    assert nbytes["value"] == 43_000
    ((latency, _),) = ingestion.metrics("altinn_mottak.confirmation.latency")
    assert latency["count"] == 1 and 0 <= latency["value"] < 120
    ((failure, fprops),) = ingestion.metrics("altinn_mottak.failures")
    assert failure["value"] == 1 and fprops == {"failure_class": "permanent", "org": "ttd", "app": "big-app", "status": "403"}
    ((parked_metric, pprops),) = ingestion.metrics("altinn_mottak.parked")
    assert parked_metric["value"] == 1 and pprops == {"failure_class": "permanent", "org": "ttd", "app": "big-app"}

    (message,) = ingestion.messages("archived and confirmed")
    assert {k: message["properties"].get(k) for k in (*FIELDS, "outcome")} == {
        "event_id": event["id"],
        "instance": inst.id,
        "org": "ttd",
        "app": "apps-test",
        "dequeue_count": "1",
        "outcome": "archived",
    }
    tokens = [message["properties"] for message in ingestion.messages("altinn token obtained")]
    assert tokens and tokens[0]["instance"] == inst.id  # a record of the Altinn client, correlated by the context
    (parked,) = [m for m in ingestion.messages() if m["message"].startswith("parked in poison:")]
    assert parked["properties"]["instance"] == gone.id and parked["properties"]["dequeue_count"] == "2" and "event_id" not in parked["properties"]
    assert parked["properties"]["outcome"] == "parked" and parked["properties"]["failure_class"] == "permanent"
    assert parked["severityLevel"] == 3  # Error: what the poison alert keys on (infra/app/alerts.bicep)
    assert {i["tags"].get("ai.cloud.role") for i in ingestion.items if i["data"]["baseType"] == "MessageData"} == {"altinn-mottak-test"}

    # No bearer token, grant or key material in anything sent.
    sent = b"".join(ingestion.raw).decode()
    key_body = "".join(x for x in rsa_key["private_pem"].splitlines() if "-----" not in x)
    for secret in [*sim._altinn_tokens, *sim._mp_tokens, key_body[:40], key_body[-40:]]:
        assert secret not in sent


WORKER = r"""
import json, logging
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))  # what the Functions worker did at start
handlers = len(logging.getLogger().handlers)
from shared import telemetry
assert telemetry.configure() is True
telemetry.record_result("confirmed-only", org="ttd", app="a", via="catch-up")
names = [m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
print(json.dumps({"names": names, "ours": telemetry._we_configured_sdk, "handlers_added": len(logging.getLogger().handlers) - handlers}))
"""


def test_in_the_functions_worker_its_providers_are_used():
    with socket_closed_port() as port:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=clean_env(
                APPLICATIONINSIGHTS_CONNECTION_STRING=f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:{port}/",
                PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY="true",
            ),
        )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"names": ["altinn_mottak.instances.archived"], "ours": False, "handlers_added": 0}
