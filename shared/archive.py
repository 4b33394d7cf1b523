"""Blob layout, streaming writes and the manifest.

Layout per instance, under ``{org}/{app}/{partyId}/{instanceGuid}/``:

* ``data/{dataElementId}`` - the bytes, with content type, a content disposition carrying the
  original filename, and metadata (data type, sha256, scan result);
* ``instance.json`` - the instance as Altinn returned it;
* ``manifest.json`` - written last, only if it does not exist yet (``If-None-Match: *``): its
  presence means the archive is complete. After ``/complete`` succeeded it gets the metadata
  ``confirmed``.

Large elements are uploaded as blocks that are committed only after the byte count and sha256
are known and checked, so a partial or corrupt download never becomes a visible blob, whatever
happens to the process. Memory is bounded by ``block_size * (upload_concurrency + 1)`` per element.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from shared.errors import TransientError
from shared.events import InstanceRef

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INSTANCE = "instance.json"
MANIFEST_VERSION = 1


def data_blob_name(ref: InstanceRef, element_id: str) -> str:
    return f"{ref.prefix}data/{element_id}"


def content_disposition(filename: str | None) -> str | None:
    """``attachment; filename="ascii"; filename*=UTF-8''...`` (RFC 6266), or None without a filename."""
    if not filename:
        return None
    name = filename.replace("\r", " ").replace("\n", " ")
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _meta(value: Any) -> str:
    """Blob metadata values must be ASCII: percent-encode anything else."""
    return quote(str(value), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")


@dataclass
class ElementResult:
    data_element_id: str
    data_type: str | None
    content_type: str | None
    filename: str | None
    size: int
    sha256: str
    blob: str
    file_scan_result: str | None = None
    reused: bool = False

    @property
    def infected(self) -> bool:
        return self.file_scan_result == "Infected"

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "dataElementId": self.data_element_id,
            "dataType": self.data_type,
            "contentType": self.content_type,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "blob": self.blob,
            "fileScanResult": self.file_scan_result,
            "infected": self.infected,
        }


def build_manifest(
    ref: InstanceRef,
    elements: Iterable[ElementResult],
    *,
    event_id: str | None,
    archived_at: datetime | None = None,
    instance_blob: str | None = None,
) -> dict[str, Any]:
    """The manifest document (pure)."""
    entries = [e.manifest_entry() for e in elements]
    archived_at = archived_at or datetime.now(UTC)
    return {
        "manifestVersion": MANIFEST_VERSION,
        "org": ref.org,
        "app": ref.app,
        "partyId": ref.party_id,
        "instanceGuid": ref.instance_guid,
        "instanceId": ref.instance_id,
        "eventId": event_id,
        "archivedAt": archived_at.isoformat().replace("+00:00", "Z"),
        "instanceBlob": instance_blob or ref.prefix + INSTANCE,
        "dataElements": entries,
        "totalBytes": sum(e["size"] for e in entries),
        "infected": [e["dataElementId"] for e in entries if e["infected"]],
    }


@dataclass
class ArchiveState:
    """What is already stored for an instance (one listing call)."""

    manifest: bool = False
    confirmed: str | None = None
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # element id -> size, metadata, content settings


def _storage_error(what: str, exc: Exception) -> TransientError:
    return TransientError(f"{what}: blob storage failed ({type(exc).__name__})")


class _Hashing:
    """Reads a requests response block by block, counting and hashing every byte.

    Each block is one ``urllib3`` read straight into a buffer of the block's size: no chunk list
    to join, so a block costs its own size in memory and one copy from the socket.
    """

    def __init__(self, response: Any) -> None:
        self._raw = response.raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read_block(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the body."""
        if size <= 0:
            return b""
        import requests
        import urllib3

        try:
            data = self._raw.read(size, decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"download interrupted ({type(exc).__name__})") from None
        self.sha.update(data)
        self.count += len(data)
        return data


