"""Limits that keep the code easy to carry on, enforced: no function over about 60 lines, no module
in shared/ or devtools/ over about 400, and function_app.py (a module, outside import-linter's
packages) imports only the top layer. ruff enforces cyclomatic complexity 15 (pyproject.toml) and
import-linter the layers of shared/ (`make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 420
SOURCES = sorted(p for folder in ("shared", "devtools") for p in (ROOT / folder).rglob("*.py"))


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of a function without its docstring, blank lines and comment-only lines."""
    body = getattr(node, "body", [])
    skip: set[int] = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
        skip = set(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for n in range(node.lineno, node.end_lineno + 1):  # type: ignore[attr-defined]
        text = lines[n - 1].strip()
        if n not in skip and text and not text.startswith("#"):
            count += 1
    return count


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_functions_are_short(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    long = [
        f"{node.name} ({_code_lines(node, lines)} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node, lines) > MAX_FUNCTION_LINES
    ]
    assert long == [], f"split into named steps: {long}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_modules_are_small(path: Path) -> None:
    count = len(path.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_MODULE_LINES, f"{count} lines: split it by concern"


def test_function_app_imports_only_the_top_layer() -> None:
    tree = ast.parse((ROOT / "function_app.py").read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    ours = {name for name in imported if name.startswith("shared")}
    assert ours <= {"shared", "shared.config", "shared.pipeline", "shared.catchup", "shared.telemetry"}, ours


def test_every_package_of_shared_is_packaged() -> None:
    """A wheel built from pyproject.toml holds every sub-package of shared (not only the editable install)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "shared").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
