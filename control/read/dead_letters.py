"""Dead letters over the admin API: list them, and replay them by sending them back to the rater.

Replay here republishes each open letter's raw event, exactly as it came off the bus, to the event
bus (the configured one: the `tg:events` Redis stream or the Kafka topic), then marks the letter
'replayed'. The rater rates it like any event (idempotent by event id: a replay of an event that
was rated meanwhile changes nothing); one that fails again becomes a new open dead letter with
its new reason. Rating stays the rater's: the control plane never prices. (`tollgate dead-letters
replay`, the rater's CLI, instead rates in its own process and reports the outcome at once.)
A crash between the publish and the mark leaves the letter open: replaying it again is harmless.
"""
from __future__ import annotations

import asyncpg
import orjson

from control.errors import InvalidInput
from tollgate.bus import make_bus
from tollgate.config import Settings
from tollgate.dead_letters import REASONS, STATUSES, list_open

MAX_REPLAY = 500


async def list_letters(db: asyncpg.Pool, *, status: str = "open", reason: str | None = None,
                       customer_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict]:
    if status not in STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(STATUSES)}")
    if reason is not None and reason not in REASONS:
        raise InvalidInput("reason", f"must be one of {', '.join(REASONS)}")
    async with db.acquire() as conn:
        return await list_open(conn, reason=reason, customer_id=customer_id, after_id=after, limit=limit,
                               status=status)


async def replay(db: asyncpg.Pool, settings: Settings, ids: object) -> dict:
    """Republish open dead letters (by id) to the bus; returns the ids sent and those not open."""
    if not isinstance(ids, list) or not ids or len(ids) > MAX_REPLAY or \
            not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids):
        raise InvalidInput("ids", f"a list of 1-{MAX_REPLAY} dead letter ids")
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT id, raw FROM dead_letters WHERE status = 'open' AND id = ANY($1::int8[]) ORDER BY id",
                                sorted(set(ids)))
    events, sent, unreadable = [], [], []
    for r in rows:
        try:
            ev = orjson.loads(bytes(r["raw"]))
        except orjson.JSONDecodeError:
            ev = None
        if not isinstance(ev, dict) or not isinstance(ev.get("id"), str):
            unreadable.append(r["id"])  # not an event: nothing a replay could rate (discard it)
            continue
        events.append(ev)
        sent.append(r["id"])
    if events:
        bus = make_bus(settings)
        try:
            await bus.start()
            await bus.publish(events)
        finally:
            await bus.close()
        async with db.acquire() as conn:
            await conn.execute("UPDATE dead_letters SET status = 'replayed', replayed_at = now()"
                               " WHERE id = ANY($1::int8[]) AND status = 'open'", sent)
    found = {r["id"] for r in rows}
    return {"replayed": sent, "unreadable": unreadable, "not_open": sorted(set(ids) - found)}


