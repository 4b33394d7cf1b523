"""The function app's shape (what the host indexes) and its import cost (cold start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import function_app

ROOT = Path(__file__).resolve().parents[2]


def bindings() -> dict[str, list[dict]]:
    return {f.get_function_name(): [json.loads(b) for b in f.get_raw_bindings()] for f in function_app.app.get_functions()}


def test_webhook_and_queue_trigger_bindings():
    found = bindings()
    http = next(b for b in found["receive"] if b["type"] == "httpTrigger")
    assert http["route"] == "events" and http["methods"] == ["POST"] and http["authLevel"] == "FUNCTION"
    queue = next(b for b in found["archive"] if b["type"] == "queueTrigger")
    assert queue["queueName"] == "altinn-events" and queue["connection"] == "AzureWebJobsStorage"


def test_get_functions_can_be_called_twice():
    assert bindings() == bindings()


def test_host_json_retry_policy():
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert queues["maxDequeueCount"] == 5
    assert queues["messageEncoding"] == "base64"
    hours, minutes, seconds = (int(x) for x in queues["visibilityTimeout"].split(":"))
    assert 10 <= hours * 3600 + minutes * 60 + seconds <= 600


def test_importing_the_app_loads_no_heavy_library():
    code = (
        "import sys, function_app\n"
        "heavy = [m for m in ('requests', 'jwt', 'cryptography', 'azure.storage.blob', 'azure.storage.queue',"
        " 'azure.identity', 'opentelemetry', 'azure.monitor') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
