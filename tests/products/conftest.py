"""One product type per module, end to end through real processes on loopback: `tollgate-control`
(the admin API: plans, cost catalogs, the customer's hierarchy, top-ups, the read API), the
enforcer (/v1/check, /v1/usage) and `tollgate-rater`, on a Redis of the module's own (the session
Redis is emptied by other tests' fixtures) and the session's PostgreSQL. Everything a test sets up
goes through HTTP, as an operator and a gateway would.

Expected amounts are computed in the tests themselves from the example plan's prices (Decimal),
never by the engine."""
from __future__ import annotations

from decimal import Decimal

import pytest_asyncio

from tests.stack import Stack, running_stack

TOKEN = "products-admin-token"


def micros(amount: Decimal) -> int:
    """Exact micros of a Decimal amount; the tests choose quantities whose amounts need no rounding."""
    m = amount * 1_000_000
    assert m == m.to_integral_value(), f"{amount} is not a whole number of micros"
    return int(m)


@pytest_asyncio.fixture(scope="module")
async def stack(pg_dsn):
    async with running_stack(pg_dsn, TOKEN) as s:
        yield s


async def wait_settled(pg, stack: Stack, cid: str, events: int, holds: int) -> None:
    """Until the rater has rated `events` usage events of the customer and settled `holds` holds."""
    async def done() -> bool:
        n = await pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = $1 AND kind = 'usage'", cid)
        h = await pg.fetchval("SELECT count(*) FROM holds WHERE customer_id = $1 AND status = 'settled'", cid)
        return (n, h) == (events, holds)
    await stack.until(done, f"{events} events rated and {holds} holds settled")


async def ledger(pg, cid: str) -> set[tuple]:
    """The customer's ledger lines: (event, charge, kind, metric, quantity, amount, cost, key, team, app)."""
    rows = await pg.fetch("SELECT event_id, charge_id, kind, metric, quantity, amount_micros, cost_micros,"
                          " key_id, team_id, app_id FROM ledger_lines WHERE customer_id = $1", cid)
    return {tuple(r) for r in rows}


async def holds(pg, cid: str) -> dict[str, tuple]:
    """hold id -> (status, amount placed, amount released, the event that settled it)."""
    rows = await pg.fetch("SELECT hold_id, status, amount_micros, released_micros, event_id FROM holds"
                          " WHERE customer_id = $1", cid)
    return {r["hold_id"]: (r["status"], r["amount_micros"], r["released_micros"], r["event_id"]) for r in rows}
