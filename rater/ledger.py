"""The rating transaction's PostgreSQL side: idempotency records, ledger lines, cumulatives.

Everything is batched: one statement per table per (sub-)batch (arrays through unnest, ledger
lines by binary COPY), all in the one transaction the pipeline opens, so a sub-batch is durable
as a whole or not at all.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import NamedTuple

import asyncpg

from rater.pricing import UsageKey

# Advisory locks serialising the rating of a customer across processes: one per lock group
# (crc32 of the customer id mod LOCK_GROUPS), two-int form (namespace, group). Every rater and the
# period close must agree on LOCK_GROUPS, hence a constant. A batch is split by lock group into
# sub-batches, so two consumers (or two connections of one) rate disjoint groups in parallel.
LOCK_NAMESPACE = 0x7261_7465  # 'rate'
LOCK_GROUPS = 8

LEDGER_COLUMNS = (
    "event_id", "line_no", "correlation_id", "customer_id", "plan_id", "period", "kind",
    "charge_id", "metric", "dimension_key", "quantity", "unit_price", "amount_micros",
)


PROCESSED_COLUMNS = (
    "event_id", "kind", "customer_id", "period", "spend_micros", "wallet_micros", "invoice_micros",
    "hold_id", "actual_tokens", "correlation_id",
)


class Processed(NamedTuple):
    """A processed_events row (fields in PROCESSED_COLUMNS order, so it is its own COPY record):
    what settle.lua needs to (re)play the event on Redis."""

    event_id: str
    kind: str
    customer_id: str
    period: str
    spend_micros: int
    wallet_micros: int
    invoice_micros: int
    hold_id: str | None
    actual_tokens: int
    correlation_id: str | None


def lock_group(customer_id: str) -> int:
    """Stable across processes (unlike hash())."""
    return zlib.crc32(customer_id.encode()) % LOCK_GROUPS


async def try_lock_group(conn: asyncpg.Connection, group: int) -> bool:
    """Session-level lock, held from before the idempotency check until after the Redis settle:
    the cumulatives, the idempotency check and the wallet read for routing all see another
    consumer's sub-batch of the same customers entirely or not at all."""
    return await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, group)


async def try_lock_groups(conn: asyncpg.Connection, groups: Sequence[int]) -> list[bool]:
    """try_lock_group for each of `groups`, in one round trip: whether each lock was taken."""
    rows = await conn.fetch(
        "SELECT pg_try_advisory_lock($1, g) FROM unnest($2::int[]) WITH ORDINALITY AS t(g, i) ORDER BY i",
        LOCK_NAMESPACE, list(groups),
    )
    return [r[0] for r in rows]


async def lock_group_wait(conn: asyncpg.Connection, group: int) -> None:
    await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, group)


async def unlock_group(conn: asyncpg.Connection, group: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, group)


async def unlock_groups(conn: asyncpg.Connection, groups: Sequence[int]) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, g) FROM unnest($2::int[]) AS g", LOCK_NAMESPACE, list(groups))


async def processed(conn: asyncpg.Connection, event_ids: Sequence[str]) -> dict[str, Processed]:
    if not event_ids:
        return {}
    # A join on unnest, not `= ANY($1)`: with a thousand ids the planner prefers a sequential
    # scan with a hashed filter, whose cost grows with the table; this stays index lookups.
    rows = await conn.fetch(
        "SELECT p.event_id, p.kind, p.customer_id, p.period, p.spend_micros, p.wallet_micros, p.invoice_micros,"
        " p.hold_id, p.actual_tokens, p.correlation_id"
        " FROM unnest($1::text[]) AS u(id) JOIN processed_events p ON p.event_id = u.id",
        list(event_ids),
    )
    return {r["event_id"]: Processed(*r.values()) for r in rows}


