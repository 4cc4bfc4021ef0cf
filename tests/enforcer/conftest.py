"""Enforcer tests: a real enforcer process on the session's Redis, provisioned through the
control plane's Redis projection (control.projection.writes). Every test provisions its own plan, customer
and key ids, so the enforcer's cache never carries one test's keys into another."""
from __future__ import annotations

import httpx
import pytest
import pytest_asyncio

from tests.servers import HungServer


@pytest_asyncio.fixture
async def http():
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        yield client


@pytest.fixture
def black_hole():
    """A Redis that accepts connections and never says a word."""
    hole = HungServer(scheme="redis").start()
    yield hole
    hole.stop()
