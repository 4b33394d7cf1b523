"""Settings from the environment (app settings in Azure), validated once, with environment presets.

The names are a public contract (see the README's settings table). A missing or malformed
setting raises :class:`~shared.errors.ConfigError` naming the setting, never echoing its value.

``get_settings()`` re-reads the environment cheaply on every call and rebuilds the settings
only when a relevant variable changed, so tests and local tools can point the same process
at another Altinn stand-in or storage account without restarting it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shared.errors import ConfigError

# The settings this service reads, documented in the README and set by infra/.
ALTINN_ENVIRONMENT = "ALTINN_ENVIRONMENT"
ALTINN_APPS = "ALTINN_APPS"
ALTINN_EVENT_TYPES = "ALTINN_EVENT_TYPES"
ALTINN_PLATFORM_URL = "ALTINN_PLATFORM_URL"
ALTINN_APPS_URL = "ALTINN_APPS_URL"
MASKINPORTEN_URL = "MASKINPORTEN_URL"
MASKINPORTEN_CLIENT_ID = "MASKINPORTEN_CLIENT_ID"
MASKINPORTEN_PRIVATE_KEY = "MASKINPORTEN_PRIVATE_KEY"
MASKINPORTEN_KID = "MASKINPORTEN_KID"
MASKINPORTEN_CERTIFICATE = "MASKINPORTEN_CERTIFICATE"
MASKINPORTEN_SCOPES = "MASKINPORTEN_SCOPES"
ARCHIVE_CONTAINER = "ARCHIVE_CONTAINER"
STORAGE = "AzureWebJobsStorage"
# Tuning, optional.
ARCHIVE_PARALLEL_DOWNLOADS = "ARCHIVE_PARALLEL_DOWNLOADS"
ARCHIVE_BLOCK_SIZE_MIB = "ARCHIVE_BLOCK_SIZE_MIB"
ARCHIVE_MIN_DOWNLOAD_RATE_KIB = "ARCHIVE_MIN_DOWNLOAD_RATE_KIB"
# The archive function's own retry schedule (transient failures), and where it keeps its state.
ARCHIVE_RETRY_SCHEDULE = "ARCHIVE_RETRY_SCHEDULE"
ARCHIVE_RETRY_MAX_HOURS = "ARCHIVE_RETRY_MAX_HOURS"
ARCHIVE_STATE_CONTAINER = "ARCHIVE_STATE_CONTAINER"
# Catch-up (the timer function and `altinn-mottak catch-up`).
CATCHUP_SCHEDULE = "CATCHUP_SCHEDULE"
CATCHUP_MAX_INSTANCES = "CATCHUP_MAX_INSTANCES"
CATCHUP_TIME_BUDGET_SECONDS = "CATCHUP_TIME_BUDGET_SECONDS"
CATCHUP_REFUSED_QUIET_HOURS = "CATCHUP_REFUSED_QUIET_HOURS"

SETTING_NAMES: tuple[str, ...] = (
    ALTINN_ENVIRONMENT,
    ALTINN_APPS,
    ALTINN_EVENT_TYPES,
    ALTINN_PLATFORM_URL,
    ALTINN_APPS_URL,
    MASKINPORTEN_URL,
    MASKINPORTEN_CLIENT_ID,
    MASKINPORTEN_PRIVATE_KEY,
    MASKINPORTEN_KID,
    MASKINPORTEN_CERTIFICATE,
    MASKINPORTEN_SCOPES,
    ARCHIVE_CONTAINER,
    STORAGE,
    ARCHIVE_PARALLEL_DOWNLOADS,
    ARCHIVE_BLOCK_SIZE_MIB,
    ARCHIVE_MIN_DOWNLOAD_RATE_KIB,
    ARCHIVE_RETRY_SCHEDULE,
    ARCHIVE_RETRY_MAX_HOURS,
    ARCHIVE_STATE_CONTAINER,
    CATCHUP_SCHEDULE,
    CATCHUP_MAX_INSTANCES,
    CATCHUP_TIME_BUDGET_SECONDS,
    CATCHUP_REFUSED_QUIET_HOURS,
)

# Queue names are part of the contract with infra/ and the bindings in function_app.py.
EVENTS_QUEUE = "altinn-events"
POISON_QUEUE = EVENTS_QUEUE + "-poison"

DEFAULT_EVENT_TYPES = "app.instance.process.completed"
DEFAULT_SCOPES = "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
DEFAULT_CONTAINER = "altinn-data"
DEFAULT_STATE_CONTAINER = "altinn-mottak-state"
DEFAULT_RETRY_SCHEDULE = (60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)  # seconds; the last one repeats
DEFAULT_RETRY_MAX_HOURS = 24.0
MAX_RETRY_DELAY = 7 * 24 * 3600.0  # a queue message's visibility can be delayed at most 7 days
DEFAULT_MIN_DOWNLOAD_RATE_KIB = 1024  # a download may take 60 s + size / this rate
DEFAULT_REFUSED_QUIET_HOURS = 24.0
# One archive invocation stays well inside host.json's functionTimeout (30 min; a test pins both):
# past this budget the attempt stops (transient) and the next one reuses what is stored.
INVOCATION_BUDGET_SECONDS = 20 * 60.0
DEFAULT_STORAGE = "UseDevelopmentStorage=true"
DEFAULT_CATCHUP_SCHEDULE = "0 7 * * * *"  # hourly, at minute 7 (UTC)
DEFAULT_CATCHUP_MAX_INSTANCES = 5000
# Below host.json's functionTimeout (30 min) with room for the instances already being enqueued.
DEFAULT_CATCHUP_TIME_BUDGET = 600
MAX_CATCHUP_TIME_BUDGET = 1500


@dataclass(frozen=True)
class Environment:
    platform_url: str
    apps_url: str  # may contain {org}
    maskinporten_issuer: str


PRESETS: dict[str, Environment] = {
    "tt02": Environment(
        platform_url="https://platform.tt02.altinn.no",
        apps_url="https://{org}.apps.tt02.altinn.no",
        maskinporten_issuer="https://test.maskinporten.no/",
    ),
    "production": Environment(
        platform_url="https://platform.altinn.no",
        apps_url="https://{org}.apps.altinn.no",
        maskinporten_issuer="https://maskinporten.no/",
    ),
}

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StorageConfig:
    """Either a connection string (Azurite, local) or identity-based service URIs (Azure)."""

    connection_string: str | None = None
    blob_url: str | None = None
    queue_url: str | None = None
    client_id: str | None = None  # user-assigned managed identity, when set

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True)
class Settings:
    environment: str
    apps: frozenset[tuple[str, str]]
    event_types: frozenset[str]
    platform_url: str
    apps_url_template: str
    maskinporten_issuer: str
    client_id: str
    private_key: str = field(repr=False)
    kid: str | None
    certificate: str | None = field(repr=False)
    scopes: str
    archive_container: str
    storage: StorageConfig = field(repr=False)
    parallel_downloads: int = 4
    block_size: int = 8 * 1024 * 1024
    catchup_schedule: str = DEFAULT_CATCHUP_SCHEDULE
    catchup_max_instances: int = DEFAULT_CATCHUP_MAX_INSTANCES
    catchup_time_budget: float = DEFAULT_CATCHUP_TIME_BUDGET
    catchup_refused_quiet_hours: float = DEFAULT_REFUSED_QUIET_HOURS
    min_download_rate: int = DEFAULT_MIN_DOWNLOAD_RATE_KIB * 1024  # bytes per second
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    retry_max_hours: float = DEFAULT_RETRY_MAX_HOURS
    state_container: str = DEFAULT_STATE_CONTAINER

    def apps_base(self, org: str) -> str:
        """The configured app host for ``org``: scheme, host and port, no trailing slash."""
        return self.apps_url_template.replace("{org}", org)

    @property
    def token_endpoint(self) -> str:
        return self.maskinporten_issuer + "token"

    def allowed_origins(self) -> frozenset[str]:
        """Origins (scheme://host[:port]) that may receive our bearer tokens: the platform only.

        Instances, data, ``/complete``, the query, subscriptions and the token exchange are all on
        the platform host; the app host is never called (see shared/altinn.py)."""
        return frozenset({_origin(self.platform_url)})

    def storage_instance_url(self, party_id: str, instance_guid: str) -> str:
        """The instance on the storage API (Altinn/altinn-storage src/Storage/Controllers/InstancesController.cs:
        ``[Route("storage/api/v1/instances")]``, ``[HttpGet("{instanceOwnerPartyId:int}/{instanceGuid:guid}")]``)."""
        return f"{self.platform_url}/storage/api/v1/instances/{party_id}/{instance_guid}"

    def retry_delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` (``attempt`` failed so far, >= 1); the last repeats."""
        return self.retry_schedule[min(max(attempt, 1), len(self.retry_schedule)) - 1]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(name: str, value: str, *, allow_org: bool = False, path_ok: bool = False) -> str:
    """Validate a base URL: https (http only on loopback), no userinfo, query or fragment."""
    value = value.strip().rstrip("/") if not path_ok else value.strip()
    probe = value.replace("{org}", "org") if allow_org else value
    if "{" in probe or "}" in probe:
        raise ConfigError(name, "only the placeholder {org} is allowed" if allow_org else "must not contain braces")
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(name, f"not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(name, "must be an absolute https URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(name, "plain http is only allowed for a loopback host (simulator)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigError(name, "must not contain user information")
    if parts.query or parts.fragment or "?" in probe or "#" in probe:
        raise ConfigError(name, "must not contain a query or fragment")
    if port is not None and not (0 < port < 65536):
        raise ConfigError(name, "has an invalid port")
    if not path_ok and parts.path not in ("", "/"):
        raise ConfigError(name, "must be a bare origin (scheme, host and port), without a path")
    if allow_org and "{org}" in value and "{org}" not in value.split("//", 1)[1].split("/", 1)[0]:
        raise ConfigError(name, "{org} may only appear in the host name")
    return value


def _parse_apps(raw: str | None) -> frozenset[tuple[str, str]]:
    if raw is None or not raw.strip():
        raise ConfigError(ALTINN_APPS, "required: comma separated org/app, e.g. ttd/my-app")
    apps = set()
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        org, sep, app = item.partition("/")
        if not sep or not _NAME.match(org) or not _NAME.match(app):
            raise ConfigError(ALTINN_APPS, f"entry {item[:80]!r} is not of the form org/app (lowercase letters, digits, hyphens)")
        apps.add((org, app))
    if not apps:
        raise ConfigError(ALTINN_APPS, "required: comma separated org/app, e.g. ttd/my-app")
    return frozenset(apps)


def _parse_event_types(raw: str | None) -> frozenset[str]:
    raw = raw if raw and raw.strip() else DEFAULT_EVENT_TYPES
    types = {t.strip() for t in raw.split(",") if t.strip()}
    for t in types:
        if not _EVENT_TYPE.match(t):
            raise ConfigError(ALTINN_EVENT_TYPES, f"{t[:80]!r} is not an event type")
    return frozenset(types)


def _parse_int(name: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, "must be a whole number") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}")
    return value


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?,/-]{1,60}$")


def _parse_schedule(raw: str | None) -> str:
    """A six-field NCRONTAB expression (``sec min hour day month day-of-week``), as the timer needs."""
    if raw is None or not raw.strip():
        return DEFAULT_CATCHUP_SCHEDULE
    fields = raw.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(CATCHUP_SCHEDULE, "must be a six-field NCRONTAB expression (sec min hour day month day-of-week), e.g. '0 7 * * * *'")
    return " ".join(fields)


def _parse_hours(name: str, raw: str | None, default: float, lo: float, hi: float) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, "must be a number of hours") from None
    if not (lo <= value <= hi):  # also refuses NaN
        raise ConfigError(name, f"must be between {lo:g} and {hi:g} hours")
    return value


