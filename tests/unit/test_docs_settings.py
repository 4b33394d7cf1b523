"""docs/settings.md and the code agree: its table lists exactly the settings ``shared.config`` reads
(``SETTING_NAMES``), every simple default it shows is the code's, and "required" is said of exactly
the settings without which the settings do not load.

(That infra/main.bicep sets only known settings is tests/infra/test_bicep.py's
``test_no_forbidden_or_unexpected_settings``.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import load_settings, names
from shared.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
HEADING = "## All settings"

# Setting -> the default it must show, from the constant in shared/config/names.py where one exists.
CONSTANT_DEFAULTS: dict[str, object] = {
    names.ALTINN_EVENT_TYPES: names.DEFAULT_EVENT_TYPES,
    names.MASKINPORTEN_SCOPES: names.DEFAULT_SCOPES,
    names.STORAGE: names.DEFAULT_STORAGE,
    names.ARCHIVE_CONTAINER: names.DEFAULT_CONTAINER,
    names.ARCHIVE_STATE_CONTAINER: names.DEFAULT_STATE_CONTAINER,
    names.ARCHIVE_MIN_DOWNLOAD_RATE_KIB: names.DEFAULT_MIN_DOWNLOAD_RATE_KIB,
    names.ARCHIVE_RETRY_SCHEDULE: names.DEFAULT_RETRY_SCHEDULE,
    names.ARCHIVE_RETRY_MAX_HOURS: names.DEFAULT_RETRY_MAX_HOURS,
    names.ARCHIVE_HANDOFF_QUEUE: names.DEFAULT_HANDOFF_QUEUE,
    names.CATCHUP_SCHEDULE: names.DEFAULT_CATCHUP_SCHEDULE,
    names.CATCHUP_MAX_INSTANCES: names.DEFAULT_CATCHUP_MAX_INSTANCES,
    names.CATCHUP_TIME_BUDGET_SECONDS: names.DEFAULT_CATCHUP_TIME_BUDGET,
    names.CATCHUP_REFUSED_QUIET_HOURS: names.DEFAULT_REFUSED_QUIET_HOURS,
}
REQUIRED = "required"
MINIMAL_ENV = {
    names.ALTINN_APPS: "ttd/test-app",
    names.MASKINPORTEN_CLIENT_ID: "test-client",
    names.MASKINPORTEN_PRIVATE_KEY: "not parsed by load_settings",
}


def _shown(value: object) -> str:
    """A default as the page writes it: numbers without a needless ``.0``, a schedule comma separated."""
    if isinstance(value, tuple):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_table(text: str) -> dict[str, str]:
    """``{name: default cell}`` of the table under HEADING; duplicates and odd rows fail."""
    lines = text.splitlines()
    assert HEADING in lines, f"docs/settings.md has no {HEADING!r} section"
    rows = []
    for line in lines[lines.index(HEADING) + 1 :]:
        if line.startswith("|"):
            rows.append(_cells(line))
        elif rows:
            break  # the first table under the heading ends here
    assert len(rows) > 2, f"no table under {HEADING!r}"
    header, separator, body = rows[0], rows[1], rows[2:]
    assert header[:2] == ["name", "default"], f"the table's first columns must be name, default: {header}"
    assert all(set(cell) <= set("-: ") for cell in separator), "the second row must be the separator"
    table: dict[str, str] = {}
    for row in body:
        assert len(row) == len(header), f"row with {len(row)} cells, header has {len(header)}: {row}"
        match = re.fullmatch(r"`([A-Za-z0-9_]+)`", row[0])
        assert match, f"the name cell must be one setting in backticks: {row[0]!r}"
        name = match.group(1)
        assert name not in table, f"{name} is listed twice"
        table[name] = row[1]
    return table


@pytest.fixture(scope="module")
def table() -> dict[str, str]:
    return parse_table(DOC.read_text(encoding="utf-8"))


def _default(cell: str) -> str | None:
    """The default a cell shows: the whole cell in backticks, or None (required, none, from ...)."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def test_the_table_lists_exactly_the_settings_the_code_reads(table: dict[str, str]) -> None:
    missing = [n for n in names.SETTING_NAMES if n not in table]
    unknown = [n for n in table if n not in names.SETTING_NAMES]
    assert not missing, f"settings read by shared.config but missing from docs/settings.md: {missing}"
    assert not unknown, f"docs/settings.md lists settings shared.config does not read: {unknown}"


