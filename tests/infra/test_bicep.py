"""Infrastructure as code, checked without the Bicep CLI or a subscription.

* Every ``.bicep`` file parses with a real Bicep parser (pycep-parser), every module exists.
* Code and infra agree: every setting ``shared.config`` reads is an app setting, set from a
  parameter whose default and bounds the code accepts; queue and container names match
  ``shared.config`` and the bindings of ``function_app.app``.
* No app setting holds an account key, a SAS, a connection string with a key or a literal secret;
  the Maskinporten key is a Key Vault reference resolved with the user-assigned identity.
* The security posture the issue asks for (Flex Consumption, identity-only storage, RBAC Key
  Vault, local auth off) and the exact set of roles granted, each with its purpose comment.

checkov (its own venv, ``devtools/check_infra.sh``) covers the generic security rules.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shared import config
from shared.errors import ConfigError

pycep = pytest.importorskip("pycep", reason="pycep-parser is in requirements-dev.txt")

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
STORAGE_PREFIX = config.STORAGE + "__"

# Settings the platform needs beside the application's own (SETTING_NAMES).
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AZURE_CLIENT_ID",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY",
}
# Flex Consumption takes these from functionAppConfig and rejects them as app settings; the
# Azure Files ones need an account key.
FORBIDDEN_SETTINGS = {
    "AzureWebJobsStorage",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
}

# The complete set of built-in roles the template grants. Changing it is a security decision:
# update this table and the purpose comment in infra/app/rbac.bicep together.
ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "8a0f0c08-91a1-4084-bc3d-661d67233fed": "Storage Queue Data Message Processor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
# (role, scope symbol in rbac.bicep, principal) for every assignment.
EXPECTED_ASSIGNMENTS = {
    ("Storage Blob Data Owner", "storage", "appPrincipalId"),
    ("Storage Queue Data Contributor", "eventsQueue", "appPrincipalId"),
    ("Storage Queue Data Contributor", "poisonQueue", "appPrincipalId"),
    ("Storage Queue Data Contributor", "handoffQueue", "appPrincipalId"),
    ("Key Vault Secrets User", "vault", "appPrincipalId"),
    ("Monitoring Metrics Publisher", "applicationInsights", "appPrincipalId"),
    ("Key Vault Secrets Officer", "vault", "operatorPrincipalId"),
    ("Storage Blob Data Contributor", "archiveContainer", "operatorPrincipalId"),
    ("Storage Queue Data Contributor", "eventsQueue", "operatorPrincipalId"),
    ("Storage Queue Data Contributor", "poisonQueue", "operatorPrincipalId"),
    ("Storage Queue Data Message Processor", "handoffQueue", "handoffConsumerPrincipalId"),
    ("Storage Blob Data Reader", "archiveContainer", "handoffConsumerPrincipalId"),
}
PRIVILEGED_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",  # Owner
    "b24988ac-6180-42a0-ab88-20f7382dd24c",  # Contributor
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",  # User Access Administrator
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168",  # Role Based Access Control Administrator
    "17d1049b-9a84-46fb-8f53-869881c3d3ab",  # Storage Account Contributor (can list keys)
    "00482a5a-887f-4fb3-b363-3b7fe8e74483",  # Key Vault Administrator
}

SECRET_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"AccountKey\s*=",
        r"SharedAccessSignature",
        r"SharedAccessKey",
        r"[?&;]sig=",
        r"DefaultEndpointsProtocol",
        r"\blist(Keys|AccountSas|ServiceSas|Secrets|ConnectionStrings)\b",
        r"\.primaryKey|\.secondaryKey|primaryMasterKey",
        r"Password\s*=",
        r"-----BEGIN",
        r'"d"\s*:',  # JWK private exponent
    )
]
BASE64_BLOB = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


# ---- Parsing helpers ------------------------------------------------------------------------------


@cache
def _parser() -> Any:
    return pycep.BicepParser()


@cache
def parse(path: Path) -> dict[str, Any]:
    return _parser().parse(file_path=path)


def _symbols(doc: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for section in ("parameters", "variables", "resources", "modules"):
        names.update(doc.get(section, {}))
    return names


def _resources(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    """Resources of one type, with the body of conditional resources unwrapped."""
    out = {}
    for name, res in doc.get("resources", {}).items():
        if res["type"].lower() == rtype.lower():
            body = res["config"]
            if "condition" in body and "config" in body:
                body = body["config"]
            out[name] = body
    return out


def _one(doc: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = _resources(doc, rtype)
    assert len(found) == 1, f"expected exactly one {rtype}, found {sorted(found)}"
    return next(iter(found.values()))


def _param_default(doc: dict[str, Any], name: str) -> Any:
    assert name in doc["parameters"], f"parameter {name} missing"
    return doc["parameters"][name].get("default")


def _decorator(doc: dict[str, Any], param: str, kind: str) -> Any:
    for deco in doc["parameters"][param]["decorators"]:
        if deco["type"] == kind:
            return deco["argument"]
    return None


def _strings(value: Any) -> list[str]:
    """Every string leaf of a parsed expression (identifiers and literals alike)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _interpolated(value: str) -> set[str]:
    """Root symbols referenced inside ${...} of an interpolated string."""
    return {m.split(".")[0].split("(")[-1] for m in re.findall(r"\$\{([^}]*)\}", value)}


