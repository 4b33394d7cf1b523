"""Every failure class the service distinguishes, in one place.

The class decides what happens to the event:

* :class:`InvalidEvent` - the webhook answers 4xx with a problem body and queues nothing.
* :class:`TransientError` - may pass: the archive function schedules its next attempt itself
  (``ARCHIVE_RETRY_SCHEDULE``) and parks the message after ``ARCHIVE_RETRY_MAX_HOURS``.
* :class:`PermanentError` - retrying cannot help (instance gone, access denied, an app we
  do not serve, an instance document that does not fit the model): the message goes straight to
  the poison queue with its reason, for an operator to look at and replay once the cause is fixed.
  :class:`InvalidInstance` names the member of Altinn's document that did not fit.
* :class:`ConfigError` - a setting is missing or malformed; raised before any work is done.
  :class:`UnresolvedKeyVaultReference` is the one that may pass by itself (the platform has not
  resolved the reference yet): the archive function retries it on its schedule.

Messages never contain tokens, keys or grants: callers pass only what is safe to log.
"""

from __future__ import annotations


class MottakError(Exception):
    """Base class of the errors this package raises on purpose."""


class ConfigError(MottakError):
    """A setting is missing or malformed. The message names the setting, never its value."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"setting {setting}: {problem}")


class InvalidEvent(MottakError):
    """A webhook call that is not an acceptable event. Maps to a 4xx problem response."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        self.code = code
        self.detail = detail
        self.status = status
        super().__init__(f"{code}: {detail}")


class TransientError(MottakError):
    """A failure that may pass: 5xx, 429, timeouts, resets, truncated bodies, scans pending."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


class PermanentError(MottakError):
    """A failure that retrying will not fix: 404 instance gone, 403 denied, an app we do not serve."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class InvalidInstance(PermanentError):
    """Altinn's instance document does not fit the model; ``field`` names the member (``data[2].size``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"the instance document from Altinn is refused: {field} {problem}")


class UnresolvedKeyVaultReference(ConfigError):
    """A setting still holds the literal ``@Microsoft.KeyVault(...)`` text: the platform did not resolve it."""

    def __init__(self, setting: str) -> None:
        super().__init__(
            setting,
            "is an unresolved Key Vault reference (@Microsoft.KeyVault(...)): check that the secret named in the "
            "reference exists in the vault, that the function app's identity (keyVaultReferenceIdentity) has the "
            "'Key Vault Secrets User' role on the vault, then restart the function app; the CLI needs the key "
            "itself exported, since only the Functions platform resolves references",
        )


class UntrustedHostError(PermanentError):
    """A request would have carried our bearer token to a host that is not a configured Altinn host."""


class ConfirmationRefused(PermanentError):
    """The archive is whole, but Altinn refused ``/complete`` (403): the app's policy does not grant
    the ``complete`` action to the org where the instance is (the standard policy grants it at
    ``EndEvent_1`` only). Recorded next to the archive and parked once; catch-up leaves the instance
    alone for ``CATCHUP_REFUSED_QUIET_HOURS``."""
