"""Every test the README and docs/ name as proof of a guarantee exists (file and function), so a
renamed or removed test cannot leave a guarantee unproven on paper."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
BARE = re.compile(r"`(test_\w+)`")


def cited() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for path, name in CITED.findall(page.read_text(encoding="utf-8")):
            found.append((page.relative_to(ROOT).as_posix(), path, name))
    return found


def test_pages_cite_tests() -> None:
    assert len(cited()) >= 20, "the guarantees table names its tests as `tests/...py::test_name`"


@pytest.mark.parametrize(("page", "path", "name"), cited(), ids=lambda v: str(v))
def test_a_cited_test_exists(page: str, path: str, name: str) -> None:
    source = ROOT / path
    assert source.is_file(), f"{page} cites {path}, which does not exist"
    assert re.search(rf"^\s*(async\s+)?def {name}\(", source.read_text(encoding="utf-8"), re.M), f"{page} cites {path}::{name}, which does not exist"


def test_bare_test_names_in_the_hand_off_page_exist() -> None:
    text = (ROOT / "docs" / "handoff.md").read_text(encoding="utf-8")
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    for name in BARE.findall(text):
        assert re.search(rf"^\s*def {name}\(", sources, re.M), f"docs/handoff.md names {name}, which does not exist"
