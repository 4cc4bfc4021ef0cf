"""Fixtures of the control-plane tests: the PostgreSQL database lives for the whole session, so
every test works on its own plan and customer ids."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from control.http.app import create_app
from control.accounts import customers, plans
from tollgate.config import Settings
from tests.tenants import uid  # noqa: F401  (the tests' one id maker, re-exported)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PLAN = ROOT / "examples" / "plans" / "llm-standard.yaml"
TOKEN = "test-admin-token"


def plan_text(plan_id: str, replace: dict[str, str] | None = None) -> str:
    """The sample plan under another id; `replace` swaps exact snippets of its text."""
    text = SAMPLE_PLAN.read_text().replace("id: llm-standard", f"id: {plan_id}", 1)
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def settings(pg_dsn, redis_server) -> Settings:
    return Settings(database_url=pg_dsn, redis_url=redis_server.url, admin_token=TOKEN)


@pytest_asyncio.fixture
async def plan_id(pg, redis) -> str:
    pid = uid("plan")
    await plans.apply_plan(pg, redis, plan_text(pid))
    return pid


@pytest_asyncio.fixture
async def customer_id(pg, redis, plan_id) -> str:
    c = await customers.create_customer(pg, redis, name="Acme", plan_id=plan_id)
    return c["id"]


@pytest_asyncio.fixture
async def client(settings, pg, redis):
    """The admin API in process (ASGI), on the test PostgreSQL pool and Redis client."""
    app = create_app(settings, db=pg, redis=redis)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as c:
        yield c