@pytest.mark.parametrize("name", sorted(CONSTANT_DEFAULTS))
def test_defaults_are_the_constants(table: dict[str, str], name: str) -> None:
    assert name in table, f"{name} is not in the table"
    assert _default(table[name]) == _shown(CONSTANT_DEFAULTS[name]), (
        f"docs/settings.md shows {table[name]!r} as the default of {name}; shared/config/names.py says {_shown(CONSTANT_DEFAULTS[name])!r}"
    )


def test_defaults_without_a_constant_are_what_load_settings_makes(table: dict[str, str]) -> None:
    settings = load_settings(MINIMAL_ENV)
    loaded = {
        names.ALTINN_ENVIRONMENT: settings.environment,
        names.ARCHIVE_PARALLEL_DOWNLOADS: settings.parallel_downloads,
        names.ARCHIVE_BLOCK_SIZE_MIB: settings.block_size // (1024 * 1024),
    }
    for name, value in loaded.items():
        assert _default(table[name]) == _shown(value), f"{name}: docs/settings.md shows {table[name]!r}, the code's default is {value!r}"
    # The constants are the defaults load_settings applies (the page is checked against the constants).
    assert settings.archive_container == names.DEFAULT_CONTAINER and settings.state_container == names.DEFAULT_STATE_CONTAINER
    assert settings.retry_schedule == names.DEFAULT_RETRY_SCHEDULE and settings.handoff_queue == names.DEFAULT_HANDOFF_QUEUE
    assert settings.catchup_schedule == names.DEFAULT_CATCHUP_SCHEDULE and settings.catchup_time_budget == names.DEFAULT_CATCHUP_TIME_BUDGET


def test_required_is_said_of_exactly_the_settings_that_must_be_set(table: dict[str, str]) -> None:
    shown_required = {n for n, cell in table.items() if cell == REQUIRED}
    assert shown_required == set(MINIMAL_ENV), f"docs/settings.md marks {sorted(shown_required)} required; the code needs {sorted(MINIMAL_ENV)}"
    for name in MINIMAL_ENV:
        env = {k: v for k, v in MINIMAL_ENV.items() if k != name}
        with pytest.raises(ConfigError) as failed:
            load_settings(env)
        assert failed.value.setting == name


def test_the_parser_catches_a_wrong_page() -> None:
    """The checks above can fail: a table with a setting missing, an unknown one or a wrong default."""
    good = DOC.read_text(encoding="utf-8")
    table = parse_table(good)
    dropped = parse_table(good.replace("| `ARCHIVE_HANDOFF_QUEUE` |", "| `ARCHIVE_HANDOFF_QUEUES` |", 1))
    assert names.ARCHIVE_HANDOFF_QUEUE not in dropped and "ARCHIVE_HANDOFF_QUEUES" in dropped
    wrong = parse_table(good.replace("| `CATCHUP_MAX_INSTANCES` | `5000` |", "| `CATCHUP_MAX_INSTANCES` | `500` |", 1))
    assert _default(wrong[names.CATCHUP_MAX_INSTANCES]) != _shown(names.DEFAULT_CATCHUP_MAX_INSTANCES)
    assert _default(table[names.CATCHUP_MAX_INSTANCES]) == _shown(names.DEFAULT_CATCHUP_MAX_INSTANCES)
    with pytest.raises(AssertionError, match="listed twice"):
        parse_table(good.replace(HEADING, HEADING + "\n\n| name | default |\n|---|---|\n| `A` | x |\n| `A` | y |", 1))
