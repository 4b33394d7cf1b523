"""The fast layer: the pipeline, catch-up, replay and subscriptions on in-memory stand-ins
(tests/support/fakes.py) behind the same interfaces as Azure Storage and the HTTP transport. No
server, no socket: every branch of the order of steps in milliseconds. The integration layer
(tests/integration, tests/reliability) proves the same against Azurite and the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fakes import FakeAltinn, memory_runtime

PLATFORM = "http://platform.localhost"  # *.localhost is loopback (RFC 6761): plain http is allowed


@pytest.fixture(scope="session")
def private_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.fixture
def settings(private_pem: str) -> Any:
    from shared.config import load_settings

    return load_settings(
        {
            "ALTINN_APPS": "ttd/apps-test,ttd/big-app",
            "ALTINN_PLATFORM_URL": PLATFORM,
            "ALTINN_APPS_URL": "http://apps.localhost",
            "MASKINPORTEN_URL": PLATFORM + "/maskinporten/",
            "MASKINPORTEN_CLIENT_ID": "client",
            "MASKINPORTEN_KID": "kid",
            "MASKINPORTEN_PRIVATE_KEY": private_pem,
            "ARCHIVE_PARALLEL_DOWNLOADS": "1",
        }
    )


class Clock:
    """Monotonic seconds the test moves (queue visibility, catch-up budgets)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def altinn() -> FakeAltinn:
    return FakeAltinn(PLATFORM)


@pytest.fixture
def rt(settings: Any, altinn: FakeAltinn, clock: Clock) -> Iterator[Any]:
    """The runtime on the stand-ins. After the test: no write changed or removed an archive blob."""
    runtime = memory_runtime(settings, altinn, clock=clock)
    yield runtime
    assert runtime.container.changes() == [], "the archive is write-once: a blob that existed was changed or removed"
