"""Settings from the environment (app settings in Azure), validated once, with environment presets.

The names are a public contract (docs/settings.md). A missing or malformed
setting raises :class:`~shared.errors.ConfigError` naming the setting, never echoing its value.

``get_settings()`` re-reads the environment cheaply on every call and rebuilds the settings
only when a relevant variable changed, so tests and local tools can point the same process
at another Altinn stand-in or storage account without restarting it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config.names import (  # the setting names and defaults are this module's interface too
    ALTINN_APPS as ALTINN_APPS,
)
from shared.config.names import (
    ALTINN_APPS_URL as ALTINN_APPS_URL,
)
from shared.config.names import (
    ALTINN_ENVIRONMENT as ALTINN_ENVIRONMENT,
)
from shared.config.names import (
    ALTINN_EVENT_TYPES as ALTINN_EVENT_TYPES,
)
from shared.config.names import (
    ALTINN_PLATFORM_URL as ALTINN_PLATFORM_URL,
)
from shared.config.names import (
    ALTINN_SUBSTATUS_DESCRIPTION as ALTINN_SUBSTATUS_DESCRIPTION,
)
from shared.config.names import (
    ALTINN_SUBSTATUS_LABEL as ALTINN_SUBSTATUS_LABEL,
)
from shared.config.names import (
    ARCHIVE_BLOCK_SIZE_MIB as ARCHIVE_BLOCK_SIZE_MIB,
)
from shared.config.names import (
    ARCHIVE_CONTAINER as ARCHIVE_CONTAINER,
)
from shared.config.names import (
    ARCHIVE_HANDOFF_QUEUE as ARCHIVE_HANDOFF_QUEUE,
)
from shared.config.names import (
    ARCHIVE_MIN_DOWNLOAD_RATE_KIB as ARCHIVE_MIN_DOWNLOAD_RATE_KIB,
)
from shared.config.names import (
    ARCHIVE_PARALLEL_DOWNLOADS as ARCHIVE_PARALLEL_DOWNLOADS,
)
from shared.config.names import (
    ARCHIVE_RETRY_MAX_HOURS as ARCHIVE_RETRY_MAX_HOURS,
)
from shared.config.names import (
    ARCHIVE_RETRY_SCHEDULE as ARCHIVE_RETRY_SCHEDULE,
)
from shared.config.names import (
    ARCHIVE_STATE_CONTAINER as ARCHIVE_STATE_CONTAINER,
)
from shared.config.names import (
    CATCHUP_MAX_INSTANCES as CATCHUP_MAX_INSTANCES,
)
from shared.config.names import (
    CATCHUP_REFUSED_QUIET_HOURS as CATCHUP_REFUSED_QUIET_HOURS,
)
from shared.config.names import (
    CATCHUP_SCHEDULE as CATCHUP_SCHEDULE,
)
from shared.config.names import (
    CATCHUP_TIME_BUDGET_SECONDS as CATCHUP_TIME_BUDGET_SECONDS,
)
from shared.config.names import (
    DEFAULT_CATCHUP_MAX_INSTANCES as DEFAULT_CATCHUP_MAX_INSTANCES,
)
from shared.config.names import (
    DEFAULT_CATCHUP_SCHEDULE as DEFAULT_CATCHUP_SCHEDULE,
)
from shared.config.names import (
    DEFAULT_CATCHUP_TIME_BUDGET as DEFAULT_CATCHUP_TIME_BUDGET,
)
from shared.config.names import (
    DEFAULT_CONTAINER as DEFAULT_CONTAINER,
)
from shared.config.names import (
    DEFAULT_EVENT_TYPES as DEFAULT_EVENT_TYPES,
)
from shared.config.names import (
    DEFAULT_HANDOFF_QUEUE as DEFAULT_HANDOFF_QUEUE,
)
from shared.config.names import (
    DEFAULT_MIN_DOWNLOAD_RATE_KIB as DEFAULT_MIN_DOWNLOAD_RATE_KIB,
)
from shared.config.names import (
    DEFAULT_REFUSED_QUIET_HOURS as DEFAULT_REFUSED_QUIET_HOURS,
)
from shared.config.names import (
    DEFAULT_RETRY_MAX_HOURS as DEFAULT_RETRY_MAX_HOURS,
)
from shared.config.names import (
    DEFAULT_RETRY_SCHEDULE as DEFAULT_RETRY_SCHEDULE,
)
from shared.config.names import (
    DEFAULT_SCOPES as DEFAULT_SCOPES,
)
from shared.config.names import (
    DEFAULT_STATE_CONTAINER as DEFAULT_STATE_CONTAINER,
)
from shared.config.names import (
    DEFAULT_STORAGE as DEFAULT_STORAGE,
)
from shared.config.names import (
    EVENTS_QUEUE as EVENTS_QUEUE,
)
from shared.config.names import (
    INVOCATION_BUDGET_SECONDS as INVOCATION_BUDGET_SECONDS,
)
from shared.config.names import (
    MASKINPORTEN_CERTIFICATE as MASKINPORTEN_CERTIFICATE,
)
from shared.config.names import (
    MASKINPORTEN_CLIENT_ID as MASKINPORTEN_CLIENT_ID,
)
from shared.config.names import (
    MASKINPORTEN_KID as MASKINPORTEN_KID,
)
from shared.config.names import (
    MASKINPORTEN_PRIVATE_KEY as MASKINPORTEN_PRIVATE_KEY,
)
from shared.config.names import (
    MASKINPORTEN_SCOPES as MASKINPORTEN_SCOPES,
)
from shared.config.names import (
    MASKINPORTEN_URL as MASKINPORTEN_URL,
)
from shared.config.names import (
    MAX_CATCHUP_TIME_BUDGET as MAX_CATCHUP_TIME_BUDGET,
)
from shared.config.names import (
    MAX_RETRY_DELAY as MAX_RETRY_DELAY,
)
from shared.config.names import (
    POISON_QUEUE as POISON_QUEUE,
)
from shared.config.names import (
    SETTING_NAMES as SETTING_NAMES,
)
from shared.config.names import (
    STORAGE as STORAGE,
)
from shared.config.values import (
    CONTAINER,
    StorageConfig,
    _base_url,
    _origin,
    _parse_apps,
    _parse_event_types,
    _parse_handoff_queue,
    _parse_hours,
    _parse_int,
    _parse_per_app,
    _parse_retry_schedule,
    _parse_schedule,
    _storage,
)
from shared.config.values import (
    _is_loopback as _is_loopback,
)
from shared.errors import ConfigError


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
    handoff_queue: str | None = DEFAULT_HANDOFF_QUEUE
    substatus_labels: Mapping[tuple[str, str] | None, str] = field(default_factory=dict)
    substatus_descriptions: Mapping[tuple[str, str] | None, str] = field(default_factory=dict)

    def substatus_for(self, org: str, app: str) -> tuple[str, str | None] | None:
        """The substatus (label, description) to set on ``org/app``'s confirmed instances, if any."""
        label = self.substatus_labels.get((org, app)) or self.substatus_labels.get(None)
        if label is None:
            return None
        return label, self.substatus_descriptions.get((org, app)) or self.substatus_descriptions.get(None)

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
    if not CONTAINER.match(container):
        raise ConfigError(ARCHIVE_CONTAINER, "is not a valid blob container name")
    state_container = get(ARCHIVE_STATE_CONTAINER) or DEFAULT_STATE_CONTAINER
    if not CONTAINER.match(state_container) or state_container == container:
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
        min_download_rate=_parse_int(ARCHIVE_MIN_DOWNLOAD_RATE_KIB, env.get(ARCHIVE_MIN_DOWNLOAD_RATE_KIB), DEFAULT_MIN_DOWNLOAD_RATE_KIB, 1, 1024 * 1024)
        * 1024,
        retry_schedule=_parse_retry_schedule(env.get(ARCHIVE_RETRY_SCHEDULE)),
        retry_max_hours=_parse_hours(ARCHIVE_RETRY_MAX_HOURS, env.get(ARCHIVE_RETRY_MAX_HOURS), DEFAULT_RETRY_MAX_HOURS, 0.001, 24 * 7),
        state_container=state_container,
        handoff_queue=_parse_handoff_queue(env.get(ARCHIVE_HANDOFF_QUEUE)),
        substatus_labels=_parse_per_app(ALTINN_SUBSTATUS_LABEL, env.get(ALTINN_SUBSTATUS_LABEL)),
        substatus_descriptions=_parse_per_app(ALTINN_SUBSTATUS_DESCRIPTION, env.get(ALTINN_SUBSTATUS_DESCRIPTION)),
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
