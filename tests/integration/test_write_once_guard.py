"""tests/support/write_once.py: the write-once guard in front of Azurite, over real sockets.

In an ``archive-`` container it refuses (409 WriteOnceViolation, recorded) an overwrite, a Set
Metadata and a Delete, and lets write-once uploads, reads and block staging through; in a
``state-`` container it lets everything through. The ``env`` fixture points the app at it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError, ServiceResponseError
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient

from tests.support.write_once import WriteOnceGuard, classify_batch, is_archive_container, with_blob_endpoint

MIB = 1024 * 1024


@pytest.fixture
def guard(azurite: Any) -> Iterator[WriteOnceGuard]:
    """A guard of this test's own (not the session's), so its record is this test's alone."""
    with WriteOnceGuard(azurite.blob_port, azurite.host) as g:
        yield g


def containers(azurite: Any, guard: WriteOnceGuard, prefix: str) -> tuple[ContainerClient, ContainerClient]:
    """(direct to Azurite, through the guard) clients of a new container named ``prefix-...``."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    direct = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(name)
    direct.create_container()
    through = BlobServiceClient.from_connection_string(
        guard.connection_string(azurite.connection_string), retry_total=0, max_single_put_size=MIB, max_block_size=MIB
    ).get_container_client(name)
    return direct, through


def test_refuses_overwrite_set_metadata_and_delete_in_an_archive_container(azurite: Any, guard: WriteOnceGuard) -> None:
    direct, through = containers(azurite, guard, "archive")
    direct.upload_blob("a/doc.json", b'{"v": 1}', metadata={"sha256": "x"})

    with pytest.raises(HttpResponseError) as overwrite:
        through.get_blob_client("a/doc.json").upload_blob(b'{"v": 2}', overwrite=True)
    with pytest.raises(HttpResponseError) as metadata:
        through.get_blob_client("a/doc.json").set_blob_metadata({"confirmed": "yes"})
    with pytest.raises(HttpResponseError) as delete:
        through.get_blob_client("a/doc.json").delete_blob()

    for refused in (overwrite.value, metadata.value, delete.value):
        assert refused.status_code == 409
        assert getattr(refused, "error_code", None) == "WriteOnceViolation"
    # Nothing reached Azurite: the blob is as it was.
    assert direct.download_blob("a/doc.json").readall() == b'{"v": 1}'
    assert direct.get_blob_client("a/doc.json").get_blob_properties().metadata == {"sha256": "x"}

    recorded = guard.take()
    assert [v.method for v in recorded] == ["PUT", "PUT", "DELETE"]
    assert all(v.path.endswith(f"/{direct.container_name}/a/doc.json") for v in recorded)
    assert "If-None-Match" in recorded[0].rule and "comp=metadata" in recorded[1].query and "Delete Blob" in recorded[2].rule

    # Staging a block is harmless; committing a block list without If-None-Match: * is refused.
    staged = through.get_blob_client("a/doc.json")
    staged.stage_block("QkJCQg==", b"overwritten")
    with pytest.raises(HttpResponseError) as commit:
        staged.commit_block_list([BlobBlock("QkJCQg==")])
    assert commit.value.status_code == 409
    assert direct.download_blob("a/doc.json").readall() == b'{"v": 1}'
    assert [("Put Block List" in v.rule, v.query) for v in guard.take()] == [(True, "comp=blocklist")]
    assert guard.violations == []


def test_lets_write_once_uploads_reads_and_staging_through_in_an_archive_container(azurite: Any, guard: WriteOnceGuard) -> None:
    direct, through = containers(azurite, guard, "archive")
    body = os.urandom(3 * MIB + 5)
    through.get_blob_client("big.bin").upload_blob(body, overwrite=False, max_concurrency=2)  # staged blocks, then a write-once commit
    through.upload_blob("small.json", b"{}", overwrite=False)
    with pytest.raises(ResourceExistsError) as exists:  # Azurite's own refusal, not the guard's
        through.upload_blob("small.json", b"[]", overwrite=False)
    assert getattr(exists.value, "error_code", None) == "BlobAlreadyExists"
    blob = through.get_blob_client("staged.bin")
    blob.stage_block("AAAA", b"x" * 10)
    blob.commit_block_list([BlobBlock("AAAA")], match_condition=MatchConditions.IfMissing)  # the product's commit (MatchConditions.IfMissing)

    downloaded = through.download_blob("big.bin", max_concurrency=2).readall()
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(body).digest()
    assert sorted(b.name for b in through.list_blobs()) == ["big.bin", "small.json", "staged.bin"]
    assert through.get_blob_client("small.json").get_blob_properties().size == 2
    assert direct.download_blob("staged.bin").readall() == b"x" * 10
    assert guard.violations == []


def test_lets_everything_through_in_a_state_container(azurite: Any, guard: WriteOnceGuard) -> None:
    direct, through = containers(azurite, guard, "state")
    direct.upload_blob("deferred/x.json", b"1")
    through.get_blob_client("deferred/x.json").upload_blob(b"2", overwrite=True)
    assert direct.download_blob("deferred/x.json").readall() == b"2"
    through.get_blob_client("deferred/x.json").set_blob_metadata({"k": "v"})
    assert direct.get_blob_client("deferred/x.json").get_blob_properties().metadata == {"k": "v"}
    through.get_blob_client("deferred/x.json").delete_blob()
    assert list(direct.list_blobs()) == []
    through.delete_container()
    assert guard.violations == []


def test_an_unreachable_upstream_closes_the_connection_without_an_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens once the socket is closed
    with WriteOnceGuard(dead_port) as dead:
        conn = http.client.HTTPConnection("127.0.0.1", dead.port, timeout=5)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.request("GET", "/devstoreaccount1?comp=list")
            conn.getresponse()
        client = BlobServiceClient(dead.blob_endpoint("devstoreaccount1"), retry_total=0)
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            client.get_container_client("archive-x").get_container_properties()
        assert dead.violations == []


def test_rules() -> None:
    assert is_archive_container("archive-abc") and is_archive_container("altinn-data")
    assert not is_archive_container("state-abc") and not is_archive_container("azure-webjobs-hosts")
    batch = (
        b"--batch_1\r\nContent-Type: application/http\r\n\r\n"
        b"DELETE /archive-1/a/b.json? HTTP/1.1\r\nx-ms-date: now\r\n\r\n"
        b"--batch_1\r\nContent-Type: application/http\r\n\r\n"
        b"DELETE /state-1/deferred/c.json? HTTP/1.1\r\n\r\n--batch_1--\r\n"
    )
    assert [(m, t) for m, t, _ in classify_batch(batch, is_archive_container, "devstoreaccount1")] == [("DELETE", "/devstoreaccount1/archive-1/a/b.json?")]
    assert with_blob_endpoint("A=1;BlobEndpoint=http://x/acc;Q=2;", "http://y/acc") == "A=1;BlobEndpoint=http://y/acc;Q=2;"


def test_the_app_setting_goes_through_the_session_guard(env: dict[str, str], azurite: Any, write_once: WriteOnceGuard) -> None:
    assert f"BlobEndpoint=http://127.0.0.1:{write_once.port}/devstoreaccount1;" in env["AzureWebJobsStorage"]
    assert os.environ["AzureWebJobsStorage"] == env["AzureWebJobsStorage"]
    assert env["AzureWebJobsStorage"].replace(f":{write_once.port}/", f":{azurite.blob_port}/") == azurite.connection_string
