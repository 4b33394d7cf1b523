"""Fixtures of the reliability suite (on top of tests/conftest.py: Azurite, the simulator, settings,
the local host). Small blocks (1 MiB) so that multi-block uploads happen with small elements."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.archive import install_complete_guard
from tests.support.hostile import HostileAltinn


@pytest.fixture
def rel_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("ARCHIVE_BLOCK_SIZE_MIB", "1")
    monkeypatch.setenv("ARCHIVE_PARALLEL_DOWNLOADS", "4")
    # A retry window of about 11 s (tests/conftest.py: 3.6 s): room for several deferred attempts
    # on a loaded machine, still short enough for the tests that wait for it to run out.
    monkeypatch.setenv("ARCHIVE_RETRY_MAX_HOURS", "0.003")
    return dict(env, ARCHIVE_BLOCK_SIZE_MIB="1", ARCHIVE_PARALLEL_DOWNLOADS="4", ARCHIVE_RETRY_MAX_HOURS="0.003")


@pytest.fixture
def guarded(sim: Any, container: Any, rel_env: dict[str, str]) -> Any:
    """The simulator refuses to count a /complete whose archive is not whole (see support)."""
    install_complete_guard(sim, container)
    return sim


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> float:
    """Read timeouts of 1 s towards Altinn and Maskinporten, so a 'read timeout' fault costs 1.5 s."""
    import shared.altinn
    import shared.maskinporten

    monkeypatch.setattr(shared.altinn, "TIMEOUT", (2, 1.0))
    monkeypatch.setattr(shared.maskinporten, "TIMEOUT", (2, 1.0))
    return 1.0


@pytest.fixture
def rel_host(rel_env: dict[str, str], azurite: Any, host_json: Any) -> Iterator[Any]:
    """The real function app in the local host; 4 workers, no wait between retries, 5 attempts."""
    import function_app
    from devtools.localhost import LocalHost

    with LocalHost(function_app.app, connection_string=azurite.connection_string, host_json=host_json) as runner:
        yield runner


# -- the webhook alone, configured for TT02 (no simulator): corpus and fuzz tests -------------------

WEBHOOK_APPS = "ttd/apps-test,digdir/skjema"


@pytest.fixture
def webhook_env(monkeypatch: pytest.MonkeyPatch, azurite: Any, rsa_key: dict[str, Any]) -> dict[str, str]:
    """The TT02 preset, no host overrides: any attempt to reach Altinn would go to the real TT02
    (and is stopped by the socket guard). Storage is Azurite; both queues start empty."""
    from tests.conftest import _clear_queues

    for name in ("ALTINN_PLATFORM_URL", "ALTINN_APPS_URL", "MASKINPORTEN_URL", "MASKINPORTEN_CERTIFICATE", "ALTINN_EVENT_TYPES"):
        monkeypatch.delenv(name, raising=False)
    values = {
        "ALTINN_ENVIRONMENT": "tt02",
        "ALTINN_APPS": WEBHOOK_APPS,
        "MASKINPORTEN_CLIENT_ID": "hostile-corpus",
        "MASKINPORTEN_PRIVATE_KEY": rsa_key["private_pem"],
        "MASKINPORTEN_KID": "k",
        "ARCHIVE_CONTAINER": "unused-by-the-webhook",
        "AzureWebJobsStorage": azurite.connection_string,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    _clear_queues(azurite.connection_string)
    return values


@pytest.fixture
def socket_guard(azurite: Any) -> Iterator[Any]:
    """Outbound connections only to 127.0.0.1 on Azurite's ports (tests add their own servers)."""
    from tests.support.network import SocketGuard

    with SocketGuard({azurite.blob_port, azurite.queue_port}) as guard:
        yield guard
    assert guard.violations == [], f"outbound connections attempted: {guard.violations[:10]}"


@pytest.fixture
def sent_messages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(queue name, content before encoding) of every message the process stores in a queue."""
    from azure.storage.queue import QueueClient

    sent: list[tuple[str, str]] = []
    original = QueueClient.send_message

    def send_message(self: Any, content: Any, **kwargs: Any) -> Any:
        result = original(self, content, **kwargs)
        sent.append((self.queue_name, content))  # only what was stored
        return result

    monkeypatch.setattr(QueueClient, "send_message", send_message)
    return sent


@pytest.fixture
def webhook_host(webhook_env: dict[str, str], azurite: Any, host_json: Any, socket_guard: Any) -> Iterator[Any]:
    """The receive function alone in the local host (no queue trigger: nothing is archived)."""
    from devtools.localhost import LocalHost
    from tests.support.workers import webhook_only_app

    with LocalHost(webhook_only_app(), connection_string=azurite.connection_string, host_json=host_json) as runner:
        socket_guard.allowed_ports.add(runner.port)
        yield runner


# -- a hostile Altinn (test_hostile_upstream, test_hostile_queue) ----------------------------------


@pytest.fixture
def altinn(monkeypatch: pytest.MonkeyPatch, azurite: Any, rsa_key: dict[str, Any]) -> Iterator[HostileAltinn]:
    """The app's settings pointed at a hostile Altinn (tests/support/hostile.py) and Azurite."""
    from tests.conftest import _clear_queues

    with HostileAltinn() as server:
        values = {
            "ALTINN_ENVIRONMENT": "tt02",
            "ALTINN_APPS": "ttd/apps-test",
            "ALTINN_PLATFORM_URL": server.url,
            "ALTINN_APPS_URL": "http://127.0.0.1:9",  # never called: nothing listens there
            "MASKINPORTEN_URL": server.maskinporten_issuer,
            "MASKINPORTEN_CLIENT_ID": "hostile-test",
            "MASKINPORTEN_PRIVATE_KEY": rsa_key["private_pem"],
            "MASKINPORTEN_KID": "k1",
            "ARCHIVE_CONTAINER": f"hostile-{uuid.uuid4().hex[:12]}",
            "ARCHIVE_STATE_CONTAINER": f"state-{uuid.uuid4().hex[:12]}",
            "AzureWebJobsStorage": azurite.connection_string,
            "ARCHIVE_RETRY_SCHEDULE": "0",
        }
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        for name in ("MASKINPORTEN_CERTIFICATE", "ALTINN_EVENT_TYPES", "ARCHIVE_BLOCK_SIZE_MIB"):
            monkeypatch.delenv(name, raising=False)
        _clear_queues(azurite.connection_string)
        yield server