def _parse_retry_schedule(raw: str | None) -> tuple[float, ...]:
    """``60,120,300``: seconds before each next attempt, the last one repeating."""
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_SCHEDULE
    delays = []
    for item in raw.split(","):
        try:
            value = float(item.strip())
        except ValueError:
            raise ConfigError(ARCHIVE_RETRY_SCHEDULE, "must be seconds, comma separated, e.g. '60,120,300'") from None
        if not (0 <= value <= MAX_RETRY_DELAY):
            raise ConfigError(ARCHIVE_RETRY_SCHEDULE, f"each delay must be between 0 and {MAX_RETRY_DELAY:.0f} seconds (7 days)")
        delays.append(value)
    if not delays or len(delays) > 100:
        raise ConfigError(ARCHIVE_RETRY_SCHEDULE, "must list between 1 and 100 delays")
    return tuple(delays)


def _storage(env: Mapping[str, str]) -> StorageConfig:
    conn = env.get(STORAGE)
    if conn and conn.strip():
        conn = conn.strip()
        if "=" not in conn:
            raise ConfigError(STORAGE, "is not a storage connection string")
        return StorageConfig(connection_string=conn)
    prefix = STORAGE + "__"
    account = env.get(prefix + "accountName")
    blob_url = env.get(prefix + "blobServiceUri")
    queue_url = env.get(prefix + "queueServiceUri")
    client_id = env.get(prefix + "clientId") or None
    if account and not blob_url:
        if not re.match(r"^[a-z0-9]{3,24}$", account):
            raise ConfigError(prefix + "accountName", "is not a storage account name")
        blob_url = f"https://{account}.blob.core.windows.net"
        queue_url = queue_url or f"https://{account}.queue.core.windows.net"
    if blob_url or queue_url:
        if not (blob_url and queue_url):
            raise ConfigError(prefix + "queueServiceUri", "set both blobServiceUri and queueServiceUri, or accountName")
        return StorageConfig(
            blob_url=_base_url(prefix + "blobServiceUri", blob_url, path_ok=True),
            queue_url=_base_url(prefix + "queueServiceUri", queue_url, path_ok=True),
            client_id=client_id,
        )
    return StorageConfig(connection_string=DEFAULT_STORAGE)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting. Raises ConfigError naming the first bad one."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() else None

    environment = (get(ALTINN_ENVIRONMENT) or "tt02").lower()
    if environment not in PRESETS:
        raise ConfigError(ALTINN_ENVIRONMENT, f"must be one of {', '.join(sorted(PRESETS))}")
    preset = PRESETS[environment]
    apps = _parse_apps(env.get(ALTINN_APPS))
    platform = _base_url(ALTINN_PLATFORM_URL, get(ALTINN_PLATFORM_URL) or preset.platform_url)
    apps_url = _base_url(ALTINN_APPS_URL, get(ALTINN_APPS_URL) or preset.apps_url, allow_org=True)
    issuer = _base_url(MASKINPORTEN_URL, get(MASKINPORTEN_URL) or preset.maskinporten_issuer, path_ok=True)
    if not issuer.endswith("/"):
        issuer += "/"
    client_id = get(MASKINPORTEN_CLIENT_ID)
    if not client_id:
        raise ConfigError(MASKINPORTEN_CLIENT_ID, "required: the Maskinporten integration's client id")
    key = get(MASKINPORTEN_PRIVATE_KEY)
    if not key:
        raise ConfigError(MASKINPORTEN_PRIVATE_KEY, "required: PEM private key or JWK (a Key Vault reference in Azure)")
    scopes = " ".join((get(MASKINPORTEN_SCOPES) or DEFAULT_SCOPES).split())
    container = get(ARCHIVE_CONTAINER) or DEFAULT_CONTAINER
    if not _CONTAINER.match(container):
        raise ConfigError(ARCHIVE_CONTAINER, "is not a valid blob container name")
    state_container = get(ARCHIVE_STATE_CONTAINER) or DEFAULT_STATE_CONTAINER
    if not _CONTAINER.match(state_container) or state_container == container:
        raise ConfigError(ARCHIVE_STATE_CONTAINER, "is not a valid blob container name other than ARCHIVE_CONTAINER")
    return Settings(
        environment=environment,
        apps=apps,
        event_types=_parse_event_types(env.get(ALTINN_EVENT_TYPES)),
        platform_url=platform,
        apps_url_template=apps_url,
        maskinporten_issuer=issuer,
        client_id=client_id,
        private_key=key,
        kid=get(MASKINPORTEN_KID),
        certificate=get(MASKINPORTEN_CERTIFICATE),
        scopes=scopes,
        archive_container=container,
        storage=_storage(env),
        parallel_downloads=_parse_int(ARCHIVE_PARALLEL_DOWNLOADS, env.get(ARCHIVE_PARALLEL_DOWNLOADS), 4, 1, 32),
        block_size=_parse_int(ARCHIVE_BLOCK_SIZE_MIB, env.get(ARCHIVE_BLOCK_SIZE_MIB), 8, 1, 100) * 1024 * 1024,
        catchup_schedule=_parse_schedule(env.get(CATCHUP_SCHEDULE)),
        catchup_max_instances=_parse_int(CATCHUP_MAX_INSTANCES, env.get(CATCHUP_MAX_INSTANCES), DEFAULT_CATCHUP_MAX_INSTANCES, 1, 100_000),
        catchup_time_budget=_parse_int(
            CATCHUP_TIME_BUDGET_SECONDS, env.get(CATCHUP_TIME_BUDGET_SECONDS), DEFAULT_CATCHUP_TIME_BUDGET, 10, MAX_CATCHUP_TIME_BUDGET
        ),
        catchup_refused_quiet_hours=_parse_hours(CATCHUP_REFUSED_QUIET_HOURS, env.get(CATCHUP_REFUSED_QUIET_HOURS), DEFAULT_REFUSED_QUIET_HOURS, 0, 24 * 30),
        min_download_rate=_parse_int(
            ARCHIVE_MIN_DOWNLOAD_RATE_KIB, env.get(ARCHIVE_MIN_DOWNLOAD_RATE_KIB), DEFAULT_MIN_DOWNLOAD_RATE_KIB, 1, 1024 * 1024
        )
        * 1024,
        retry_schedule=_parse_retry_schedule(env.get(ARCHIVE_RETRY_SCHEDULE)),
        retry_max_hours=_parse_hours(ARCHIVE_RETRY_MAX_HOURS, env.get(ARCHIVE_RETRY_MAX_HOURS), DEFAULT_RETRY_MAX_HOURS, 0.001, 24 * 7),
        state_container=state_container,
    )


_lock = threading.Lock()
_cached: tuple[tuple, Settings] | None = None


def _snapshot() -> tuple:
    env = os.environ
    prefix = STORAGE + "__"
    # Keys first, values only for the matches: os.environ decodes every value it iterates, and
    # this runs on every invocation (a Functions worker has well over a hundred variables).
    storage = tuple(sorted((k, env[k]) for k in env if k.startswith(prefix)))
    return tuple(env.get(n) for n in SETTING_NAMES) + storage


def get_settings() -> Settings:
    """The current settings, re-validated only when the environment changed."""
    global _cached
    snap = _snapshot()
    cached = _cached
    if cached is not None and cached[0] == snap:
        return cached[1]
    with _lock:
        if _cached is not None and _cached[0] == snap:
            return _cached[1]
        settings = load_settings()
        _cached = (snap, settings)
        return settings
