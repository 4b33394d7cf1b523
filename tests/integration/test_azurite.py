"""devtools.azurite: a real Azurite process, started, paused and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from devtools.azurite import ACCOUNT_KEY, Azurite, AzuriteError, find_executable
from tests.support.flow import read_until

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lifecycle_pause_and_cleanup() -> None:
    azurite = Azurite()
    with azurite:
        pid, workdir = azurite.pid, azurite._workdir
        assert pid is not None and workdir is not None and workdir.is_dir()
        assert azurite.connection_string == (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{azurite.blob_port}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{azurite.queue_port}/devstoreaccount1;"
        )
        BlobServiceClient.from_connection_string(azurite.connection_string).create_container("box")
        queue = QueueClient.from_connection_string(azurite.connection_string, "q-life", connection_timeout=1, read_timeout=1, retry_total=0)
        queue.create_queue()
        with azurite.frozen():
            assert azurite.paused
            with pytest.raises(ServiceResponseError):  # accepted by the kernel, never answered
                queue.get_queue_properties()
        assert not azurite.paused
        assert queue.get_queue_properties().approximate_message_count == 0
        azurite.pause()  # stop() must also end a paused Azurite
    assert not alive(pid)
    assert not workdir.exists()
    assert not azurite.running
    with pytest.raises(AzuriteError):
        _ = azurite.blob_port


def test_port_taken_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AzuriteError, match="EADDRINUSE"):
            Azurite(blob_port=port, queue_port=port + 1 if port < 65535 else port - 1).start()


def test_missing_azurite_says_npm_install(tmp_path: Path) -> None:
    with pytest.raises(AzuriteError, match="npm install"):
        find_executable(tmp_path)
    with pytest.raises(AzuriteError, match="not running"):
        Azurite().pause()


def test_command_line_prints_the_connection_string_and_cleans_up() -> None:
    process = subprocess.Popen([sys.executable, "-m", "devtools.azurite"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = read_until(process, "AzureWebJobsStorage=", timeout=30)
        connection_string = lines[-1].strip().removeprefix("AzureWebJobsStorage=")
        pid = int(next(line for line in lines if "pid" in line).split("pid ")[1].split(")")[0])
        QueueClient.from_connection_string(connection_string, "q-cli").create_queue()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        assert not alive(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
