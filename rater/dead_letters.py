"""Dead letters: events the rater could not rate, kept with the raw event and the reason.

Reasons: unknown_customer (no such customer, or an API key hash that resolves to none),
unknown_metric (a measurement no charge of the plan bills or meters), invalid_value (a
measurement or timestamp that is not a valid quantity), invalid_event (not JSON, no id, unknown
kind), rating_error (the plan cannot price the event, e.g. usage left by an older plan version).

A dead-lettered event is acknowledged on the bus (it would only fail again), and is not in
processed_events, so `tollgate dead-letters replay` can rate it once the cause is fixed (customer
created, plan extended). Replay runs the same pipeline in the CLI process; an event that rates
is marked 'replayed', one that fails again stays open with its new reason.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from rater import metrics
from tollgate.dead_letters import REASONS, list_open



@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: str | None
    customer_id: str | None
    reason: str
    detail: str
    raw: bytes


async def record(conn: asyncpg.Connection, letters: Sequence[DeadLetter]) -> None:
    """Insert; an event already open in the table (a redelivery) gets its reason refreshed."""
    if not letters:
        return
    await conn.executemany(
        """INSERT INTO dead_letters (event_id, customer_id, reason, detail, raw, attempts)
           VALUES ($1, $2, $3, $4, $5, 1)
           ON CONFLICT (event_id) WHERE status = 'open' AND event_id IS NOT NULL
           DO UPDATE SET reason = EXCLUDED.reason, detail = EXCLUDED.detail,
                         attempts = dead_letters.attempts + 1""",
        [(d.event_id, d.customer_id, d.reason, d.detail[:2000], d.raw) for d in letters],
    )
    metrics.dead_lettered(d.reason for d in letters)


async def open_batch(conn, ids: Sequence[int] | None, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    """(dead letter id, raw event) of open letters: the given ids, or the next `limit` after after_id."""
    if ids:
        rows = await conn.fetch(
            "SELECT id, raw FROM dead_letters WHERE status = 'open' AND id = ANY($1::int8[]) ORDER BY id", list(ids)
        )
    else:
        rows = await conn.fetch(
            "SELECT id, raw FROM dead_letters WHERE status = 'open' AND id > $1 ORDER BY id LIMIT $2", after_id, limit
        )
    return [(r["id"], bytes(r["raw"])) for r in rows]


async def mark_replayed(conn, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(
            "UPDATE dead_letters SET status = 'replayed', replayed_at = now() WHERE id = ANY($1::int8[]) AND status = 'open'",
            list(ids),
        )


async def discard(conn, ids: Sequence[int]) -> int:
    res = await conn.execute(
        "UPDATE dead_letters SET status = 'discarded' WHERE id = ANY($1::int8[]) AND status = 'open'", list(ids)
    )
    return int(res.split()[-1])


async def replay(pool: asyncpg.Pool, redis, *, ids: Sequence[int] | None = None, batch: int = 500,
                 now: float | None = None) -> dict:
    """Re-rate open dead letters through the pipeline; returns counts of replayed / still failing."""
    from rater.pipeline import Pipeline  # noqa: PLC0415  (the pipeline imports this module)

    pipeline = Pipeline(pool, redis, cache_ttl_s=0)  # no cache: see the fix that was just made
    replayed = failed = 0
    after = 0
    async with pool.acquire() as conn:
        while True:
            letters = await open_batch(conn, ids, after, batch)
            if not letters:
                break
            result = await pipeline.process_raw([raw for _, raw in letters], now=now, record_dead=False)
            ok = [lid for (lid, _), dead in zip(letters, result.dead_by_index) if dead is None]
            still = [(lid, dead.reason, dead.detail[:2000])
                     for (lid, _), dead in zip(letters, result.dead_by_index) if dead is not None]
            await mark_replayed(conn, ok)
            if still:
                await conn.executemany(
                    "UPDATE dead_letters SET reason = $2, detail = $3, attempts = attempts + 1 WHERE id = $1", still
                )
            replayed += len(ok)
            failed += len(still)
            if ids:
                break
            after = letters[-1][0]
    return {"replayed": replayed, "still_failing": failed}


# ----------------------------------------------------------------------------- CLI


def register(sub) -> None:
    from tollgate.cli import command, group  # noqa: PLC0415

    g = group(sub, "dead-letters", "events the rater could not rate")
    p = command(g, "list", _list, "list open dead letters")
    p.add_argument("--reason", choices=REASONS)
    p.add_argument("--customer")
    p.add_argument("--status", default="open", choices=("open", "replayed", "discarded"))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--after", type=int, default=0, help="page: the last id seen")
    p = command(g, "replay", _replay, "rate open dead letters again (after fixing the cause)")
    p.add_argument("ids", nargs="*", type=int, help="dead letter ids (default: all open)")
    p = command(g, "discard", _discard, "give up on dead letters")
    p.add_argument("ids", nargs="+", type=int)


async def _list(ctx) -> int:
    async with ctx.backends() as (pool, _), pool.acquire() as conn:
        rows = await list_open(conn, reason=ctx.args.reason, customer_id=ctx.args.customer,
                               after_id=ctx.args.after, limit=ctx.args.limit, status=ctx.args.status)
    from tollgate.cli import table  # noqa: PLC0415

    ctx.emit(rows, table(rows, ["id", "event_id", "customer_id", "reason", "detail", "attempts", "created_at"]))
    return 0


async def _replay(ctx) -> int:
    async with ctx.backends() as (pool, redis):
        counts = await replay(pool, redis, ids=ctx.args.ids or None)
    ctx.emit(counts, f"replayed {counts['replayed']}, still failing {counts['still_failing']}")
    return 0 if counts["still_failing"] == 0 else 3


async def _discard(ctx) -> int:
    async with ctx.backends() as (pool, _), pool.acquire() as conn:
        n = await discard(conn, ctx.args.ids)
    ctx.emit({"discarded": n}, f"discarded {n}")
    return 0
