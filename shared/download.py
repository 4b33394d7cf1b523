"""One data element's body from Altinn storage, read block by block: counted, hashed, never more
than the element's ``size`` + 1 bytes, within its deadline (see shared/http.py)."""

from __future__ import annotations

import hashlib
from typing import Any

from shared.errors import TransientError
from shared.http import Deadline
from shared.models import DataElement


class Download:
    """One data element's body, read block by block: counted, hashed, never more than ``size`` + 1
    bytes (one more shows that it is too long), within its deadline. ``close()`` always."""

    def __init__(self, resp: Any, element: DataElement, deadline: Deadline, what: str) -> None:
        self.resp = resp
        self.element = element
        self.deadline = deadline
        self.what = what
        self.sha = hashlib.sha256()
        self.count = 0
        self._raw = resp.raw

    @property
    def content_type(self) -> str | None:
        return self.resp.headers.get("Content-Type")

    def read_block(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the body. TransientError as soon as the
        body runs past the element's size, or is interrupted, or the deadline passes."""
        import requests
        import urllib3

        room = self.element.size + 1 - self.count
        size = min(size, room)
        if size <= 0:
            return b""
        try:
            data = self._raw.read(size, decode_content=False)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self.deadline.expired:
                raise self.deadline.error() from None
            raise TransientError(f"{self.what}: download interrupted ({type(exc).__name__})") from None
        if self.deadline.expired:
            raise self.deadline.error()
        self.sha.update(data)
        self.count += len(data)
        if self.count > self.element.size:
            raise TransientError(f"{self.what}: the body is longer than the {self.element.size} bytes the instance says; cut off")
        return data

    def finish(self) -> str:
        """The sha256 (hex) once the whole body was read and its length is the element's size."""
        if self.count != self.element.size:
            raise TransientError(f"{self.what}: got {self.count} bytes, the instance says {self.element.size}")
        return self.sha.hexdigest()

    def close(self) -> None:
        try:
            self.resp.close()
        finally:
            self.deadline.stop()
