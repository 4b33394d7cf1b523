"""The whole flow on this machine, with no Azure account and no internet.

Starts Azurite, the Altinn + Maskinporten simulator (with a key pair made now) and the local
Functions host serving ``function_app.app``; registers an Events subscription for the webhook
(the simulator pushes the validation event to it), completes an instance with a form and three
attachments, lets the simulator push ``app.instance.process.completed``, waits for the archive
function, and prints the archived blobs, the manifest and Altinn's record of the confirmation.

    make demo            (or: .venv/bin/python -m devtools.demo)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

MIB = 1024 * 1024


def _say(text: str) -> None:
    print(text, flush=True)


def run() -> int:
    import requests

    import function_app
    from devtools.azurite import Azurite
    from devtools.localhost import LocalHost
    from devtools.simulator import ElementSpec, Simulator, generate_client_key

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    private_pem, public_pem = generate_client_key()
    with Azurite() as azurite, Simulator() as sim:
        sim.register_client("demo-client", public_key_pem=public_pem, kid="demo-kid", org="ttd")
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
            }
        )
        _say(f"Azurite            blob :{azurite.blob_port}  queue :{azurite.queue_port}")
        _say(f"Altinn simulator   platform {sim.url}  app host {sim.apps_url}  (Maskinporten issuer {sim.maskinporten_issuer})")
        with LocalHost(function_app.app, connection_string=azurite.connection_string) as host:
            webhook = host.function_url("receive")
            _say(f"Function host      {host.url}/api/events")

            # 1. Subscribe, as an operator would: Altinn validates the endpoint with a push.
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

            # 2. An end user completes an instance; Altinn Events pushes the CloudEvent.
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
            if not host.wait_idle(timeout=120):
                _say("The archive function did not finish in time.")
                return 1

            # 3. What landed in Blob Storage, and what Altinn recorded.
            _print_archive(azurite.connection_string, inst)
            confirmed = [c for c in sim.confirmations if c[0] == inst.id]
            _say(f"\nAltinn /complete   {'received for ' + inst.id if confirmed else 'NOT received'}")
            _say(f"Token calls        Maskinporten grants: {sim.grants}, Altinn exchanges: {sim.exchanges}")
            form = _form_element(sim, inst)
            ok = bool(confirmed) and _verify(azurite.connection_string, inst, sim) and form is not None
            if form is not None:
                class_ref = sim.app(inst.org, inst.app).data_type(form["dataType"])["appLogic"]["classRef"]
                _say(f"Form data          {form['dataType']} (appLogic.classRef {class_ref}): {form['size']:,} B of XML archived byte for byte "
                     "from storage (the app API re-serializes it)")
            _say(f"App API calls      {sum(sim.calls[k] for k in ('app-instance', 'app-data', 'app-complete'))} (everything went to storage)")
            _say("\nDemo OK: the instance is archived, verified and confirmed." if ok else "\nDemo FAILED.")
            return 0 if ok else 1


def _altinn_token() -> str:
    """An Altinn token for the operator's call, obtained the same way the service does it."""
    from shared.runtime import get_runtime

    return get_runtime().altinn.token()


def _print_archive(connection_string: str, inst: Any) -> None:
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(connection_string, "altinn-data")
    prefix = f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"
    _say(f"\nArchived blobs under altinn-data/{prefix}")
    for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
        sha = (blob.metadata or {}).get("sha256", "")
        _say(f"  {blob.name[len(prefix):]:<50} {blob.size:>12,} B  {sha[:16]}")
    manifest = json.loads(container.get_blob_client(prefix + "manifest.json").download_blob().readall())
    _say("\nmanifest.json")
    for entry in manifest["dataElements"]:
        _say(f"  {entry['dataType']:<8} {entry['contentType']:<16} {entry['size']:>12,} B  {entry['filename'] or '-'}")


def _form_element(sim: Any, inst: Any) -> dict[str, Any] | None:
    """The instance's form data element (its data type has appLogic.classRef), if any."""
    app = sim.app(inst.org, inst.app)
    return next((e for e in inst.elements if app.is_form(e["dataType"])), None)


def _verify(connection_string: str, inst: Any, sim: Any) -> bool:
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(connection_string, "altinn-data")
    prefix = f"{inst.org}/{inst.app}/{inst.party_id}/{inst.instance_guid}/"
    manifest = json.loads(container.get_blob_client(prefix + "manifest.json").download_blob().readall())
    if not all(e["sha256"] == sim.expected_sha256(e["dataElementId"]) for e in manifest["dataElements"]):
        return False
    form = _form_element(sim, inst)
    stored = container.get_blob_client(f"{prefix}data/{form['id']}").download_blob().readall() if form else b""
    return form is not None and stored == sim.expected_bytes(form["id"])


if __name__ == "__main__":
    sys.exit(run())
