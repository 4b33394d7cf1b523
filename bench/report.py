"""Rows, checks, the printed table and ``results.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class Row:
    number: int
    benchmark: str
    figure: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: no target

    @property
    def status(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


@dataclass
class Check:
    """A correctness condition of the run (a count, never a time): a failed check fails the run."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    def row(self, *args: object, **kwargs: object) -> Row:
        r = Row(*args, **kwargs)  # type: ignore[arg-type]
        self.rows.append(r)
        print(f"  {r.figure}: {r.ours}" + (f" | baseline {r.baseline}" if r.baseline else "") + (f" | ratio {r.ratio}" if r.ratio else "")
              + (f" | target {r.target}: {r.status}" if r.target else ""), flush=True)  # fmt: skip
        return r

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        if not ok:
            print(f"  CHECK FAILED: {name} {detail}", flush=True)
        return bool(ok)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def missed_targets(self) -> list[Row]:
        return [r for r in self.rows if r.met is False]

    def table(self) -> str:
        head = ["#", "benchmark", "figure", "altinn-mottak", "baseline (same run)", "ratio", "target", ""]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            cells = [str(r.number), r.benchmark, r.figure, r.ours, r.baseline, r.ratio, r.target, r.status]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)

    def markdown(self, *, machine: dict[str, str], commands: list[str], started: datetime, seconds: float, mode: str) -> str:
        out = [
            "# Benchmark results",
            "",
            f"Mode: **{mode}**. Measured {started.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {seconds:.0f} s in all.",
            "Every figure is a ratio or a count against a baseline measured in the same run (alternating",
            "order, so drift on a noisy machine hits both sides); absolute rates are shown for scale only.",
            "",
            "## Machine",
            "",
            *(f"- {k}: {v}" for k, v in machine.items()),
            "",
            "## Commands",
            "",
            "```sh",
            *commands,
            "```",
            "",
            "## Settings",
            "",
            *(f"- {k}: {v}" for k, v in self.settings.items()),
            "",
            "## Results",
            "",
            self.table(),
            "",
        ]
        if self.notes:
            out += ["## Notes", "", *(f"- {n}" for n in self.notes), ""]
        out += ["## Checks (counts; a failed check fails the run)", ""]
        out += [f"- [{'x' if c.ok else ' '}] {c.name}" + (f": {c.detail}" if c.detail else "") for c in self.checks]
        out.append("")
        return "\n".join(out)

    def write(self, path: Path, **kwargs: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown(**kwargs), encoding="utf-8")  # type: ignore[arg-type]


def fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(ours: float, base: float, digits: int = 2) -> str:
    if not base or math.isnan(base) or math.isnan(ours):
        return "n/a"
    return f"{ours / base:.{digits}f}"
