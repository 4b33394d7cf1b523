"""What the simulator holds besides instances: element specs, stored bodies, app metadata."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .constants import FORM_CLASS_REF
from .content import _iter_form_xml, iter_content


@dataclass
class ElementSpec:
    """One data element to create: metadata and its body.

    The body is exactly ``content`` when given (``size`` then defaults to ``len(content)``; give both to
    make the metadata disagree with the bytes), else it is generated deterministically, ``size`` bytes
    (default 400): a well-formed XML document for a form data type, random bytes for anything else.
    """

    data_type: str = "model"
    content_type: str = "application/xml"
    size: int | None = None
    filename: str | None = None
    file_scan_result: str = "NotApplicable"
    seed: int | None = None
    content: bytes | None = None

    def __post_init__(self) -> None:
        if self.content is not None:
            self.content = bytes(self.content)
        if self.size is None:
            self.size = len(self.content) if self.content is not None else 400


@dataclass
class _Body:
    kind: str  # "bytes" (given), "xml" (generated form document) or "random"
    size: int
    seed: int
    data: bytes | None = None

    def chunks(self) -> Iterator[bytes | memoryview]:
        if self.kind == "bytes":
            if self.data:
                yield memoryview(self.data)
        elif self.kind == "xml":
            yield from _iter_form_xml(self.seed, self.size)
        else:
            yield from iter_content(self.seed, self.size)

    def read(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())


def form_data_type(type_id: str = "model", *, task_id: str = "Task_1") -> dict[str, Any]:
    """An applicationmetadata.json data type for a form (``appLogic.classRef``), as Studio makes them."""
    return {
        "id": type_id,
        "allowedContentTypes": ["application/xml"],
        "appLogic": {"autoCreate": True, "classRef": FORM_CLASS_REF, "allowAnonymousOnStateless": False, "autoDeleteOnProcessEnd": False},
        "taskId": task_id,
        "maxCount": 1,
        "minCount": 1,
    }


def attachment_data_type(type_id: str, *, task_id: str = "Task_1", allowed_content_types: list[str] | None = None) -> dict[str, Any]:
    """A plain attachment data type (no ``appLogic``)."""
    doc: dict[str, Any] = {"id": type_id, "taskId": task_id, "maxCount": 0, "minCount": 0}
    if allowed_content_types is not None:
        doc["allowedContentTypes"] = list(allowed_content_types)
    return doc


@dataclass
class SimApp:
    """An app's metadata (applicationmetadata.json) and policy. Tests may change the fields at any time.

    - ``complete_allowed`` False: the XACML policy denies ``complete``; storage (and the app) answer 403.
    - ``deployed`` False: the app host answers 404 for every request to this app.
    - ``data_types``: removing one an instance still has makes the app API's instance GET answer 500 and
      storage's data GET for those elements 400.
    """

    org: str
    app: str
    data_types: list[dict[str, Any]]
    complete_allowed: bool = True
    deployed: bool = True
    auto: bool = False  # made on first use by add_instance/load_instance: data types seen later are added

    @property
    def id(self) -> str:
        return f"{self.org}/{self.app}"

    def metadata(self) -> dict[str, Any]:
        """The applicationmetadata.json document."""
        return {"id": self.id, "org": self.org, "title": {"nb": self.app}, "dataTypes": copy.deepcopy(self.data_types), "autoDeleteOnProcessEnd": False}

    def data_type(self, type_id: str | None, *, ignore_case: bool = False) -> dict[str, Any] | None:
        for dt in self.data_types:
            dt_id = dt.get("id")
            if dt_id == type_id or (ignore_case and isinstance(dt_id, str) and isinstance(type_id, str) and dt_id.lower() == type_id.lower()):
                return dt
        return None

    def is_form(self, type_id: str | None) -> bool:
        dt = self.data_type(type_id)
        return bool(dt and (dt.get("appLogic") or {}).get("classRef") is not None)