class Archive:
    def __init__(self, container: ContainerClient, *, block_size: int = 8 * 1024 * 1024, upload_concurrency: int = 2) -> None:
        self.container = container
        self.block_size = block_size
        self.upload_concurrency = upload_concurrency
        # Below this an element goes in one Put Blob; the block path holds as much memory anyway.
        self.single_put_max = block_size * (upload_concurrency + 1)
        self._blocks = ThreadPoolExecutor(max_workers=16, thread_name_prefix="blob-block")
        self._container_ready = False

    # -- reading --------------------------------------------------------------------------------

    def state(self, ref: InstanceRef) -> ArchiveState:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        state = ArchiveState()
        try:
            for blob in self.container.list_blobs(name_starts_with=ref.prefix, include=["metadata"]):
                rest = blob.name[len(ref.prefix):]
                if rest == MANIFEST:
                    state.manifest = True
                    state.confirmed = (blob.metadata or {}).get("confirmed")
                elif rest.startswith("data/"):
                    state.data[rest[5:]] = {
                        "size": blob.size,
                        "metadata": dict(blob.metadata or {}),
                        "content_type": blob.content_settings.content_type,
                    }
        except ResourceNotFoundError:
            return ArchiveState()  # no container yet: nothing archived
        except AzureError as exc:
            raise _storage_error("list archive", exc) from None
        return state

    # -- writing --------------------------------------------------------------------------------

    def ensure_container(self) -> None:
        if self._container_ready:
            return
        from azure.core.exceptions import AzureError, ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise _storage_error("create container", exc) from None
        self._container_ready = True

    def write_json(self, name: str, document: Any, *, only_if_new: bool = False, metadata: dict[str, str] | None = None) -> bool:
        """Upload a JSON document. With ``only_if_new``, False when the blob already existed."""
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import ContentSettings

        body = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
        try:
            # overwrite=False sends If-None-Match: *, so of two writers exactly one creates the blob.
            self.container.get_blob_client(name).upload_blob(
                body,
                overwrite=not only_if_new,
                content_settings=ContentSettings(content_type="application/json; charset=utf-8"),
                metadata=metadata,
            )
        except ResourceExistsError:
            if only_if_new:
                return False
            raise
        except AzureError as exc:
            raise _storage_error(f"write {name.rsplit('/', 1)[-1]}", exc) from None
        return True

    def mark_confirmed(self, ref: InstanceRef, when: datetime | None = None) -> None:
        from azure.core.exceptions import AzureError

        when = when or datetime.now(UTC)
        try:
            self.container.get_blob_client(ref.prefix + MANIFEST).set_blob_metadata({"confirmed": when.isoformat().replace("+00:00", "Z")})
        except AzureError as exc:
            raise _storage_error("mark manifest confirmed", exc) from None

    def write_element(self, ref: InstanceRef, element: dict[str, Any], response: Any) -> ElementResult:
        """Stream one data element from an open response into its blob, verified before commit."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContentSettings

        element_id = element["id"]
        name = data_blob_name(ref, element_id)
        expected = element.get("size")
        header_length = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        content_type = element.get("contentType") or response.headers.get("Content-Type") or "application/octet-stream"
        filename = element.get("filename")
        reader = _Hashing(response)
        blob = self.container.get_blob_client(name)

        def verify() -> str:
            if header_length is not None and not encoded and header_length.isdigit() and int(header_length) != reader.count:
                raise TransientError(f"data element {element_id}: got {reader.count} bytes, Content-Length said {header_length}")
            if isinstance(expected, int) and expected != reader.count:
                raise TransientError(f"data element {element_id}: got {reader.count} bytes, the instance says {expected}")
            return reader.sha.hexdigest()

        def metadata(sha: str) -> dict[str, str]:
            meta = {"dataElementId": element_id, "dataType": _meta(element.get("dataType") or ""), "sha256": sha}
            scan = element.get("fileScanResult")
            if scan:
                meta["fileScanResult"] = _meta(scan)
            if scan == "Infected":
                meta["infected"] = "true"
            return meta

        settings = ContentSettings(content_type=content_type, content_disposition=content_disposition(filename))
        # An element announced smaller than single_put_max (what the block path holds anyway) is
        # read into one buffer and sent in one Put Blob: one request instead of blocks + commit, and
        # the service computes the blob's MD5 itself. Anything else streams block by block.
        announced = int(header_length) if header_length is not None and not encoded and header_length.isdigit() else expected
        try:
            if isinstance(announced, int) and 0 <= announced < self.single_put_max:
                blocks = [reader.read_block(announced)]  # one buffer of the announced size
                if more := reader.read_block(self.block_size):  # longer than announced: stream it as blocks
                    blocks.append(more)
                ended = len(blocks) == 1
            else:
                blocks = [reader.read_block(self.block_size)]
                ended = len(blocks[0]) < self.block_size
            if ended:  # the whole element is in one buffer
                data = blocks[0]
                blocks.clear()
                sha = verify()
                blob.upload_blob(data, overwrite=True, content_settings=settings, metadata=metadata(sha), length=len(data))
            else:
                sha = self._upload_blocks(blob, reader, blocks, verify, settings, metadata)
        except AzureError as exc:
            raise _storage_error(f"write data element {element_id}", exc) from None
        finally:
            response.close()
        return ElementResult(
            data_element_id=element_id,
            data_type=element.get("dataType"),
            content_type=content_type,
            filename=filename,
            size=reader.count,
            sha256=sha,
            blob=name,
            file_scan_result=element.get("fileScanResult"),
        )

    def _upload_blocks(self, blob: Any, reader: _Hashing, blocks: list[bytes], verify: Any, settings: Any, metadata: Any) -> str:
        """Stage ``blocks`` (read ahead), then the rest of the body, ``upload_concurrency`` at a time."""
        attempt = uuid.uuid4().hex[:12]  # block ids unique per attempt: two writers never mix blocks
        ids: list[str] = []
        pending: list[Future[Any]] = []
        try:
            while block := (blocks.pop(0) if blocks else reader.read_block(self.block_size)):
                block_id = f"{attempt}-{len(ids):08d}"
                ids.append(block_id)
                pending.append(self._blocks.submit(blob.stage_block, block_id, block, length=len(block), validate_content=True))
                while len(pending) >= self.upload_concurrency:
                    pending.pop(0).result()
            for future in pending:
                future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        sha = verify()  # nothing is committed unless the bytes are all there
        blob.commit_block_list(ids, content_settings=settings, metadata=metadata(sha))
        return sha
