"""Blob layout, streaming writes and the manifest.

Layout per instance, under ``{org}/{app}/{partyId}/{instanceGuid}/``:

* ``data/{dataElementId}`` - the bytes, with content type, a content disposition carrying the
  original filename, and metadata (data type, sha256, scan result);
* ``instance.json`` - the instance as Altinn storage returned it to the attempt that completed the
  archive (written after the data, just before the manifest; metadata ``sha256``). Like every blob
  here it is written once: should an earlier attempt have left one with another view of the
  instance (it stopped before its manifest, and the instance changed meanwhile, say it was hard
  deleted), this attempt's view goes to ``instance-{time}.json`` and the manifest names it
  (``instanceBlob``, ``instanceSha256``), so the manifest and its instance document always agree;
* ``manifest.json`` - written last, only if it does not exist yet (``If-None-Match: *``): its
  presence means the archive is complete;
* ``confirmed.json`` - the marker that Altinn accepted ``/complete`` (metadata ``confirmedAt``);
  of two workers exactly one creates it, and that one hands the archive off;
* ``handoff.json`` - the record that the hand-off message for this archive was sent (its text);
* ``substatus.json`` - the record that the submitter's substatus was set (label, description);
* ``confirmation-refused/{time}.json`` - written once per refusal when the archive is whole but
  Altinn refused ``/complete`` (403: the app's policy does not grant it to the org), with the
  reason: catch-up leaves the instance alone for ``CATCHUP_REFUSED_QUIET_HOURS`` after it.

Every blob is written once (``If-None-Match: *`` on every Put Blob and Put Block List): nothing
here changes or replaces a blob that exists, and nothing deletes one, so the archive container can
carry a version-level immutability policy (infra/ ``archiveImmutabilityDays``). A data element
found stored is used only when its size and recorded sha256 match; one that exists with other
bytes is refused (permanent), never overwritten.

Large elements are uploaded as blocks that are committed only after the byte count and sha256
are known and checked, so a partial or corrupt download never becomes a visible blob, whatever
happens to the process. Memory is bounded by ``block_size * (upload_concurrency + 1)`` per element.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from shared.errors import PermanentError, TransientError
from shared.models import DataElement, Instance, InstanceRef, ScanResult, iso, parse_time, to_json_dict

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient


class Download(Protocol):
    """A data element's body as the Altinn client hands it over (shared.altinn.Download): read
    block by block, never past the element's size, sha256 only once it is whole."""

    count: int

    @property
    def content_type(self) -> str | None: ...

    def read_block(self, size: int) -> bytes: ...

    def finish(self) -> str: ...

    def close(self) -> None: ...


log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INSTANCE = "instance.json"
REFUSED = "confirmation-refused/"
CONFIRMED = "confirmed.json"
HANDOFF = "handoff.json"
SUBSTATUS = "substatus.json"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # ours: 31,000 elements make about 17 MB
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
        return self.file_scan_result == ScanResult.INFECTED.value

    def manifest_entry(self) -> dict[str, Any]:
        return to_json_dict(self, exclude=("reused",), infected=self.infected)


def build_manifest(
    ref: InstanceRef,
    elements: Iterable[ElementResult],
    *,
    event_id: str | None,
    archived_at: datetime | None = None,
    instance_blob: str | None = None,
    instance_sha256: str | None = None,
    instance: Instance | None = None,
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
        "archivedAt": iso(archived_at),
        "instanceBlob": instance_blob or ref.prefix + INSTANCE,
        "instanceSha256": instance_sha256,
        "processEnded": instance.process_ended if instance else None,
        # Hard deleted by the submitter or by autoDeleteOnProcessEnd: storage keeps it for the service
        # owner and purges it once confirmed (see ../shared/altinn-contracts.md section 5).
        "hardDeleted": instance.hard_deleted if instance else False,
        "dataElements": entries,
        "totalBytes": sum(e["size"] for e in entries),
        "infected": [e["dataElementId"] for e in entries if e["infected"]],
    }


