"""Every CLI command against the simulator and Azurite: exit codes (0 done, 1 failed, 2 usage),
``--json`` parsed, human output, progress, and no secret in anything printed. Most run in process
(``shared.cli.main``); the entry points themselves run as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.simulator import ElementSpec
from tests.support.flow import cli, cli_json

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["status", "subscribe", "subscriptions", "unsubscribe", "catch-up", "archive", "poison", "replay-poison"]


def secrets_of(env, rsa_key):
    body = "".join(line for line in rsa_key["private_pem"].splitlines() if "-----" not in line)
    return [body[:40], body[-40:]]


# -- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command):
    code, out, _ = cli(*([command] if command else []), "--help")
    assert code == 0 and out.startswith("usage: altinn-mottak")
    if command is None:
        assert all(c in out for c in COMMANDS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required"),
        (["nonsense"], "invalid choice"),
        (["archive", "ttd"], "not org/app"),
        (["archive", "ttd/apps-test", "12/not-a-guid"], "not an instance"),
        (["archive", "ttd/other-app", "12/428a4575-2c04-4400-89a3-1aaadd2579cd"], "not in ALTINN_APPS"),
        (["catch-up", "--app", "ttd/other-app"], "not in ALTINN_APPS"),
        (["catch-up", "--max-instances", "0"], "at least 1"),
        (["subscribe"], "--endpoint"),
        (["subscribe", "--endpoint", "http://example.com/api/events?code=k"], "https"),
        (["subscribe", "--endpoint", "https://example.com/api/events"], "function key"),
        (["unsubscribe"], "ID"),
        (["unsubscribe", "x"], "whole number"),
        (["replay-poison"], "required"),
        (["replay-poison", "--all", "--instance", "1/x"], "not allowed"),
        (["status", "--settings", "/nonexistent/local.settings.json"], "cannot read"),
    ],
)
def test_usage_errors_exit_2(env, args, message):
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert message in err
    code, out, _ = cli(*args, "--json")
    assert code == 2 and json.loads(out)["ok"] is False


def test_a_configuration_error_names_the_setting(env, monkeypatch):
    monkeypatch.delenv("ALTINN_APPS")
    code, doc, err = cli_json("status")
    assert code == 1 and doc["ok"] is False and "setting ALTINN_APPS" in doc["error"] and "setting ALTINN_APPS" in err


def test_settings_file_fills_in_what_the_environment_lacks(env, monkeypatch, tmp_path):
    monkeypatch.delenv("ALTINN_APPS")
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"ALTINN_APPS": "ttd/apps-test", "ALTINN_ENVIRONMENT": "production"}}))
    code, doc, _ = cli_json("status", "--no-token", "--settings", str(settings))
    assert code == 0 and doc["apps"] == ["ttd/apps-test"]
    assert doc["environment"] == "tt02"  # the environment wins over the file


# -- status -----------------------------------------------------------------------------------


def test_status(env, sim, container, queues, rsa_key):
    from azure.core.exceptions import ResourceExistsError

    for queue in queues:  # as infra creates them
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
    insts = [sim.add_instance("ttd", "apps-test", [ElementSpec(size=500)]) for _ in range(3)]
    for inst in insts[:2]:
        assert cli("archive", "ttd/apps-test", inst.id)[0] == 0
    cli("archive", "ttd/apps-test", insts[2].id, "--enqueue")

    code, doc, _ = cli_json("status")
    assert code == 0 and doc["ok"] and doc["problems"] == []
    assert doc["queues"] == {"altinn-events": 1, "altinn-events-poison": 0}
    assert doc["token"]["ok"] is True and doc["token"]["error"] is None
    recent = doc["recentArchives"]
    assert sorted(i["instance"] for i in recent["items"]) == sorted(f"ttd/apps-test/{i.id}" for i in insts[:2])
    assert all(i["confirmed"] for i in recent["items"]) and not recent["truncated"]
    assert doc["apps"] == ["ttd/apps-test", "ttd/big-app"] and doc["catchupSchedule"] == "0 7 * * * *"

    # Five blobs per instance here: confirmed.json, data/<id>, handoff.json, instance.json, manifest.json.
    code, out, _ = cli("status", "--recent", "1", "--scan-limit", "5")
    assert code == 0 and "token:     ok" in out and "altinn-events 1" in out and "more exist" in out
    assert out.count("ttd/apps-test/") == 1
    for secret in secrets_of(env, rsa_key):
        assert secret not in out


def test_status_reports_a_token_failure_without_the_key(env, sim, monkeypatch, rsa_key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", pem)
    code, out, err = cli("status", "--json", "-vv")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["token"]["ok"] is False
    assert "Maskinporten refused the grant" in doc["token"]["error"]
    for secret in secrets_of(env, {"private_pem": pem}):
        assert secret not in out and secret not in err

    monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/mp/)")
    code, doc, _ = cli_json("status")
    error = doc["token"]["error"]
    assert code == 1 and "unresolved Key Vault reference" in error and "MASKINPORTEN_PRIVATE_KEY" in error
    assert "Key Vault Secrets User" in error and "restart" in error  # what to check


def test_an_unresolved_key_vault_reference_defers_events_until_it_is_fixed(env, sim, container, queues, monkeypatch):
    """On a first start the platform may not have resolved the reference yet: the archive function
    says exactly that and lets its retry schedule carry the events; fixed, they are archived."""
    from shared.events import InstanceRef, queue_message
    from shared.pipeline import handle_message

    key = os.environ["MASKINPORTEN_PRIVATE_KEY"]
    monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", "@Microsoft.KeyVault(VaultName=kv-mottak;SecretName=maskinporten-private-key)")
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(size=500)])
    body = json.dumps(queue_message(None, InstanceRef.parse(inst.org, inst.app, inst.id), via="webhook"))
    result = handle_message(body)
    assert result.outcome == "deferred" and result.failure_class == "config" and "unresolved Key Vault reference" in result.reason
    assert sim.calls["token"] == 0 and queues[1].peek_messages() == []
    (following,) = queues[0].receive_messages(max_messages=1)
    monkeypatch.setenv("MASKINPORTEN_PRIVATE_KEY", key)  # resolved (after a restart)
    assert handle_message(following.content).outcome == "archived"
    assert [c[0] for c in sim.confirmations] == [inst.id]


def test_status_lists_deferred_attempts_and_refused_confirmations(env, sim, container, queues):
    from shared.events import InstanceRef, queue_message
    from shared.pipeline import handle_message

    waiting = sim.add_instance("ttd", "apps-test", [ElementSpec(size=500)])
    sim.add_fault("instance", status=503, times=3, match=waiting.instance_guid)
    assert handle_message(json.dumps(queue_message(None, InstanceRef.parse("ttd", "apps-test", waiting.id), via="webhook"))).outcome == "deferred"
    refused = sim.add_instance("ttd", "big-app", [ElementSpec(size=500)])
    sim.app("ttd", "big-app").complete_allowed = False
    assert handle_message(json.dumps(queue_message(None, InstanceRef.parse("ttd", "big-app", refused.id), via="webhook"))).outcome == "parked"

    code, doc, _ = cli_json("status", "--no-token")
    (deferred,) = doc["deferred"]["items"]
    assert deferred["instance"]["instanceGuid"] == waiting.instance_guid and deferred["attempt"] == 1 and "HTTP 503" in deferred["lastReason"]
    (unconfirmed,) = doc["confirmationRefused"]
    assert unconfirmed["instance"] == f"ttd/big-app/{refused.id}" and "policy" in unconfirmed["likelyCause"]
    code, out, _ = cli("status", "--no-token")
    assert "deferred:  1 instance(s) waiting for their next attempt" in out and "archived, confirmation refused: 1" in out
    # Archived at last: the record of the deferred attempt is gone.
    (following,) = queues[0].receive_messages(max_messages=1)
    assert handle_message(following.content).outcome == "archived"
    assert cli_json("status", "--no-token")[1]["deferred"]["items"] == []


# -- subscriptions ----------------------------------------------------------------------------


def test_subscribe_list_unsubscribe(host, sim):
    endpoint = host.function_url("receive")
    code, doc, _ = cli_json("subscribe", "--endpoint", endpoint, "--app", "ttd/apps-test", "--wait", "10")
    assert code == 0 and doc["ok"] and doc["notValidated"] == []
    (sub,) = doc["subscriptions"]
    assert sub["validated"] and sub["app"] == "ttd/apps-test" and sub["existed"] is False
    assert "code=***" in sub["endPoint"] and host.function_key not in json.dumps(doc)

    code, out, _ = cli("subscribe", "--endpoint", endpoint, "--app", "ttd/apps-test")
    assert code == 0 and out.startswith("exists ") and "validated" in out and host.function_key not in out

    code, doc, _ = cli_json("subscriptions")
    assert code == 0 and doc["count"] == 1 and doc["subscriptions"][0]["id"] == sub["id"]
    code, out, _ = cli("subscriptions", "--app", "ttd/big-app")
    assert code == 0 and out.startswith("0 subscription(s)")

    code, doc, _ = cli_json("unsubscribe", str(sub["id"]), "999")
    assert code == 1 and doc["results"][0] == {"id": sub["id"], "deleted": True, "error": None}
    assert doc["results"][1]["id"] == 999 and doc["results"][1]["deleted"] is False and "404" in doc["results"][1]["error"]
    assert cli_json("subscriptions")[1]["count"] == 0


def test_subscribe_says_when_altinn_has_not_validated(host, sim):
    endpoint = host.function_url("receive").split("?")[0] + "?code=not-the-key"
    code, out, err = cli("subscribe", "--endpoint", endpoint, "--app", "ttd/apps-test", "--wait", "1")
    assert code == 1 and "NOT VALIDATED YET" in out and "Altinn delivers nothing" in out
    assert "not-the-key" not in out + err
    code, doc, _ = cli_json("subscribe", "--endpoint", endpoint, "--app", "ttd/apps-test", "--wait", "0")
    assert code == 0 and doc["notValidated"] == [doc["subscriptions"][0]["id"]]  # not waiting is not failing
    code, out, _ = cli("subscriptions")
    assert "not validated (no events are delivered to them)" in out


# -- catch-up ---------------------------------------------------------------------------------


def test_catch_up(env, sim, queues):
    insts = [sim.add_instance("ttd", "apps-test", [ElementSpec(size=300)]) for _ in range(5)]
    sim.add_instance("ttd", "big-app", [ElementSpec(size=300)])

    code, doc, _ = cli_json("catch-up", "--dry-run", "--app", "ttd/apps-test")
    assert code == 0 and doc["dryRun"] and doc["found"] == 5 and doc["enqueued"] == 5 and [a["app"] for a in doc["apps"]] == ["ttd/apps-test"]
    assert sorted(i["instance"] for i in doc["instances"]) == sorted(i.id for i in insts)
    assert queues[0].peek_messages() == []

    code, out, err = cli("catch-up", "--page-size", "2", "--progress")
    assert code == 0 and "found 6, enqueued 6, skipped 0" in out
    assert "catch-up: " in err and "page(s)" in err  # progress, asked for, on stderr
    assert len(queues[0].peek_messages(max_messages=32)) == 6

    code, doc, _ = cli_json("catch-up", "--max-instances", "3")
    assert code == 0 and doc["stopped"] == "queue-backlog" and doc["backlog"] == 6


def test_catch_up_failure_exits_1(env, sim):
    sim.add_fault("query", status=403, times=10)
    code, doc, err = cli_json("catch-up")
    assert code == 1 and doc["ok"] is False and "access denied" in json.dumps(doc["apps"])
    # Warnings and errors are logged to stderr with their fields; no progress without a terminal.
    assert "ERROR altinn_mottak.catchup" in err and "[org=ttd app=apps-test outcome=error]" in err and "page(s)" not in err


# -- archive ----------------------------------------------------------------------------------


def test_archive(env, sim, container, queues):
    inst = sim.add_instance("ttd", "apps-test", [ElementSpec(size=1200), ElementSpec(data_type="vedlegg", size=70_000, filename="x.pdf")])
    code, doc, _ = cli_json("archive", "ttd/apps-test", inst.id)
    assert code == 0 and doc["outcome"] == "archived" and doc["elements"] == 2 and doc["bytes"] == 71_200
    assert [c[0] for c in sim.confirmations] == [inst.id]
    assert container.get_blob_client(f"ttd/apps-test/{inst.id}/manifest.json").exists()

    code, out, _ = cli("archive", "ttd/apps-test", inst.id.upper())
    assert code == 0 and "already archived and confirmed" in out

    code, doc, _ = cli_json("archive", "ttd/apps-test", inst.id, "--enqueue")
    assert code == 0 and doc["outcome"] == "enqueued"
    (message,) = [json.loads(m.content) for m in queues[0].peek_messages()]
    assert message["via"] == "cli" and message["instance"]["partyId"] == inst.party_id and message["event"] is None

    gone = sim.add_instance("ttd", "apps-test", [ElementSpec()])
    sim.remove_instance(gone)
    code, doc, err = cli_json("archive", "ttd/apps-test", gone.id)
    assert code == 1 and doc["outcome"] == "transient-failure" and doc["status"] == 404 and "404" in err  # storage's 404 is weak evidence
    denied = sim.add_instance("ttd", "apps-test", [ElementSpec()])
    sim.add_fault("instance", status=403, times=1, match=denied.instance_guid)
    code, doc, err = cli_json("archive", "ttd/apps-test", denied.id)
    assert code == 1 and doc["outcome"] == "permanent-failure" and doc["status"] == 403 and "access denied" in err
    assert queues[1].peek_messages() == []  # the CLI reports; it does not park anything


# -- the entry points, as processes -----------------------------------------------------------


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ), **kwargs)


def test_console_script_and_module_entry_points(env, sim):
    sim.add_instance("ttd", "apps-test", [ElementSpec()])
    script = Path(sys.executable).parent / "altinn-mottak"
    assert script.exists(), "the console script is missing: `make` installs the project (pip install -e .)"
    proc = run([str(script), "catch-up", "--dry-run", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["found"] == 1 and proc.stderr == ""

    proc = run([sys.executable, "-m", "shared.cli", "unsubscribe", "12345", "--json"])
    assert proc.returncode == 1 and json.loads(proc.stdout)["ok"] is False

    proc = run([sys.executable, "-m", "shared.cli", "archive", "--json"])
    assert proc.returncode == 2 and json.loads(proc.stdout)["ok"] is False and "usage:" in proc.stderr
