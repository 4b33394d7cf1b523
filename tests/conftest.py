"""Shared fixtures: a real Azurite, the Altinn/Maskinporten simulator over real sockets, keys made
at test time, and the function app run by the local host runner.

Nothing here mocks storage or HTTP: every call crosses a socket to a real server.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "test-client"
KID = "test-kid"


@pytest.fixture(scope="session")
def rsa_key() -> dict[str, Any]:
    """An RSA key pair and a self-signed certificate, generated for this run only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "altinn-mottak test"), x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, "NTRNO-991825827")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return {
        "private_pem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "public_pem": key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }


@pytest.fixture(scope="session")
def azurite() -> Iterator[Any]:
    from devtools.azurite import Azurite

    with Azurite() as server:
        yield server


@pytest.fixture(scope="session")
def write_once(azurite: Any) -> Iterator[Any]:
    """The write-once guard (tests/support/write_once.py) in front of Azurite's blob endpoint.

    The app's storage setting (``env``: AzureWebJobsStorage) goes through it, so every blob request
    the product makes, in this process or in the workers and CLI runs started with that setting,
    is checked: one that could overwrite, change or delete an existing blob in an archive container
    is refused (409 WriteOnceViolation) and fails the test. Tests inspect and tamper with
    ``azurite.connection_string``, which bypasses it. Queues are not proxied.
    """
    from tests.support.write_once import WriteOnceGuard

    with WriteOnceGuard(azurite.blob_port, azurite.host) as guard:
        yield guard


@pytest.fixture
def sim(rsa_key: dict[str, Any]) -> Iterator[Any]:
    from devtools.simulator import Simulator

    with Simulator() as server:
        server.register_client(CLIENT_ID, public_key_pem=rsa_key["public_pem"], kid=KID, org="ttd")
        yield server


@pytest.fixture
def host_json(tmp_path: Path) -> Path:
    """host.json as shipped, but with no wait between retries so redelivery tests run fast."""
    doc = json.loads((ROOT / "host.json").read_text())
    doc["extensions"]["queues"]["visibilityTimeout"] = "00:00:00"
    path = tmp_path / "host.json"
    path.write_text(json.dumps(doc))
    return path


def _clear_queues(connection_string: str) -> None:
    """The events and poison queues, existing and empty, as infra/ provisions them in Azure.

    The Functions host (and so LocalHost) never creates its trigger queue, so a test that writes to
    the events queue itself needs it made here; the app's webhook creates it on its first write.
    """
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueClient

    from shared.config import EVENTS_QUEUE, POISON_QUEUE

    for name in (EVENTS_QUEUE, POISON_QUEUE):
        queue = QueueClient.from_connection_string(connection_string, name)
        try:
            queue.create_queue()  # an existing queue answers 204, or 409 if its metadata differs
        except ResourceExistsError:
            pass
        queue.clear_messages()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, azurite: Any, write_once: Any, sim: Any, rsa_key: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Settings pointing the app at the simulator and Azurite; a fresh archive container per test.

    The app's blob endpoint is the write-once guard (``write_once``): a request of the product that
    could modify or delete an existing archive blob fails the test at teardown.
    """
    values = {
        "ALTINN_ENVIRONMENT": "tt02",
        "ALTINN_APPS": "ttd/apps-test,ttd/big-app",
        "ALTINN_EVENT_TYPES": "app.instance.process.completed",
        "ALTINN_PLATFORM_URL": sim.url,
        "ALTINN_APPS_URL": sim.apps_url,
        "MASKINPORTEN_URL": sim.maskinporten_issuer,
        "MASKINPORTEN_CLIENT_ID": CLIENT_ID,
        "MASKINPORTEN_PRIVATE_KEY": rsa_key["private_pem"],
        "MASKINPORTEN_KID": KID,
        "ARCHIVE_CONTAINER": f"archive-{uuid.uuid4().hex[:12]}",
        "ARCHIVE_STATE_CONTAINER": f"state-{uuid.uuid4().hex[:12]}",
        # A hand-off queue per test, so that counting its messages counts this test's only.
        "ARCHIVE_HANDOFF_QUEUE": f"handoff-{uuid.uuid4().hex[:12]}",
        "AzureWebJobsStorage": write_once.connection_string(azurite.connection_string),
        # The app's own retry schedule, shortened: two immediate retries, then one a second, and a
        # transient failure is parked after 3.6 s (in Azure: 60 s growing to an hour, for 24 hours).
        "ARCHIVE_RETRY_SCHEDULE": "0,0,1",
        "ARCHIVE_RETRY_MAX_HOURS": "0.001",
    }
    monkeypatch.delenv("MASKINPORTEN_CERTIFICATE", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    _clear_queues(azurite.connection_string)
    write_once.reset()
    yield values
    violations = write_once.take()
    if violations:
        listed = "\n".join(f"  {v}" for v in violations[:50])
        more = f"\n  ... and {len(violations) - 50} more" if len(violations) > 50 else ""
        pytest.fail(
            f"write-once guard: {len(violations)} request(s) of the product to an archive container would have "
            f"modified or deleted an existing blob (refused with 409 WriteOnceViolation):\n{listed}{more}",
            pytrace=False,
        )


@pytest.fixture
def container(env: dict[str, str], azurite: Any) -> Any:
    from azure.storage.blob import ContainerClient

    return ContainerClient.from_connection_string(azurite.connection_string, env["ARCHIVE_CONTAINER"])


@pytest.fixture
def queues(env: dict[str, str], azurite: Any) -> Any:
    """(events queue, poison queue) clients that decode base64 like the Functions host."""
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from shared.config import EVENTS_QUEUE, POISON_QUEUE

    def client(name: str) -> Any:
        return QueueClient.from_connection_string(azurite.connection_string, name, message_decode_policy=TextBase64DecodePolicy())

    return client(EVENTS_QUEUE), client(POISON_QUEUE)


@pytest.fixture
def host(env: dict[str, str], azurite: Any, host_json: Path) -> Iterator[Any]:
    """The real function_app.app served by the local host runner against Azurite."""
    import function_app
    from devtools.localhost import LocalHost

    with LocalHost(function_app.app, connection_string=azurite.connection_string, host_json=host_json) as runner:
        yield runner
