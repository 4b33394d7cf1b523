"""Altinn Events subscriptions for our apps: create (and wait for validation), list, delete.

A subscription sends every event of one app (``sourceFilter`` = ``{app host}/{org}/{app}``) and one
type (``typeFilter``) to our webhook. Altinn validates it by POSTing a
``platform.events.validatesubscription`` event to the endpoint; until the endpoint answers 2xx the
subscription delivers nothing. So :func:`subscribe` waits for ``validated`` and says plainly when it
has not happened yet.

Altinn retries a failed validation only for a few minutes, then gives up; it sends a new validation
event whenever the *identical* subscription is posted again, and answers with the existing one
(Altinn/altinn-events src/Events/Services/SubscriptionService.cs ``CompleteSubscriptionCreation``:
``FindSubscription`` ... ``PublishValidationEvent``). So :func:`subscribe` reuses an identical
validated subscription without posting, and posts an identical *unvalidated* one again: that is how
a failed first validation is repaired. "Identical" is what Altinn compares
(src/Events/Migration/FunctionsAndProcedures/findsubscription.sql): endpoint, source, resource,
subject and type filters, consumer and ``includeSubunits`` (``alternativeSubjectFilter`` is mapped
to the subject filter by src/Events/Services/AppSubscriptionService.cs).

The endpoint URL carries the function key (``?code=``), a secret: it is never logged or printed.
:func:`redact_endpoint` masks it in everything we show; ``Subscription.to_dict`` only has the
masked form.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.config import Settings, _is_loopback
from shared.errors import PermanentError
from shared.runtime import Runtime

log = logging.getLogger("altinn_mottak.subscriptions")

VALIDATION_WAIT = 30.0  # seconds subscribe waits for Altinn's validation push, by default
_SECRET_PARAMS = {"code", "key", "sig", "token", "access_token", "x-functions-key"}


def source_filter(settings: Settings, org: str, app: str) -> str:
    """``{app host}/{org}/{app}``: exactly what Altinn wants (no trailing slash)."""
    return f"{settings.apps_base(org)}/{org}/{app}"


def redact_endpoint(url: Any) -> str:
    """The endpoint with secrets masked: query values of code/key/sig/token and any user information."""
    if not isinstance(url, str):
        return ""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]  # without user information
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, host, parts.path, query, ""))
    except ValueError:
        return "(unparsable endpoint)"


def check_endpoint(url: str, *, require_key: bool = True) -> str:
    """Validate a webhook endpoint before Altinn sees it. ValueError says what is wrong (never the key)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("the endpoint is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("the endpoint must be an absolute https URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("the endpoint must use https (plain http only for a loopback host)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the endpoint must not contain user information")
    if parts.fragment:
        raise ValueError("the endpoint must not contain a fragment")
    if require_key and not any(k == "code" and v for k, v in parse_qsl(parts.query)):
        raise ValueError(
            "the endpoint has no function key: the webhook needs ?code=<function key> "
            "(az functionapp function keys list ... --function-name receive), or pass --no-key-check"
        )
    return url


@dataclass(frozen=True)
class Subscription:
    id: int
    endpoint: str  # with the function key: never shown; use ``endpoint_redacted``
    source_filter: str | None
    type_filter: str | None
    resource_filter: str | None
    validated: bool
    created: str | None
    consumer: str | None
    app: str | None  # "org/app" when the source filter is one of our apps' sources
    subject_filter: str | None = None
    alternative_subject_filter: str | None = None
    include_subunits: bool = False

    def identity(self) -> tuple[Any, ...]:
        """What Altinn compares to find an identical subscription (we never set a resource filter:
        Altinn derives it from the source)."""
        return (self.endpoint, self.source_filter, self.type_filter, self.subject_filter, self.alternative_subject_filter, self.include_subunits)

    def __repr__(self) -> str:  # never show the key
        return f"Subscription(id={self.id}, app={self.app!r}, type={self.type_filter!r}, validated={self.validated})"

    @property
    def endpoint_redacted(self) -> str:
        return redact_endpoint(self.endpoint)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "typeFilter": self.type_filter,
            "sourceFilter": self.source_filter,
            "resourceFilter": self.resource_filter,
            "endPoint": self.endpoint_redacted,
            "validated": self.validated,
            "created": self.created,
            "consumer": self.consumer,
        }

    @classmethod
    def from_altinn(cls, settings: Settings, doc: dict[str, Any]) -> Subscription:
        sources = {source_filter(settings, org, app): f"{org}/{app}" for org, app in settings.apps}
        source = doc.get("sourceFilter") if isinstance(doc.get("sourceFilter"), str) else None
        try:
            sub_id = int(doc.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PermanentError("Altinn returned a subscription without an id") from None
        return cls(
            id=sub_id,
            endpoint=str(doc.get("endPoint") or ""),
            source_filter=source,
            type_filter=doc.get("typeFilter") if isinstance(doc.get("typeFilter"), str) else None,
            resource_filter=doc.get("resourceFilter") if isinstance(doc.get("resourceFilter"), str) else None,
            validated=doc.get("validated") is True,
            created=doc.get("created") if isinstance(doc.get("created"), str) else None,
            consumer=doc.get("consumer") if isinstance(doc.get("consumer"), str) else None,
            app=sources.get((source or "").rstrip("/")),
            subject_filter=_text(doc.get("subjectFilter")),
            alternative_subject_filter=_text(doc.get("alternativeSubjectFilter")),
            include_subunits=doc.get("includeSubunits") is True,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass
class SubscribeResult:
    subscription: Subscription
    app: str
    type: str
    existed: bool  # an identical subscription was there already
    reposted: bool = False  # it existed unvalidated and was posted again for a new validation event

    @property
    def validated(self) -> bool:
        return self.subscription.validated

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app, "type": self.type, "existed": self.existed, "reposted": self.reposted, **self.subscription.to_dict()}


def list_subscriptions(rt: Runtime, apps: Iterable[str] | None = None, *, ours_only: bool = False) -> list[Subscription]:
    """Our org's subscriptions, optionally only those of ``apps`` (``org/app``) or of configured apps."""
    wanted = set(apps) if apps is not None else None
    subs = [Subscription.from_altinn(rt.settings, doc) for doc in rt.altinn.list_subscriptions()]
    if wanted is not None:
        subs = [s for s in subs if s.app in wanted]
    elif ours_only:
        subs = [s for s in subs if s.app is not None]
    return sorted(subs, key=lambda s: s.id)


def subscribe(
    rt: Runtime,
    apps: Iterable[tuple[str, str]],
    endpoint: str,
    types: Iterable[str],
    *,
    wait: float = VALIDATION_WAIT,
    poll_interval: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> list[SubscribeResult]:
    """One subscription per (app, type), reusing an identical existing one; then wait up to ``wait``
    seconds until Altinn has validated each (its validation event reached our webhook), asking
    after 0.1 s, then twice as long each time up to ``poll_interval``."""
    settings = rt.settings
    pairs = [(org, app, t) for org, app in sorted(set(apps)) for t in sorted(set(types))]
    for org, app, _ in pairs:
        if (org, app) not in settings.apps:
            raise ValueError(f"{org}/{app} is not in ALTINN_APPS")
    existing = {s.identity(): s for s in list_subscriptions(rt)}
    results = [_ensure(rt, existing, endpoint, org, app, event_type) for org, app, event_type in pairs]
    _wait_validated(rt, results, wait, poll_interval, progress)
    for r in results:
        if not r.validated:
            log.warning(
                "subscription %d is not validated by Altinn yet: no events are delivered until the endpoint answers Altinn's validation event with 2xx",
                r.subscription.id,
                extra={"app": r.app, "subscription_id": r.subscription.id},
            )
    return results


def _ensure(rt: Runtime, existing: dict[tuple[Any, ...], Subscription], endpoint: str, org: str, app: str, event_type: str) -> SubscribeResult:
    """Reuse an identical validated subscription; post an identical unvalidated one again (a new
    validation event); otherwise create one."""
    settings = rt.settings
    source = source_filter(settings, org, app)
    found = existing.get((endpoint, source, event_type, None, None, False))
    fields = {"org": org, "app": app, "event_type": event_type}
    if found is not None and found.validated:
        log.info("subscription exists already", extra=fields | {"subscription_id": found.id})
        return SubscribeResult(found, f"{org}/{app}", event_type, existed=True)
    body = {"endPoint": endpoint, "sourceFilter": source, "typeFilter": event_type}
    created = Subscription.from_altinn(settings, rt.altinn.create_subscription(body))
    if found is not None:
        log.info("subscription exists but is not validated: posted again for a new validation event", extra=fields | {"subscription_id": created.id})
        return SubscribeResult(created, f"{org}/{app}", event_type, existed=True, reposted=True)
    log.info("subscription created (endpoint %s)", created.endpoint_redacted, extra=fields | {"subscription_id": created.id})
    return SubscribeResult(created, f"{org}/{app}", event_type, existed=False)


def _wait_validated(rt: Runtime, results: list[SubscribeResult], wait: float, poll_interval: float, progress: Callable[[str], None] | None) -> None:
    """Ask after 0.1 s, then twice as long each time up to ``poll_interval``, until ``wait`` is spent."""
    deadline = time.monotonic() + max(0.0, wait)
    pause = min(0.1, poll_interval)
    while True:
        pending = [r for r in results if not r.validated]
        if not pending or time.monotonic() >= deadline:
            return
        if progress is not None:
            progress(f"waiting for Altinn to validate {len(pending)} subscription(s)")
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, poll_interval)
        for r in pending:
            r.subscription = Subscription.from_altinn(rt.settings, rt.altinn.get_subscription(r.subscription.id))


def unsubscribe(rt: Runtime, subscription_id: int) -> None:
    """Delete one subscription (PermanentError 404 when it does not exist)."""
    rt.altinn.delete_subscription(subscription_id)
    log.info("subscription deleted", extra={"subscription_id": subscription_id})