def _references(value: Any, symbols: set[str]) -> set[str]:
    refs = set()
    for leaf in _strings(value):
        if leaf in symbols:
            refs.add(leaf)
        refs.update(_interpolated(leaf) & symbols)
    return refs


def _main() -> dict[str, Any]:
    return parse(MAIN)


def _module(name: str) -> tuple[Path, dict[str, Any]]:
    mod = _main()["modules"][name]
    path = (MAIN.parent / mod["detail"]["path"]).resolve()
    return path, mod["config"]["params"]


def _app_settings() -> dict[str, Any]:
    """Every app setting of the function app: main.bicep's appSettings + api.bicep's platform set."""
    main = _main()
    api_path, api_params = _module("api")
    api = parse(api_path)
    assert api_params["appSettings"] == "appSettings", "main.bicep must pass var appSettings to the api module"
    assert api["variables"]["allSettings"]["value"] == {"function": {"type": "union", "parameters": {"arg_1": "appSettings", "arg_2": "platformSettings"}}}, (
        "api.bicep: allSettings = union(appSettings, platformSettings), platform settings last"
    )
    site = _one(api, "Microsoft.Web/sites")
    loop = site["properties"]["siteConfig"]["appSettings"]
    assert loop["loop_type"]["detail"]["array_name"] == {"function": {"type": "items", "parameters": {"arg_1": "allSettings"}}}
    app = main["variables"]["appSettings"]["value"]
    platform = api["variables"]["platformSettings"]["value"]
    overlap = set(app) & set(platform)
    assert not overlap, f"settings defined twice: {sorted(overlap)}"
    return {**app, **platform}


def _functions() -> list[dict[str, Any]]:
    """Bindings of function_app.app, or skip when function_app.py does not import (yet)."""
    try:
        import function_app
    except ImportError as exc:  # pragma: no cover - only before function_app.py exists
        pytest.skip(f"function_app does not import: {exc}")
    return _index(function_app.app)


def _index(app: Any) -> list[dict[str, Any]]:
    out = []
    for fn in app.get_functions():  # function_app's app allows repeated calls (see _FunctionApp)
        bindings = [{k: getattr(v, "value", v) for k, v in b.get_dict_repr().items()} for b in fn.get_bindings()]
        out.append({"name": fn.get_function_name(), "bindings": bindings})
    return out


