"""An example consumer of the hand-off queue (docs/handoff.md): read a message, verify the manifest
and every data element against their sha256, hand the archive to the case system, delete the message.

Run it with the identity that has Storage Queue Data Message Processor on the queue and Storage Blob
Data Reader on the archive container (infra/ ``handoffConsumerPrincipalId``)::

    python handoff_consumer.py --account <storage account>        # managed identity / az login
    python handoff_consumer.py --connection-string "$CONN"         # Azurite, locally

tests/integration/test_handoff.py runs it against the messages the receiver really sends.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

QUEUE = "altinn-archived"
LEASE_SECONDS = 300  # the message stays invisible to other consumers while this one works on it


class Mismatch(Exception):
    """A blob does not hold what the manifest says: do not start the case; alert someone."""


def _sha256(blobs: BlobServiceClient, container: str, name: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in blobs.get_blob_client(container, name).download_blob().chunks():  # streamed
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify(blobs: BlobServiceClient, message: dict[str, Any]) -> dict[str, Any]:
    """The manifest, once it and every element it lists are verified. Raises Mismatch."""
    container = message["container"]
    raw = blobs.get_blob_client(container, message["manifestBlob"]).download_blob().readall()
    if hashlib.sha256(raw).hexdigest() != message["manifestSha256"]:
        raise Mismatch(f"{message['manifestBlob']}: sha256 differs from the message")
    manifest = json.loads(raw)
    for element in manifest["dataElements"]:
        sha, size = _sha256(blobs, container, element["blob"])
        if sha != element["sha256"] or size != element["size"]:
            raise Mismatch(f"{element['blob']}: {size} bytes, sha256 {sha}; the manifest says {element['size']}, {element['sha256']}")
    return manifest


def consume_one(queue: QueueClient, blobs: BlobServiceClient, start_case: Callable[[dict[str, Any], dict[str, Any]], None]) -> str | None:
    """Take one message: verify, start the case (idempotent on ``instanceId``: a message may come
    twice), then delete it. None when the queue is empty; the instance id otherwise. A message whose
    check fails is left on the queue (it comes back after the lease) and the error propagates."""
    for item in queue.receive_messages(max_messages=1, visibility_timeout=LEASE_SECONDS):
        message = json.loads(base64.b64decode(item.content))
        manifest = verify(blobs, message)
        start_case(message, manifest)
        queue.delete_message(item)
        return str(message["instanceId"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--account", help="storage account name (uses DefaultAzureCredential)")
    parser.add_argument("--connection-string", help="a connection string instead (Azurite)")
    parser.add_argument("--queue", default=QUEUE)
    args = parser.parse_args(argv)
    if args.connection_string:
        queue = QueueClient.from_connection_string(args.connection_string, args.queue)
        blobs = BlobServiceClient.from_connection_string(args.connection_string)
    elif args.account:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        queue = QueueClient(f"https://{args.account}.queue.core.windows.net", args.queue, credential=credential)
        blobs = BlobServiceClient(f"https://{args.account}.blob.core.windows.net", credential=credential)
    else:
        parser.error("give --account or --connection-string")

    def start_case(message: dict[str, Any], manifest: dict[str, Any]) -> None:
        print(f"case for {message['org']}/{message['app']} {message['instanceId']}: {len(manifest['dataElements'])} element(s) verified")

    while consume_one(queue, blobs, start_case) is not None:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
