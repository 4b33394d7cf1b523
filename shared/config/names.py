"""The names of the settings (a public contract: docs/settings.md, infra/ sets them), the queue
names, and the defaults."""

from __future__ import annotations

# The settings this service reads, documented in docs/settings.md and set by infra/.
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
# Closing the loop after a confirmation: the substatus the submitter sees, and the hand-off queue.
ALTINN_SUBSTATUS_LABEL = "ALTINN_SUBSTATUS_LABEL"
ALTINN_SUBSTATUS_DESCRIPTION = "ALTINN_SUBSTATUS_DESCRIPTION"
ARCHIVE_HANDOFF_QUEUE = "ARCHIVE_HANDOFF_QUEUE"

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
    ALTINN_SUBSTATUS_LABEL,
    ALTINN_SUBSTATUS_DESCRIPTION,
    ARCHIVE_HANDOFF_QUEUE,
)

# Queue names are part of the contract with infra/ and the bindings in function_app.py.
EVENTS_QUEUE = "altinn-events"
POISON_QUEUE = EVENTS_QUEUE + "-poison"
# One message per archived and confirmed instance, for the agency's case systems (docs/handoff.md).
DEFAULT_HANDOFF_QUEUE = "altinn-archived"
HANDOFF_OFF = "off"  # ARCHIVE_HANDOFF_QUEUE=off turns the hand-off off

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
