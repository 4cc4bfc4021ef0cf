"""Fixtures of the gateway tests: the real enforcer (tests/servers.py) on the session's Redis, an
LLM-like upstream, and tenants provisioned through the control plane's Redis projection."""
from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from tests.gateways.harness import Upstream
from tests.tenants import Tenant, stream_events
from tests.tenants import provision as _provision


async def provision(redis, wallet: int = 100_000_000, mode: str = "prepaid", request_price: str | None = None,
                    **limits) -> Tenant:
    """A tenant whose plan prices tokens only, unless a request price is given."""
    return await _provision(redis, mode=mode, wallet=wallet, request_price=request_price, **limits)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


@pytest.fixture
def logs_on_failure(request):
    """Servers (anything with .log()) whose log is printed when the test fails."""
    shown = []
    yield shown
    if failed(request):
        for server in shown:
            print(f"--- {type(server).__name__} log ---\n{server.log()[-10000:]}")


async def wait_event(redis, kind: str, field: str, value: str, timeout: float = 5.0) -> dict:
    """The first event of a kind whose field has that value, waiting for the enforcer's batches."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in await stream_events(redis, kind) if e.get(field) == value]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} event with {field}={value!r} within {timeout} s; "
                                 f"{kind} events: {await stream_events(redis, kind)}")
        await asyncio.sleep(0.05)


async def wait_usage(redis, correlation_id: str, timeout: float = 5.0) -> dict:
    """The usage event the gateway reported for a request, as the enforcer put it on the bus."""
    return await wait_event(redis, "usage", "correlation_id", correlation_id, timeout)


@pytest.fixture(scope="module")
def upstream():
    server = Upstream().start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def tenant(redis) -> Tenant:
    return await provision(redis)
