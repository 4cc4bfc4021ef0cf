"""Enforcer tests: a real enforcer process on the session's Redis, provisioned through the
control plane's Redis projection (rater.projection). Every test provisions its own plan, customer
and key ids, so the enforcer's cache never carries one test's keys into another."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def http():
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        yield client


class BlackHole:
    """A TCP server that accepts connections and never says a word (a hung Redis)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)  # kept open, never read from nor written to
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()
