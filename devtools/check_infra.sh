#!/usr/bin/env bash
# Security scan of infra/ (Bicep) with checkov, in its own venv (.venv-checkov): checkov's pins
# clash with the app's, so it never goes into .venv. Exits non-zero when any check fails.
#
#   devtools/check_infra.sh            # scan, print failures and the summary counts
#   PYTHON=python3.11 devtools/check_infra.sh
#
# Skipped checks carry an inline `#checkov:skip=CKV_...: reason` next to the resource.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-checkov"
REQ="$ROOT/requirements-checkov.txt"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# (Re)install when the venv is missing or requirements-checkov.txt changed since the last install.
STAMP="$VENV/.requirements-checkov.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/checkov" || ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "check_infra: installing checkov into $VENV" >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    LOG="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ" >"$LOG" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$LOG" >&2 || true
        rm -f "$LOG"
        echo "check_infra: pip install -r requirements-checkov.txt failed" >&2
        exit 2
    fi
    rm -f "$LOG"
    echo "$WANT" >"$STAMP"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# One run, two reports: the failed checks on the console (--quiet: failures only, --compact: no
# code blocks) and a JSON report whose summary has the passed/failed/skipped counts.
set +e
BC_SKIP_MAPPING=TRUE "$VENV/bin/checkov" --framework bicep -d infra --compact --quiet --skip-download \
    --output cli --output json --output-file-path "console,$WORK/report.json"
STATUS=$?
set -e

set +e
"$VENV/bin/python" - "$WORK/report.json" <<'PY'
import json, sys

try:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
except (OSError, ValueError) as exc:
    print(f"check_infra: no checkov JSON report ({exc})", file=sys.stderr)
    sys.exit(2)
reports = data if isinstance(data, list) else [data]
totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
for report in reports:
    summary = report.get("summary", {})
    for key in totals:
        totals[key] += int(summary.get(key, 0) or 0)
print(
    "checkov (bicep, infra/): passed {passed}, failed {failed}, skipped {skipped}, "
    "parsing errors {parsing_errors}, resources {resource_count}".format(**totals)
)
sys.exit(1 if totals["failed"] or totals["parsing_errors"] or not totals["passed"] else 0)
PY
SUMMARY_STATUS=$?
set -e

# The skips and their reasons, as written next to the resources.
grep -rnoE "checkov:skip=[A-Z0-9_]+:.{0,90}" infra | sed 's/^/  /' || true

if [[ $STATUS -ne 0 || $SUMMARY_STATUS -ne 0 ]]; then
    echo "check_infra: FAILED" >&2
    exit 1
fi
echo "check_infra: OK"