async def read_cumulatives(
    conn: asyncpg.Connection, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[UsageKey, int]]:
    """All usage cumulatives of each (customer, period).

    No row locks: every writer of rating_cumulatives (the pipeline, the period close) holds the
    customer's lock-group advisory lock from before this read until after its commit. A FOR
    UPDATE here wrote a lock (a tuple change and a WAL record) on every row read, ~1 per event."""
    pairs = sorted(set(pairs))
    out: dict[tuple[str, str], dict[UsageKey, int]] = {p: {} for p in pairs}
    if not pairs:
        return out
    rows = await conn.fetch(
        """SELECT r.customer_id, r.period, r.charge_id, r.dimension_key, r.quantity
           FROM rating_cumulatives r
           JOIN unnest($1::text[], $2::text[]) AS b(customer_id, period)
             ON r.customer_id = b.customer_id AND r.period = b.period""",
        [p[0] for p in pairs], [p[1] for p in pairs],
    )
    for c, p, charge_id, dim_key, q in rows:
        out[(c, p)][(charge_id, dim_key)] = q
    return out


async def insert_processed(conn: asyncpg.Connection, rows: Sequence[Processed]) -> None:
    """Insert idempotency records by binary COPY (a third of the CPU of an INSERT from ten
    unnested arrays, on both sides). An event recorded before makes it raise
    asyncpg.UniqueViolationError, which aborts the transaction: the caller rolls back and takes
    the careful path (look the recorded ones up, rate only the others)."""
    if rows:
        await conn.copy_records_to_table("processed_events", records=rows, columns=PROCESSED_COLUMNS)


async def copy_lines(conn: asyncpg.Connection, lines: Sequence[tuple]) -> None:
    """Ledger lines (tuples in LEDGER_COLUMNS order) by binary COPY: the fastest path in."""
    if lines:
        await conn.copy_records_to_table("ledger_lines", records=lines, columns=LEDGER_COLUMNS)


async def upsert_cumulatives(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str, int]]) -> None:
    """(customer, period, charge id, dimension key, quantity after): computed under the row locks."""
    if not rows:
        return
    cols = list(zip(*rows))
    await conn.execute(
        """INSERT INTO rating_cumulatives (customer_id, period, charge_id, dimension_key, quantity)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
           ON CONFLICT (customer_id, period, charge_id, dimension_key)
           DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = now()""",
        *[list(c) for c in cols],
    )


# ----------------------------------------------------------------------------- reads


async def period_cumulatives(conn: asyncpg.Connection, customer_id: str, period: str) -> dict[UsageKey, int]:
    rows = await conn.fetch(
        "SELECT charge_id, dimension_key, quantity FROM rating_cumulatives WHERE customer_id = $1 AND period = $2",
        customer_id, period,
    )
    return {(r[0], r[1]): r[2] for r in rows}


async def totals(conn: asyncpg.Connection, customer_id: str | None = None) -> dict[str, int]:
    """Sums over processed events (for checks and the benchmark): spend, wallet, invoice, ledger."""
    where, args = ("WHERE customer_id = $1", [customer_id]) if customer_id else ("", [])
    row = await conn.fetchrow(
        f"SELECT coalesce(sum(spend_micros), 0)::int8 AS spend, coalesce(sum(wallet_micros), 0)::int8 AS wallet,"
        f" coalesce(sum(invoice_micros), 0)::int8 AS invoice, count(*) AS events FROM processed_events {where}",
        *args,
    )
    ledger = await conn.fetchval(f"SELECT coalesce(sum(amount_micros), 0)::int8 FROM ledger_lines {where}", *args)
    return {**dict(row), "ledger": ledger}


def line(event_id: str, line_no: int, correlation_id: str | None, customer_id: str, plan_id: str, period: str,
         kind: str, charge_id: str, metric: str | None, dimension_key: str, quantity: int,
         unit_price: Decimal | None, amount_micros: int) -> tuple:
    """One ledger row in LEDGER_COLUMNS order."""
    return (event_id, line_no, correlation_id, customer_id, plan_id, period, kind, charge_id, metric,
            dimension_key, quantity, unit_price, amount_micros)