def _path(value: Any) -> str:
    """A property access chain (storage.outputs.name) as dotted text; other values as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "property_accessor":
        ops = value["operator"]["operands"]
        return f"{_path(ops['operand_1'])}.{_path(ops['operand_2'])}"
    return json.dumps(value, sort_keys=True)


# ---- The Bicep files ----------------------------------------------------------------------------


def test_bicep_files_exist() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert "main.bicep" in names
    assert any(n.startswith("app/") for n in names)


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses(path: Path) -> None:
    doc = parse(path)
    assert doc.get("resources") or doc.get("modules"), f"{path.name} declares nothing"


def test_main_targets_resource_group() -> None:
    assert _main()["globals"]["scope"]["value"] == "resourceGroup"


def test_modules_exist_and_every_module_file_is_used() -> None:
    used = set()
    for path in BICEP_FILES:
        for name, mod in parse(path).get("modules", {}).items():
            assert mod["type"] == "local", f"{path.name}: module {name} is not local: registry modules cannot be reviewed here"
            target = (path.parent / mod["detail"]["path"]).resolve()
            assert target.is_file(), f"{path.name}: module {name} -> {mod['detail']['path']} does not exist"
            used.add(target)
    orphans = {p for p in BICEP_FILES if p != MAIN} - used
    assert not orphans, f"module files no template uses: {sorted(str(p) for p in orphans)}"


def test_module_params_match_module_declarations() -> None:
    main = _main()
    for name in main["modules"]:
        path, given = _module(name)
        declared = parse(path)["parameters"]
        unknown = set(given) - set(declared)
        assert not unknown, f"module {name} is given unknown params {sorted(unknown)}"
        required = {p for p, d in declared.items() if "default" not in d}
        missing = required - set(given)
        assert not missing, f"module {name} lacks required params {sorted(missing)}"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_no_unused_params_or_variables(path: Path) -> None:
    """What `bicep lint` (no-unused-params / no-unused-vars) would report."""
    doc = parse(path)
    text = re.sub(r"//[^\n]*", "", path.read_text(encoding="utf-8"))
    for section in ("parameters", "variables"):
        for name in doc.get(section, {}):
            uses = len(re.findall(rf"(?<![\w.]){re.escape(name)}\b", text))
            assert uses >= 2, f"{path.name}: {section[:-1]} {name} is never used"


def test_abbreviations_exist() -> None:
    abbrs = json.loads((INFRA / "abbreviations.json").read_text(encoding="utf-8"))
    used = set(re.findall(r"\babbrs\.(\w+)", MAIN.read_text(encoding="utf-8")))
    assert used, "main.bicep uses no abbreviations"
    assert used <= set(abbrs), f"missing in abbreviations.json: {sorted(used - set(abbrs))}"


def test_main_parameters_json_matches_main_bicep() -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    declared = _main()["parameters"]
    assert set(params) <= set(declared), f"unknown parameters: {sorted(set(params) - set(declared))}"
    required = {p for p, d in declared.items() if "default" not in d}
    assert required <= set(params), f"azd cannot supply {sorted(required - set(params))}"
    assert not any("secure" == d["type"] for p in declared.values() for d in p["decorators"]), "no secret goes through parameters"


# ---- Settings: code <-> infra ------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_an_app_setting() -> None:
    settings = _app_settings()
    wanted = [n for n in config.SETTING_NAMES if n != config.STORAGE]
    missing = [n for n in wanted if n not in settings]
    assert not missing, (
        f"settings read by shared/config.py but not set in infra: {missing}. Add a parameter with a default to "
        "infra/main.bicep and the setting to its `var appSettings` (and to infra/main.parameters.json for azd)."
    )


def test_storage_connection_is_identity_based() -> None:
    settings = _app_settings()
    assert config.STORAGE not in settings, "AzureWebJobsStorage would be a connection string: use AzureWebJobsStorage__*"
    assert settings[STORAGE_PREFIX + "credential"] == "managedidentity"
    assert STORAGE_PREFIX + "clientId" in settings
    has_uris = {STORAGE_PREFIX + "blobServiceUri", STORAGE_PREFIX + "queueServiceUri"} <= set(settings)
    assert has_uris or STORAGE_PREFIX + "accountName" in settings
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD;ClientId=${identityClientId}"
    assert settings["AzureWebJobsStorage__clientId"] == settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"


def test_no_forbidden_or_unexpected_settings() -> None:
    settings = set(_app_settings())
    assert not settings & FORBIDDEN_SETTINGS, f"forbidden on Flex Consumption / key-based: {sorted(settings & FORBIDDEN_SETTINGS)}"
    known = set(config.SETTING_NAMES) | PLATFORM_SETTINGS | _binding_setting_references()
    unexpected = settings - known
    assert not unexpected, f"settings neither shared.config nor a binding reads: {sorted(unexpected)}"


def _binding_setting_references() -> set[str]:
    """%NAME% app-setting references in bindings (e.g. a timer schedule), plus pending ones."""
    refs = {"CATCHUP_SCHEDULE"}  # the catch-up timer's schedule (design.md), set ahead of the code
    try:
        import function_app  # noqa: F401
    except ImportError:
        return refs
    for fn in _functions():
        for binding in fn["bindings"]:
            for value in binding.values():
                if isinstance(value, str):
                    refs.update(re.findall(r"%([A-Za-z0-9_]+)%", value))
    return refs


def test_binding_setting_references_are_app_settings() -> None:
    settings = _app_settings()
    for fn in _functions():
        for binding in fn["bindings"]:
            for key, value in binding.items():
                for name in re.findall(r"%([A-Za-z0-9_]+)%", value) if isinstance(value, str) else []:
                    assert name in settings, f"{fn['name']}.{key} references %{name}%, which infra does not set"


def test_settings_come_from_parameters() -> None:
    main = _main()
    params = set(main["parameters"])
    app = main["variables"]["appSettings"]["value"]
    for name, value in app.items():
        if name == config.MASKINPORTEN_PRIVATE_KEY:
            continue  # a Key Vault reference, see below
        if name == config.ARCHIVE_CONTAINER:
            # The container the template creates, named by the archiveContainerName parameter.
            assert _path(value) == "storage.outputs.archiveContainerName"
            assert _module("storage")[1]["archiveContainerName"] == "archiveContainerName"
            continue
        if name == getattr(config, "ARCHIVE_STATE_CONTAINER", None):
            # The operational-state container the template creates (stateContainerName).
            assert _path(value) == "storage.outputs.stateContainerName"
            assert _resolve(main, "stateContainerName") == getattr(config, "DEFAULT_STATE_CONTAINER", "altinn-mottak-state")
            continue
        if name == config.ARCHIVE_HANDOFF_QUEUE:
            # The hand-off queue the template creates, with the app's default name.
            assert _path(value) == "storage.outputs.handoffQueueName"
            assert _resolve(main, "handoffQueueName") == config.DEFAULT_HANDOFF_QUEUE
            continue
        refs = _references(value, params)
        assert refs, f"{name} is not set from a parameter: {value!r}"


def test_maskinporten_key_is_a_key_vault_reference() -> None:
    main = _main()
    value = main["variables"]["appSettings"]["value"][config.MASKINPORTEN_PRIVATE_KEY]
    assert value == "@Microsoft.KeyVault(SecretUri=${keyVault.outputs.maskinportenKeyUri})"
    kv_path, kv_params = _module("keyVault")
    kv = parse(kv_path)
    uri = kv["outputs"]["maskinportenKeyUri"]["value"]
    assert uri == "${vault.properties.vaultUri}secrets/${maskinportenKeyName}/", "versionless secret URI"
    assert kv_params["maskinportenKeyName"] == "maskinportenKeyName"
    assert not _resources(kv, "Microsoft.KeyVault/vaults/secrets"), "the key must not pass through a deployment"
    site = _one(parse(_module("api")[0]), "Microsoft.Web/sites")
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    # pycep keeps the quotes of an interpolated key
    assert site["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}


def test_no_setting_holds_a_key_or_literal_secret() -> None:
    settings = _app_settings()
    main, api = _main(), parse(_module("api")[0])
    symbols = _symbols(main) | _symbols(api) | {"properties", "outputs", "primaryEndpoints", "blob", "queue", "ConnectionString"}
    secure = {n for n, p in {**main["parameters"], **api["parameters"]}.items() if any(d["type"] == "secure" for d in p["decorators"])}
    for name, value in settings.items():
        text = json.dumps(value)
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{name}: matches {pattern.pattern}"
        assert not _references(value, secure), f"{name} is set from a @secure parameter: use Key Vault"
        for leaf in _strings(value):
            literal = re.sub(r"\$\{[^}]*\}", "", leaf) if leaf not in symbols else ""
            assert not BASE64_BLOB.search(literal), f"{name}: literal looks like a key: {literal[:12]}..."
    # Nowhere in infra/: no key listing functions, no connection strings with keys.
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        for pattern in SECRET_PATTERNS[:6]:
            assert not pattern.search(text), f"{path.name}: matches {pattern.pattern}"


def test_parameter_defaults_are_the_code_defaults() -> None:
    main = _main()
    assert _param_default(main, "altinnEnvironment") == "tt02"
    assert set(_decorator(main, "altinnEnvironment", "allowed")) == set(config.PRESETS)
    assert _param_default(main, "altinnEventTypes") == config.DEFAULT_EVENT_TYPES
    assert _param_default(main, "maskinportenScopes") == config.DEFAULT_SCOPES
    assert _param_default(main, "archiveContainerName") == config.DEFAULT_CONTAINER


def _settings_env(**overrides: str) -> dict[str, str]:
    """The environment the template gives the app, from parameter defaults (placeholders for the
    required ones and for what the platform resolves)."""
    main = _main()
    env: dict[str, str] = {}
    for name, value in main["variables"]["appSettings"]["value"].items():
        refs = _references(value, set(main["parameters"]))
        param = next(iter(refs)) if refs else None
        default = _param_default(main, param) if param else None
        env[name] = "" if default is None else str(default)
    env.update(
        {
            config.ALTINN_APPS: "ttd/test-app",
            config.MASKINPORTEN_CLIENT_ID: "00000000-0000-0000-0000-000000000000",
            config.MASKINPORTEN_PRIVATE_KEY: "resolved from Key Vault",
            config.ARCHIVE_CONTAINER: _param_default(main, "archiveContainerName"),
            # primaryEndpoints end with a slash
            STORAGE_PREFIX + "blobServiceUri": "https://stexample.blob.core.windows.net/",
            STORAGE_PREFIX + "queueServiceUri": "https://stexample.queue.core.windows.net/",
            STORAGE_PREFIX + "clientId": "11111111-1111-1111-1111-111111111111",
            STORAGE_PREFIX + "credential": "managedidentity",
        }
    )
    env.update(overrides)
    return env


def test_template_defaults_make_a_valid_configuration() -> None:
    settings = config.load_settings(_settings_env())
    assert settings.environment == "tt02"
    assert settings.archive_container == config.DEFAULT_CONTAINER
    assert settings.storage.uses_identity
    assert settings.storage.client_id == "11111111-1111-1111-1111-111111111111"


@pytest.mark.parametrize(
    ("param", "setting"),
    [
        ("archiveParallelDownloads", config.ARCHIVE_PARALLEL_DOWNLOADS),
        ("archiveBlockSizeMiB", config.ARCHIVE_BLOCK_SIZE_MIB),
        ("archiveMinDownloadRateKiB", "ARCHIVE_MIN_DOWNLOAD_RATE_KIB"),
        ("archiveRetryMaxHours", "ARCHIVE_RETRY_MAX_HOURS"),
        ("catchupRefusedQuietHours", "CATCHUP_REFUSED_QUIET_HOURS"),
    ],
)
def test_numeric_parameter_bounds_are_the_code_bounds(param: str, setting: str) -> None:
    main = _main()
    lo, hi = _decorator(main, param, "min_value"), _decorator(main, param, "max_value")
    assert lo is not None and hi is not None, f"{param} needs @minValue and @maxValue"
    for ok in (lo, hi, _param_default(main, param)):
        config.load_settings(_settings_env(**{setting: str(ok)}))
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ConfigError):
            config.load_settings(_settings_env(**{setting: str(bad)}))


# ---- Names: queues, containers, routes --------------------------------------------------------------


def _resolve(main: dict[str, Any], name: str) -> str:
    value = main["variables"][name]["value"]
    return re.sub(r"\$\{(\w+)\}", lambda m: _resolve(main, m.group(1)), value)


def test_queue_and_container_names_match_the_code() -> None:
    main = _main()
    assert _resolve(main, "eventsQueueName") == config.EVENTS_QUEUE
    assert _resolve(main, "poisonQueueName") == config.POISON_QUEUE == config.EVENTS_QUEUE + "-poison"
    storage_path, storage_params = _module("storage")
    assert storage_params["eventsQueueName"] == "eventsQueueName"
    assert storage_params["poisonQueueName"] == "poisonQueueName"
    assert storage_params["archiveContainerName"] == "archiveContainerName"
    storage = parse(storage_path)
    queues = {b["name"] for b in _resources(storage, "Microsoft.Storage/storageAccounts/queueServices/queues").values()}
    assert queues == {"eventsQueueName", "poisonQueueName", "handoffQueueName"}
    containers = {b["name"] for b in _resources(storage, "Microsoft.Storage/storageAccounts/blobServices/containers").values()}
    assert containers == {"deploymentContainerName", "archiveContainerName", "stateContainerName"}
    # Operational state (ARCHIVE_STATE_CONTAINER) and the hand-off to case systems (ahead of its code).
    assert _resolve(main, "stateContainerName") == "altinn-mottak-state"
    assert _resolve(main, "handoffQueueName") == "altinn-archived"
    assert storage_params["stateContainerName"] == "stateContainerName"
    assert storage_params["handoffQueueName"] == "handoffQueueName"
    assert _path(_module("rbac")[1]["handoffQueueName"]) == "storage.outputs.handoffQueueName"
    assert _path(_module("alerts")[1]["poisonQueueName"]) == "storage.outputs.poisonQueueName"
    assert _path(_module("rbac")[1]["eventsQueueName"]) == "storage.outputs.eventsQueueName"
    assert _path(_module("rbac")[1]["poisonQueueName"]) == "storage.outputs.poisonQueueName"


def test_queue_triggers_use_the_provisioned_queues_and_identity_connection() -> None:
    settings = _app_settings()
    triggers = [b for fn in _functions() for b in fn["bindings"] if b.get("type") == "queueTrigger"]
    assert triggers, "function_app has no queue trigger"
    provisioned = {config.EVENTS_QUEUE, config.POISON_QUEUE}
    for binding in triggers:
        assert binding["queueName"] in provisioned, f"queue {binding['queueName']} is not provisioned by infra"
    assert config.EVENTS_QUEUE in {b["queueName"] for b in triggers}
    for fn in _functions():
        for binding in fn["bindings"]:
            connection = binding.get("connection")
            if connection:
                assert connection not in settings, f"{connection} must be identity-based ({connection}__*), not a connection string"
                assert f"{connection}__credential" in settings, f"{connection}__credential missing in app settings"


def test_webhook_output_matches_the_http_route() -> None:
    routes = [b for fn in _functions() for b in fn["bindings"] if b.get("type") == "httpTrigger"]
    assert [b["route"] for b in routes] == ["events"]
    prefix = "api"
    host = ROOT / "host.json"
    if host.is_file():
        prefix = json.loads(host.read_text(encoding="utf-8")).get("extensions", {}).get("http", {}).get("routePrefix", "api")
    out = _main()["outputs"]["WEBHOOK_URL"]["value"]
    assert out == "https://${api.outputs.defaultHostName}/" + "/".join(p for p in (prefix, "events") if p)
    assert "code=" not in out


def test_outputs() -> None:
    outputs = set(_main()["outputs"])
    assert {"AZURE_FUNCTION_APP_NAME", "WEBHOOK_URL", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_KEY_VAULT_NAME", "SERVICE_API_NAME"} <= outputs
    for path in BICEP_FILES:
        for name in parse(path).get("outputs", {}):
            assert not re.search(r"password|secret|connectionstring|key$", name, re.IGNORECASE), f"{path.name}: output {name}"


# ---- Security posture ------------------------------------------------------------------------------


def test_flex_consumption_python() -> None:
    api = parse(_module("api")[0])
    plan = _one(api, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True
    site = _one(api, "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    # Flex Consumption refuses ftpsState (ARM error 51021); see test_site_config_is_what_flex_accepts.
    assert "ftpsState" not in props["siteConfig"]
    fac = props["functionAppConfig"]
    assert fac["runtime"] == {"name": "python", "version": "pythonVersion"}
    storage = fac["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    policies = _resources(api, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    # Only scm: Flex has no FTP endpoint (api.bicep says why and where that comes from).
    assert sorted(p["name"] for p in policies.values()) == ["scm"]
    assert all(p["properties"]["allow"] is False for p in policies.values())
    assert _module("api")[1]["pythonVersion"] == "pythonVersion"


def _ci_python_versions() -> list[str]:
    """The versions setup-python installs in ci.yml: a quoted scalar or a `|` block, in order."""
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    match = re.search(r"^(\s*)python-version:\s*(?:\|\s*\n((?:\1\s+[0-9.]+\s*\n)+)|['\"]?([0-9.]+))", text, re.M)
    assert match, "ci.yml has no python-version"
    return match.group(2).split() if match.group(2) else [match.group(3)]


def test_python_version_default_is_the_one_ci_tests() -> None:
    default = _param_default(_main(), "pythonVersion")
    assert default == "3.11"
    allowed = _decorator(_main(), "pythonVersion", "allowed")
    assert default in allowed
    versions = _ci_python_versions()
    # setup-python makes the last one listed the default python3: the suite runs on the template's default.
    assert versions[-1] == default, f"ci.yml's default Python is {versions[-1]}, the template deploys {default}"
    assert sorted(versions) == sorted(allowed), f"ci.yml installs Python {versions}, the template allows {allowed}"


def test_storage_account_is_identity_only() -> None:
    storage = parse(_module("storage")[0])
    props = _one(storage, "Microsoft.Storage/storageAccounts")["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["defaultToOAuthAuthentication"] is True
    assert props["allowCrossTenantReplication"] is False
    blob = _one(storage, "Microsoft.Storage/storageAccounts/blobServices")["properties"]
    assert blob["isVersioningEnabled"] is True
    assert blob["deleteRetentionPolicy"]["enabled"] is True
    assert blob["containerDeleteRetentionPolicy"]["enabled"] is True
    for container in _resources(storage, "Microsoft.Storage/storageAccounts/blobServices/containers").values():
        assert container["properties"]["publicAccess"] == "None"


def test_key_vault_and_monitoring() -> None:
    kv = _one(parse(_module("keyVault")[0]), "Microsoft.KeyVault/vaults")["properties"]
    assert kv["enableRbacAuthorization"] is True
    assert kv["enableSoftDelete"] is True
    assert kv["enablePurgeProtection"] is True
    assert "accessPolicies" not in kv
    monitoring = parse(_module("monitoring")[0])
    assert _one(monitoring, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True
    assert _one(monitoring, "Microsoft.OperationalInsights/workspaces")["properties"]["features"]["disableLocalAuth"] is True


# The app's own lines, as the archive function writes them when it parks a message itself.
PARKED_LOG_PREFIX = "parked in poison:"
PARKED_COUNTER = "altinn_mottak.parked"


def _alert_query() -> str:
    """poisonQuery of alerts.bicep with its ${var} parts filled in (poisonQueueName left as is)."""
    variables = parse(_module("alerts")[0])["variables"]

    def fill(name: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: fill(m.group(1)) if m.group(1) in variables else m.group(0), variables[name]["value"])

    return fill("poisonQuery").replace("\\'", "'")  # Bicep's \' escape, as pycep keeps it


def test_poison_queue_alert() -> None:
    alerts = parse(_module("alerts")[0])
    rule = _one(alerts, "Microsoft.Insights/scheduledQueryRules")["properties"]
    assert rule["enabled"] is True
    criterion = rule["criteria"]["allOf"][0]
    assert criterion["query"] == "poisonQuery"
    assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == ("GreaterThan", 0, "Count")
    query = _alert_query()
    assert query.startswith("union isfuzzy=true "), query
    # 1. the app's ERROR record: message prefix and outcome dimension (any failure_class)
    assert 'traces | where severityLevel >= 3 and message startswith "parked in poison:" and tostring(customDimensions.outcome) == "parked"' in query
    # 2. the app's counter
    assert 'customMetrics | where name == "altinn_mottak.parked" and valueSum > 0' in query
    # 3. the host's move after maxDequeueCount (a backstop for crashes and timeouts)
    assert 'message has "MaxDequeueCount" and message contains "\'${poisonQueueName}\'"' in query
    assert "failure_class" not in query, "the rule must fire for every failure class, also ones added later"


def test_role_assignments_are_least_privilege_with_purpose() -> None:
    path = _module("rbac")[0]
    rbac = parse(path)
    roles = rbac["variables"]["roles"]["value"]
    found = set()
    for body in _resources(rbac, "Microsoft.Authorization/roleAssignments").values():
        role_var = _path(body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]).removeprefix("roles.")
        role_id = roles[role_var]
        assert role_id not in PRIVILEGED_ROLES
        assert role_id in ROLES, f"unexpected role {role_id} ({role_var}): review it and add it to ROLES"
        assert body["properties"]["description"], "each assignment carries a description"
        found.add((ROLES[role_id], body["scope"], body["properties"]["principalId"]))
    assert found == EXPECTED_ASSIGNMENTS
    # A purpose comment right above every role assignment.
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"resource \w+ 'Microsoft\.Authorization/roleAssignments@", line):
            assert lines[i - 1].startswith("//"), f"rbac.bicep:{i + 1}: no purpose comment above the assignment"
            assert "Purpose" in " ".join(c for c in lines[max(0, i - 12) : i] if c.startswith("//")), f"rbac.bicep:{i + 1}"


def test_checkov_skips_carry_a_reason() -> None:
    skips = 0
    for path in BICEP_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip=" in line:
                skips += 1
                match = re.search(r"checkov:skip=(CKV2?_AZURE_\d+):\s*(.+)$", line)
                assert match, f"{path.name}:{number}: malformed skip"
                assert len(match.group(2)) >= 60, f"{path.name}:{number}: {match.group(1)} needs a reason a reviewer can check"
                assert line.lstrip().startswith("//"), f"{path.name}:{number}: a skip must be a Bicep comment"
    assert skips, "no checkov skips found: update this test if all were removed on purpose"


# ---- azd and workflows (text checks: no YAML parser in the dev requirements) ----------------------


def test_azure_yaml() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(r"^services:\n  api:\n(    .*\n)*?    language: python$", text, re.M)
    assert re.search(r"^    host: function$", text, re.M)
    assert re.search(r"^    project: \.$", text, re.M)
    assert re.search(r"^  path: infra$", text, re.M)
    for hook in re.findall(r"run: \./(\S+)", text):
        assert (ROOT / hook).is_file(), f"azure.yaml hook {hook} missing"


def test_deploy_workflow_uses_oidc_and_remote_build() -> None:
    text = (ROOT / ".github" / "workflows" / "deploy.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*id-token:\s*write\s*(#.*)?$", text, re.M)
    assert "azure/login@" in text
    for key in ("client-id", "tenant-id", "subscription-id"):
        assert re.search(rf"^\s*{key}:\s*\$\{{\{{", text, re.M), f"azure/login {key} must come from secrets/vars"
    assert "az deployment group create" in text and "infra/main.bicep" in text
    assert "azure-functions-core-tools@4" in text
    assert re.search(r"func azure functionapp publish \S+ --python --build remote", text)
    assert not re.search(r"client-secret|creds:|publish-profile", text), "OIDC only: no stored credentials"


def test_poison_alert_matches_the_app_code() -> None:
    """The alert keys on what shared/ writes when it parks a message: the log prefix and the counter."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "shared").rglob("*.py")))
    if PARKED_LOG_PREFIX not in source and PARKED_COUNTER not in source:
        pytest.skip(f"shared/ does not write {PARKED_LOG_PREFIX!r} / {PARKED_COUNTER!r} yet (the alert is set ahead of the code)")
    assert PARKED_LOG_PREFIX in source, f"shared/ must log {PARKED_LOG_PREFIX!r}: the poison alert keys on it"
    assert PARKED_COUNTER in source, f"shared/ must count {PARKED_COUNTER!r}: the poison alert keys on it"
    assert '"parked"' in source, "the parked record carries outcome = parked"
