"""Altinn's own sample payloads, read at test time from the team's folder beside the repository.

``../shared/real-altinn/`` holds data files from Altinn's repositories, byte for byte, with a
``SOURCES.md`` saying where each comes from. They are never copied into this repository (their
licences and their provenance stay with that folder). Where the folder is absent, as on a user's
fresh clone, the tests that need it skip with a message naming the folder; set
``ALTINN_MOTTAK_REAL_ALTINN`` to point elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDER = Path(os.environ.get("ALTINN_MOTTAK_REAL_ALTINN") or ROOT.parent / "shared" / "real-altinn")


def path(name: str) -> Path:
    """The file, or a skip naming the folder when it is not there."""
    found = FOLDER / name
    if not found.is_file():
        pytest.skip(
            f"Altinn's sample payloads are not available: {found} is missing (the folder {FOLDER}, ../shared/real-altinn "
            "beside the repository, or ALTINN_MOTTAK_REAL_ALTINN)"
        )
    return found


def read_bytes(name: str) -> bytes:
    return path(name).read_bytes()


def read_json(name: str) -> Any:
    """JSON as the file has it (some start with a UTF-8 BOM, as their source does)."""
    return json.loads(path(name).read_text(encoding="utf-8-sig"))
