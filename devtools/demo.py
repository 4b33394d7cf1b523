"""The whole flow on this machine, with no Azure account and no internet.

Starts Azurite, the Altinn + Maskinporten simulator (with a key pair made now) and the local
Functions host serving ``function_app.app``; registers an Events subscription for the webhook
(the simulator pushes the validation event to it), completes an instance with a form and three
attachments, lets the simulator push ``app.instance.process.completed``, waits for the archive
function, and prints the archived blobs, the manifest, Altinn's record of the confirmation, the
substatus the submitter now sees, and the hand-off message for the case systems.

    make demo            (or: .venv/bin/python -m devtools.demo)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devtools.azurite import Azurite
    from devtools.simulator import SimInstance, Simulator

MIB = 1024 * 1024


def _say(text: str) -> None:
    print(text, flush=True)


def run() -> int:
    import function_app
    from devtools.azurite import Azurite
    from devtools.localhost import LocalHost
    from devtools.simulator import Simulator, generate_client_key

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    private_pem, public_pem = generate_client_key()
    with Azurite() as azurite, Simulator() as sim:
        sim.register_client("demo-client", public_key_pem=public_pem, kid="demo-kid", org="ttd")
        _configure(azurite, sim, private_pem)
        _say(f"Azurite            blob :{azurite.blob_port}  queue :{azurite.queue_port}")
        _say(f"Altinn simulator   platform {sim.url}  app host {sim.apps_url}  (Maskinporten issuer {sim.maskinporten_issuer})")
        with LocalHost(function_app.app, connection_string=azurite.connection_string) as host:
            webhook = host.function_url("receive")
            _say(f"Function host      {host.url}/api/events")
            _subscribe(sim, webhook)
            inst = _complete_instance(sim)
            if not host.wait_idle(timeout=120):
                _say("The archive function did not finish in time.")
                return 1
            ok = _report(azurite.connection_string, sim, inst) and _report_closing(azurite.connection_string, inst)
            _say("\nDemo OK: the instance is archived, verified and confirmed." if ok else "\nDemo FAILED.")
            return 0 if ok else 1


def _configure(azurite: Azurite, sim: Simulator, private_pem: str) -> None:
    """The app settings the functions read, pointing at Azurite and the simulator."""
    os.environ.update(
        {
            "ALTINN_ENVIRONMENT": "tt02",
            "ALTINN_APPS": "ttd/demo-app",
            "ALTINN_PLATFORM_URL": sim.url,
            "ALTINN_APPS_URL": sim.apps_url,
            "MASKINPORTEN_URL": sim.maskinporten_issuer,
            "MASKINPORTEN_CLIENT_ID": "demo-client",
            "MASKINPORTEN_KID": "demo-kid",
            "MASKINPORTEN_PRIVATE_KEY": private_pem,
            "ARCHIVE_CONTAINER": "altinn-data",
            "AzureWebJobsStorage": azurite.connection_string,
            # Closing the loop: what the submitter sees in the inbox, and the case systems' queue.
            "ALTINN_SUBSTATUS_LABEL": "Mottatt av etaten",
            "ALTINN_SUBSTATUS_DESCRIPTION": "Innsendingen er arkivert og mottatt.",
            "ARCHIVE_HANDOFF_QUEUE": "altinn-archived",
        }
    )


def _subscribe(sim: Simulator, webhook: str) -> None:
    """1. Subscribe, as an operator would: Altinn validates the endpoint with a push."""
    import requests

    token = _altinn_token()
    sub = requests.post(
        f"{sim.url}/events/api/v1/subscriptions",
        json={"endPoint": webhook, "sourceFilter": f"{sim.apps_url}/ttd/demo-app", "typeFilter": "app.instance.process.completed"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    deadline = time.time() + 10
    while not sim.subscriptions[sub["id"]].get("validated") and time.time() < deadline:
        time.sleep(0.05)
    _say(f"Subscription       #{sub['id']} validated={sim.subscriptions[sub['id']].get('validated')}")


def _complete_instance(sim: Simulator) -> SimInstance:
    """2. An end user completes an instance; Altinn Events pushes the CloudEvent."""
    from devtools.simulator import ElementSpec

    inst = sim.add_instance(
        "ttd",
        "demo-app",
        [
            ElementSpec(data_type="model", content_type="application/xml", size=4_200),
            ElementSpec(data_type="vedlegg", content_type="application/pdf", size=12 * MIB, filename="årsregnskap 2025.pdf"),
            ElementSpec(data_type="vedlegg", content_type="image/jpeg", size=850_000, filename="kvittering.jpg"),
            ElementSpec(data_type="vedlegg", content_type="text/plain", size=0, filename="tom.txt"),
        ],
    )
    _say(f"Instance completed {inst.org}/{inst.app} {inst.id}")
    pushed = sim.publish(inst)
    _say(f"Event pushed       -> HTTP {', '.join(str(status) for _, status in pushed)}")
    return inst


def _report(connection_string: str, sim: Simulator, inst: SimInstance) -> bool:
    """3. What landed in Blob Storage, and what Altinn recorded; True if all of it is right."""
    _print_archive(connection_string, inst)
    confirmed = [c for c in sim.confirmations if c[0] == inst.id]
    _say(f"\nAltinn /complete   {'received for ' + inst.id if confirmed else 'NOT received'}")
    _say(f"Token calls        Maskinporten grants: {sim.grants}, Altinn exchanges: {sim.exchanges}")
    form = _form(sim, inst)
    ok = bool(confirmed) and _verify(connection_string, inst, sim, form) and form is not None
    if form is not None:
        element, data_type = form
        class_ref = data_type["appLogic"]["classRef"]
        _say(
            f"Form data          {element['dataType']} (appLogic.classRef {class_ref}): {element['size']:,} B of XML archived byte for byte "
            "from storage (the app API re-serializes it)"
        )
    _say(f"App API calls      {sum(sim.calls[k] for k in ('app-instance', 'app-data', 'app-complete'))} (everything went to storage)")
    return ok


def _report_closing(connection_string: str, inst: SimInstance) -> bool:
    """4. The substatus on the instance in Altinn, and the one hand-off message; True if both are right."""
    import base64
    import hashlib

    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    substatus = inst.substatus or {}
    _say(f"Substatus          {substatus.get('label')!r}: {substatus.get('description')!r} (what the submitter sees in the inbox)")
    messages = [json.loads(base64.b64decode(m.content)) for m in QueueClient.from_connection_string(connection_string, "altinn-archived").peek_messages(32)]
    mine = [m for m in messages if m["instanceId"] == inst.id]
    manifest = ContainerClient.from_connection_string(connection_string, "altinn-data").get_blob_client(
        f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/manifest.json"
    )
    sha = hashlib.sha256(manifest.download_blob().readall()).hexdigest()
    for m in mine:
        _say(f"Hand-off message   altinn-archived: {m['org']}/{m['app']} {m['instanceId']} via {m['via']}, {m['elementCount']} elements, "
             f"{m['totalBytes']:,} B, manifest sha256 {m['manifestSha256'][:16]} ({'matches' if m['manifestSha256'] == sha else 'DIFFERS'})")  # fmt: skip
    return substatus.get("label") == "Mottatt av etaten" and len(mine) == 1 and mine[0]["manifestSha256"] == sha


def _altinn_token() -> str:
    """An Altinn token for the operator's call, obtained the same way the service does it."""
    from shared.runtime import get_runtime

    return get_runtime().altinn.token()


