"""Parsing and validating one setting's value. Each error names the setting, never its value."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config.names import (
    ALTINN_APPS,
    ALTINN_EVENT_TYPES,
    ARCHIVE_HANDOFF_QUEUE,
    ARCHIVE_RETRY_SCHEDULE,
    CATCHUP_SCHEDULE,
    DEFAULT_CATCHUP_SCHEDULE,
    DEFAULT_EVENT_TYPES,
    DEFAULT_HANDOFF_QUEUE,
    DEFAULT_RETRY_SCHEDULE,
    DEFAULT_STORAGE,
    EVENTS_QUEUE,
    HANDOFF_OFF,
    MAX_RETRY_DELAY,
    POISON_QUEUE,
    STORAGE,
)
from shared.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


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


# An ``org/app=`` prefix: the org and app rules of shared.models (lower-case letters, digits, hyphens).
_PER_APP = re.compile(r"^\s*([a-z0-9][a-z0-9-]{0,62})/([a-z0-9][a-z0-9-]{0,99})\s*=(.*)$", re.DOTALL)
# Altinn shows the substatus in the inbox; storage takes any string (altinn-storage Substatus.cs:
# Label, Description), we keep them to a size a person reads.
MAX_SUBSTATUS_TEXT = 255


def _parse_per_app(name: str, raw: str | None) -> dict[tuple[str, str] | None, str]:
    """``text`` for every app, or ``org/app=text`` entries separated by ``;``, where an entry without
    ``org/app=`` is the default for the apps not named. ``{None: default, (org, app): text}``."""
    if raw is None or not raw.strip():
        return {}
    values: dict[tuple[str, str] | None, str] = {}
    for entry in raw.split(";"):
        if not entry.strip():
            continue
        match = _PER_APP.match(entry)
        key: tuple[str, str] | None = (match.group(1), match.group(2)) if match else None
        text = (match.group(3) if match else entry).strip()
        if not text or len(text) > MAX_SUBSTATUS_TEXT or any(ord(c) < 0x20 for c in text):
            raise ConfigError(name, f"each text must be 1 to {MAX_SUBSTATUS_TEXT} printable characters")
        if key in values:
            raise ConfigError(name, "names an app (or the default) twice")
        values[key] = text
    return values


def _parse_handoff_queue(raw: str | None) -> str | None:
    """The hand-off queue's name (Azure's rules: 3-63 lower-case letters, digits, single hyphens), or
    None for ``off``."""
    value = (raw or "").strip() or DEFAULT_HANDOFF_QUEUE
    if value.lower() == HANDOFF_OFF:
        return None
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", value) or value in (EVENTS_QUEUE, POISON_QUEUE):
        raise ConfigError(ARCHIVE_HANDOFF_QUEUE, f"must be a queue name other than the event queues, or '{HANDOFF_OFF}'")
    return value


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