@dataclass
class ArchiveState:
    """What is already stored for an instance (one listing call)."""

    manifest: bool = False
    confirmed: str | None = None  # when the confirmed.json marker says Altinn accepted /complete
    handed_off: bool = False
    substatus_set: bool = False
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # element id -> size, metadata, content settings
    refusals: list[str] = field(default_factory=list)  # times (ISO) Altinn refused /complete, oldest first
    instance_sha256: str | None = None  # of the stored instance.json, when there is one

    @property
    def last_refusal(self) -> datetime | None:
        return parse_time(self.refusals[-1]) if self.refusals else None


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def _storage_error(what: str, exc: Exception) -> TransientError:
    return TransientError(f"{what}: blob storage failed ({type(exc).__name__})")


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
                rest = blob.name[len(ref.prefix) :]
                if rest == MANIFEST:
                    state.manifest = True
                elif rest == CONFIRMED:
                    state.confirmed = (blob.metadata or {}).get("confirmedAt") or "unknown"
                elif rest == HANDOFF:
                    state.handed_off = True
                elif rest == SUBSTATUS:
                    state.substatus_set = True
                elif rest == INSTANCE:
                    state.instance_sha256 = (blob.metadata or {}).get("sha256") or "unknown"
                elif rest.startswith(REFUSED) and rest.endswith(".json"):
                    state.refusals.append((blob.metadata or {}).get("refusedAt") or "")
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
        state.refusals.sort()
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

    def write_json(self, name: str, document: Any, *, metadata: dict[str, str] | None = None) -> bool:
        """Upload a JSON document write-once: False when the blob already existed (untouched)."""
        return self._create(name, _json_bytes(document), metadata)

    def write_manifest(self, ref: InstanceRef, document: dict[str, Any]) -> bytes | None:
        """Create ``manifest.json`` write-once: its bytes when this call created it, else None."""
        body = _json_bytes(document)
        return body if self._create(ref.prefix + MANIFEST, body, None) else None

    def _create(self, name: str, body: bytes, metadata: dict[str, str] | None) -> bool:
        """Put Blob with ``If-None-Match: *`` (overwrite=False): of two writers exactly one creates
        the blob; False for the other, and the blob is left as it was."""
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import ContentSettings

        try:
            self.container.get_blob_client(name).upload_blob(
                body, overwrite=False, content_settings=ContentSettings(content_type="application/json; charset=utf-8"), metadata=metadata
            )
        except ResourceExistsError:
            return False
        except AzureError as exc:
            raise _storage_error(f"write {name.rsplit('/', 1)[-1]}", exc) from None
        return True

    def read_manifest(self, ref: InstanceRef) -> bytes:
        """The stored manifest's bytes (for the hand-off: its sha256 and counts)."""
        from azure.core.exceptions import AzureError

        try:
            downloader = self.container.get_blob_client(ref.prefix + MANIFEST).download_blob()
            if downloader.size > MAX_MANIFEST_BYTES:
                raise TransientError(f"read manifest: {downloader.size} bytes, more than a manifest can be")
            return downloader.readall()
        except AzureError as exc:
            raise _storage_error("read manifest", exc) from None

    def write_instance(self, ref: InstanceRef, document: dict[str, Any], state: ArchiveState) -> tuple[str, str]:
        """Store the instance document write-once; ``(blob name, sha256)`` for the manifest. See the
        module docstring: ``instance.json``, or ``instance-{time}.json`` when an earlier attempt left
        an ``instance.json`` with another view."""
        body = _json_bytes(document)
        sha = hashlib.sha256(body).hexdigest()
        name = ref.prefix + INSTANCE
        if state.instance_sha256 is None and self._create(name, body, {"sha256": sha}):
            return name, sha
        if state.instance_sha256 == sha or (state.instance_sha256 is None and self._stored_sha256(name) == sha):
            return name, sha
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{ref.prefix}instance-{stamp}.json"
        if not self._create(name, body, {"sha256": sha}):
            raise TransientError("write instance document: a blob of that name exists already")
        return name, sha

    def _stored_sha256(self, name: str) -> str | None:
        from azure.core.exceptions import AzureError

        try:
            return (self.container.get_blob_client(name).get_blob_properties().metadata or {}).get("sha256")
        except AzureError as exc:
            raise _storage_error("read instance document", exc) from None

    def mark_confirmed(self, ref: InstanceRef, when: datetime | None = None) -> bool:
        """Write the ``confirmed.json`` marker once; True for the one caller that created it."""
        stamp = iso(when or datetime.now(UTC))
        doc = {"instanceId": ref.instance_id, "confirmedAt": stamp}
        return self.write_json(ref.prefix + CONFIRMED, doc, metadata={"confirmedAt": stamp})

    def write_record(self, ref: InstanceRef, name: str, document: dict[str, Any]) -> bool:
        """A write-once record beside the manifest (``handoff.json``, ``substatus.json``)."""
        return self.write_json(ref.prefix + name, document)

    def write_refusal(self, ref: InstanceRef, reason: str, status: int | None, when: datetime | None = None) -> bool:
        """Record, write-once, that Altinn refused ``/complete`` for a whole archive (False if that
        very record exists already)."""
        when = when or datetime.now(UTC)
        stamp = iso(when)
        name = f"{ref.prefix}{REFUSED}{when.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.json"
        doc = {"instanceId": ref.instance_id, "org": ref.org, "app": ref.app, "refusedAt": stamp, "status": status, "reason": reason}
        return self.write_json(name, doc, metadata={"refusedAt": stamp})

    def write_element(self, ref: InstanceRef, element: DataElement, download: Download) -> ElementResult:
        """Stream one data element from an open download into its blob, verified before commit.

        The download never yields more than ``size`` + 1 bytes and says the sha256 only when exactly
        ``size`` bytes came (``Download.finish``), so nothing shorter, longer or cut off is committed."""
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import ContentSettings

        name = data_blob_name(ref, element.id)
        content_type = element.content_type or download.content_type or "application/octet-stream"
        blob = self.container.get_blob_client(name)

        def metadata(sha: str) -> dict[str, str]:
            meta = {"dataElementId": element.id, "dataType": _meta(element.data_type), "sha256": sha}
            meta["fileScanResult"] = _meta(element.file_scan_result.value)
            if element.infected:
                meta["infected"] = "true"
            return meta

        settings = ContentSettings(content_type=content_type, content_disposition=content_disposition(element.filename))
        # An element smaller than single_put_max (what the block path holds anyway) is read into one
        # buffer and sent in one Put Blob: one request instead of blocks + commit, and the service
        # computes the blob's MD5 itself. Anything else streams block by block.
        # Write-once: If-None-Match: * on the Put Blob and on the Put Block List. Should another
        # worker have committed the element meanwhile, its blob is kept when it holds these bytes.
        try:
            if element.size < self.single_put_max:
                data = download.read_block(element.size)  # one buffer of the element's size
                download.read_block(1)  # raises if the body runs past the size
                sha = download.finish()
                try:
                    blob.upload_blob(data, overwrite=False, content_settings=settings, metadata=metadata(sha), length=len(data))
                except (ResourceExistsError, ResourceModifiedError):
                    self._check_existing(blob, element, sha)
            else:
                sha = self._upload_blocks(blob, download, settings, metadata, element)
        except AzureError as exc:
            raise _storage_error(f"write data element {element.id}", exc) from None
        finally:
            download.close()
        return ElementResult(
            data_element_id=element.id,
            data_type=element.data_type,
            content_type=content_type,
            filename=element.filename,
            size=download.count,
            sha256=sha,
            blob=name,
            file_scan_result=element.file_scan_result.value,
        )

    @staticmethod
    def _check_existing(blob: Any, element: DataElement, sha: str) -> None:
        """The element's blob exists already: keep it if it holds exactly these bytes, else refuse."""
        props = blob.get_blob_properties()
        stored = (props.metadata or {}).get("sha256")
        if props.size != element.size or stored != sha:
            raise PermanentError(
                f"data element {element.id} is stored already with other content ({props.size} bytes, sha256 {stored}; "
                f"Altinn sends {element.size} bytes, sha256 {sha}); the archive is write-once, so it is not overwritten"
            )

    def _upload_blocks(self, blob: Any, reader: Download, settings: Any, metadata: Callable[[str], dict[str, str]], element: DataElement) -> str:
        """Stage the body block by block, ``upload_concurrency`` at a time; commit once verified."""
        attempt = uuid.uuid4().hex[:12]  # block ids unique per attempt: two writers never mix blocks
        ids: list[str] = []
        pending: list[Future[Any]] = []
        try:
            while block := reader.read_block(self.block_size):
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
        sha = reader.finish()  # nothing is committed unless the bytes are all there
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        try:
            blob.commit_block_list(ids, content_settings=settings, metadata=metadata(sha), match_condition=MatchConditions.IfMissing)
        except (ResourceExistsError, ResourceModifiedError):
            self._check_existing(blob, element, sha)
        return sha