def _print_archive(connection_string: str, inst: SimInstance) -> None:
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(connection_string, "altinn-data")
    prefix = f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"
    _say(f"\nArchived blobs under altinn-data/{prefix}")
    for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
        sha = (blob.metadata or {}).get("sha256", "")
        _say(f"  {blob.name[len(prefix) :]:<50} {blob.size:>12,} B  {sha[:16]}")
    manifest = json.loads(container.get_blob_client(prefix + "manifest.json").download_blob().readall())
    _say("\nmanifest.json")
    for entry in manifest["dataElements"]:
        _say(f"  {entry['dataType']:<8} {entry['contentType']:<16} {entry['size']:>12,} B  {entry['filename'] or '-'}")


def _form(sim: Simulator, inst: SimInstance) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The instance's form data element and its data type (the one with appLogic.classRef), if any."""
    app = sim.app(inst.org, inst.app)
    for element in inst.elements:
        data_type = app.data_type(element["dataType"])
        if data_type is not None and app.is_form(element["dataType"]):
            return element, data_type
    return None


def _verify(connection_string: str, inst: SimInstance, sim: Simulator, form: tuple[dict[str, Any], dict[str, Any]] | None) -> bool:
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(connection_string, "altinn-data")
    prefix = f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"
    manifest = json.loads(container.get_blob_client(prefix + "manifest.json").download_blob().readall())
    if not all(e["sha256"] == sim.expected_sha256(e["dataElementId"]) for e in manifest["dataElements"]):
        return False
    if form is None:
        return False
    element, _ = form
    stored = container.get_blob_client(f"{prefix}data/{element['id']}").download_blob().readall()
    return stored == sim.expected_bytes(element["id"])


if __name__ == "__main__":
    sys.exit(run())
