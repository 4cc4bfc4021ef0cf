"""Shared fixtures: a private Redis per test session, a fresh PostgreSQL database per session.

Redis: a redis-server process of our own on a free port (so tests can stop it, and parallel runs
do not share keys). PostgreSQL: TOLLGATE_TEST_PG_DSN (default the local server's `postgres`
database) is used to CREATE a throw-away database, migrated, dropped at the end; if no server
answers, the embedded pgserver is started instead.
"""
from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from rater.schema import migrate
from tests.servers import run_enforcer
from tests.tenants import DECISION_ENV, mark_projected
from tollgate.local_services import start_postgres, start_redis

ADMIN_DSN = os.environ.get("TOLLGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def redis_server():
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def enforcer(redis_server):
    """The real enforcer (a subprocess) on the session's Redis, with a deadline generous enough
    that decisions under test are real on a busy machine (fail-open tests start their own)."""
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV}) as server:
        yield server


@pytest_asyncio.fixture
async def redis(redis_server):
    """A client on the session's Redis, emptied before each test and marked as completely
    projected (what a finished rebuild leaves: unknown keys are 401, not failed open)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a fail-open test may have stopped it
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    await mark_projected(client)
    yield client
    await client.aclose()


async def _admin_dsn(tmp_root) -> str:
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=3)
        await conn.close()
        return ADMIN_DSN
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return start_postgres(tmp_root / "pgdata")


@pytest_asyncio.fixture(scope="session")
async def pg_dsn(tmp_path_factory):
    """DSN of a freshly created and migrated database, dropped after the session."""
    admin = await _admin_dsn(tmp_path_factory.mktemp("pg"))
    name = f"tg_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(admin, name)
    await migrate(dsn)
    yield dsn
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest_asyncio.fixture
async def pg(pg_dsn):
    """A pool on the session database."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


def _with_database(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


# The Kafka broker fixtures, for tests that need them.
from tests.kafka_broker import kafka_bootstrap, kafka_idempotence  # noqa: E402,F401
