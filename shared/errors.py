"""Every failure class the service distinguishes, in one place.

The class decides what happens to the event:

* :class:`InvalidEvent` - the webhook answers 4xx with a problem body and queues nothing.
* :class:`TransientError` - the archive function raises, the queue delivers again later,
  and after ``maxDequeueCount`` attempts the message lands on the poison queue.
* :class:`PermanentError` - retrying cannot help (instance gone, access denied, an app we
  do not serve): the message goes straight to the poison queue with its reason, for an
  operator to look at and replay once the cause is fixed.
* :class:`ConfigError` - a setting is missing or malformed; raised before any work is done.

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


class UntrustedHostError(PermanentError):
    """A request would have carried our bearer token to a host that is not a configured Altinn host."""
