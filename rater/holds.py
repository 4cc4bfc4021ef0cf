"""The hold lifecycle in PostgreSQL, and the sweeper that expires holds in Redis.

Redis decides: check.lua places a hold, and exactly one of settle.lua (a usage event naming it)
or release_expired.lua (the sweeper, past its expiry) releases it. PostgreSQL records what Redis
decided, idempotently:
- `holds`: one row per hold, its state (open / settled / expired) and what was released;
  `tollgate redis rebuild` re-creates the open ones in Redis.
- `hold_events`: the auditable lifecycle, one row per (hold, kind): 'placed' with the amount held,
  'settled'/'expired' with the amount released. This is where expired holds are "written to the
  ledger": ledger_lines belongs to the pricing pipeline and only carries charges; a released hold
  is not a charge. For a closed hold the released amounts add up to the amount placed.

Rows can arrive in any order (decision events are consumed independently of usage events and the
sweeper): a close may create the row, a later 'placed' only fills in the missing details.

How the sweeper finds expired holds: customer ids from PostgreSQL `customers`, then per customer
one run of release_expired.lua (ZRANGEBYSCORE on `tg:{c}:hold_exp` up to now, release, all
atomic), pipelined SWEEP_BATCH customers per round trip. Each script touches one customer's keys,
so it runs unchanged on Redis Cluster (no cross-slot index of all holds is needed). Cost: one
cheap script per customer per sweep; ~100k customers is about a second of Redis time.

A released hold is also put in the customer's outbox (`tg:{c}:hold_released`) by the same script,
and taken out only once PostgreSQL has recorded it; the script returns the whole outbox, so a
sweeper that died between the two leaves holds that the next sweep records.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import lua
from rater import metrics
from tollgate.redis_raw import eval_many
from tollgate.keys import CustomerKeys

log = logging.getLogger(__name__)

SWEEP_BATCH = 500  # customers per pipeline
SWEEP_LIMIT = 1000  # holds released per customer per script run (a backlog takes more runs)


@dataclass(frozen=True)
class ExpiredHold:
    customer_id: str
    hold_id: str
    amount_micros: int
    estimated_tokens: int
    key_id: str
    expires_at_ms: int


def parse_hold(value: str) -> tuple[int, int, str]:
    """`amount micros:estimated tokens:key id[:levels]` (check.lua) -> (amount, tokens, key id)."""
    amount, _, rest = value.partition(":")
    tokens, _, rest = rest.partition(":")
    return int(amount), int(tokens or 0), rest.partition(":")[0]


def _ts(v) -> datetime | None:
    """A datetime from a datetime, an ISO 8601 string, or epoch milliseconds (Redis's unit)."""
    if v is None or isinstance(v, datetime):
        return v if v is None or v.tzinfo else v.replace(tzinfo=timezone.utc)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return datetime.fromtimestamp(v / 1000, tz=timezone.utc)
    return _ts(datetime.fromisoformat(str(v).replace("Z", "+00:00")))


def _tokens(h: dict) -> int:
    if h.get("estimated_tokens") is not None:
        return int(h["estimated_tokens"])
    est = h.get("estimate") or {}  # the decision event's estimate, as check.lua was given it
    return int(est.get("input_tokens", 0)) + int(est.get("output_tokens", 0))


# ------------------------------------------------------------------------------------ placed

# expires_at missing: placed_at + the plan's hold TTL (300 s by default, as tollgate.plans).
_PLACE = """
INSERT INTO holds AS h (hold_id, customer_id, request_id, key_id, amount_micros, estimated_tokens,
                        placed_at, expires_at)
SELECT $1::text, $2::text, $3::text, $4::text, $5::bigint, $6::bigint, $7::timestamptz,
       coalesce($8::timestamptz, $7::timestamptz + make_interval(secs => coalesce(
           (SELECT (p.document->'limits'->>'hold_ttl_seconds')::int
              FROM customers c JOIN plans p ON p.id = c.plan_id WHERE c.id = $2), 300)))
ON CONFLICT (hold_id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id, request_id = EXCLUDED.request_id, key_id = EXCLUDED.key_id,
    amount_micros = EXCLUDED.amount_micros, estimated_tokens = EXCLUDED.estimated_tokens,
    placed_at = EXCLUDED.placed_at, expires_at = EXCLUDED.expires_at
WHERE h.amount_micros IS NULL          -- only fills in a row a close created first
"""
_PLACE_EVENT = """
INSERT INTO hold_events (hold_id, customer_id, kind, amount_micros, at)
VALUES ($1, $2, 'placed', $3, coalesce($4, now()))
ON CONFLICT (hold_id, kind) DO NOTHING
"""


async def record_placed_holds(conn, holds: Sequence[dict]) -> None:
    """Record holds from decision events. Each dict: hold_id, customer_id, request_id,
    amount_micros, placed_at; optional expires_at, key_id, estimated_tokens (or the decision's
    `estimate` dict). Times: datetime, ISO 8601 string or epoch ms (placed_at defaults to now).
    Dicts without a hold_id (a DENY) are skipped. Idempotent; never reopens a closed hold."""
    rows = []
    for h in holds:
        if not h.get("hold_id"):
            continue
        rows.append((h["hold_id"], h["customer_id"], h.get("request_id"), h.get("key_id"),
                     int(h["amount_micros"]), _tokens(h), _ts(h.get("placed_at")) or datetime.now(timezone.utc),
                     _ts(h.get("expires_at"))))
    if not rows:
        return
    async with conn.transaction():
        await conn.executemany(_PLACE, rows)
        await conn.executemany(_PLACE_EVENT, [(r[0], r[1], r[4], r[6]) for r in rows])


# ----------------------------------------------------------------------------------- settled

# A hold Redis released (amount > 0) is closed even if its 'placed' row has not arrived yet.
_SETTLE_RELEASED = """
INSERT INTO holds AS h (hold_id, customer_id, status, released_micros, event_id, closed_at)
VALUES ($1, $4, 'settled', $3, $2, now())
ON CONFLICT (hold_id) DO UPDATE SET status = 'settled', released_micros = EXCLUDED.released_micros,
    event_id = EXCLUDED.event_id, closed_at = EXCLUDED.closed_at,
    customer_id = coalesce(h.customer_id, EXCLUDED.customer_id)
WHERE h.status = 'open'
"""
# Nothing released: the hold was already gone from Redis (expired, or named twice). Only a hold
# we know of is touched, so an unknown hold id sent by a client creates no rows.
_SETTLE_NOTHING = """
UPDATE holds SET status = 'settled', released_micros = 0, event_id = $2, closed_at = now()
WHERE hold_id = $1 AND status = 'open'
"""
_SETTLE_EVENT = """
INSERT INTO hold_events (hold_id, customer_id, kind, amount_micros, event_id)
SELECT $1::text, coalesce($4::text, (SELECT customer_id FROM holds WHERE hold_id = $1::text)), 'settled',
       $3::bigint, $2::text
WHERE $3::bigint > 0 OR EXISTS (SELECT 1 FROM holds WHERE hold_id = $1::text)
ON CONFLICT (hold_id, kind) DO NOTHING
"""


async def mark_settled(conn, hold_ids_with_event: Sequence[tuple]) -> None:
    """(hold_id, event_id, released_micros[, customer_id]) per settled event that named a hold,
    released_micros as settle returned it. Idempotent by hold."""
    rows = [(t[0], t[1], int(t[2]), t[3] if len(t) > 3 else None) for t in hold_ids_with_event if t[0]]
    if not rows:
        return
    async with conn.transaction():
        released = [r for r in rows if r[2] > 0]
        if released:
            await conn.executemany(_SETTLE_RELEASED, released)
        nothing = [r[:2] for r in rows if r[2] <= 0]
        if nothing:
            await conn.executemany(_SETTLE_NOTHING, nothing)
        await conn.executemany(_SETTLE_EVENT, rows)


def settled_holds(items, results) -> list[tuple[str, str, int, str]]:
    """The mark_settled rows of a settle() call: every item that named a hold, unless its result
    is a replay whose settlement PostgreSQL has recorded already (settle.lua no longer has what
    it released: to_record is False)."""
    return [(i.hold_id, i.event_id, r.hold_released_micros, i.customer_id)
            for i, r in zip(items, results, strict=True) if i.hold_id and r.to_record]


# ----------------------------------------------------------------------------------- expired

# An expired hold also wins over a 'settled' row that released nothing: that settle came after
# Redis had already expired the hold (and before this sweeper's write reached PostgreSQL).
_EXPIRE = """
INSERT INTO holds AS h (hold_id, customer_id, key_id, amount_micros, estimated_tokens, expires_at,
                        status, released_micros, closed_at)
VALUES ($1, $2, $3, $4, $5, $6, 'expired', $4, now())
ON CONFLICT (hold_id) DO UPDATE SET status = 'expired', released_micros = EXCLUDED.released_micros,
    closed_at = EXCLUDED.closed_at
WHERE h.status = 'open' OR (h.status = 'settled' AND h.released_micros = 0)
"""
_EXPIRE_EVENT = """
INSERT INTO hold_events (hold_id, customer_id, kind, amount_micros)
VALUES ($1, $2, 'expired', $3)
ON CONFLICT (hold_id, kind) DO NOTHING
"""


async def record_expired(conn, expired: Sequence[ExpiredHold]) -> None:
    if not expired:
        return
    async with conn.transaction():
        await conn.executemany(_EXPIRE, [(e.hold_id, e.customer_id, e.key_id or None, e.amount_micros,
                                          e.estimated_tokens, _ts(e.expires_at_ms)) for e in expired])
        await conn.executemany(_EXPIRE_EVENT, [(e.hold_id, e.customer_id, e.amount_micros) for e in expired])


async def sweep_expired(redis, pg_pool, now_ms: int | None = None) -> list[ExpiredHold]:
    """Release every hold past its expiry (now_ms, default Redis TIME) and record each as expired;
    returns the holds recorded, including any an earlier sweep released but did not record.

    Each batch of customers is written to PostgreSQL right after Redis released it, then their
    outbox entries are deleted. A crash in between leaves them in the outbox, and the next sweep
    records them (idempotently: hold_events has one row per hold and kind).
    """
    script = lua.load("release_expired")
    now_arg = "" if now_ms is None else int(now_ms)
    out: list[ExpiredHold] = []
    async with _connection(pg_pool) as conn:
        customers = [r["id"] for r in await conn.fetch("SELECT id FROM customers ORDER BY id")]
        for start in range(0, len(customers), SWEEP_BATCH):
            pending = customers[start:start + SWEEP_BATCH]
            while pending:  # a customer that hit SWEEP_LIMIT goes round again
                calls = [_sweep_call(c, now_arg) for c in pending]
                replies = await eval_many(redis, script, calls)
                batch, again = [], []
                for customer_id, reply in zip(pending, replies):
                    released_now, found = _expired(customer_id, reply)
                    batch += found
                    if released_now >= SWEEP_LIMIT:
                        again.append(customer_id)
                await record_expired(conn, batch)
                await _clear_outbox(redis, batch)
                out += batch
                pending = again
    return out


def _sweep_call(customer_id: str, now_arg) -> tuple[list[str], list]:
    k = CustomerKeys(customer_id)
    return [k.held, k.holds, k.hold_expiry, k.hold_released, k.inflight], [now_arg, SWEEP_LIMIT]


def _expired(customer_id: str, reply: list) -> tuple[int, list[ExpiredHold]]:
    """(holds released by this run, every hold in the customer's outbox)."""
    vals = [v.decode() if isinstance(v, bytes) else str(v) for v in reply[1:]]
    out = []
    for i in range(0, len(vals), 2):
        expiry, _, hold = vals[i + 1].partition(":")
        amount, tokens, key_id = parse_hold(hold)
        out.append(ExpiredHold(customer_id, vals[i], amount, tokens, key_id, int(float(expiry))))
    return int(reply[0]), out


async def _clear_outbox(redis, recorded: Sequence[ExpiredHold]) -> None:
    """Take holds PostgreSQL has recorded out of their customers' outboxes."""
    by_customer: dict[str, list[str]] = {}
    for e in recorded:
        by_customer.setdefault(e.customer_id, []).append(e.hold_id)
    if by_customer:
        async with redis.pipeline(transaction=False) as p:
            for customer_id, hold_ids in by_customer.items():
                p.hdel(CustomerKeys(customer_id).hold_released, *hold_ids)
            await p.execute()


class _connection:
    """A pool's connection, or the connection itself when given one."""

    def __init__(self, pg):
        self.pg, self.ctx = pg, None

    async def __aenter__(self):
        if hasattr(self.pg, "acquire"):
            self.ctx = self.pg.acquire()
            return await self.ctx.__aenter__()
        return self.pg

    async def __aexit__(self, *exc):
        if self.ctx is not None:
            await self.ctx.__aexit__(*exc)


async def run_sweeper(redis, pg_pool, interval_s: float = 5.0, stop: asyncio.Event | None = None) -> None:
    """The rater's background loop: sweep every interval_s until `stop` is set."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            expired = await sweep_expired(redis, pg_pool)
            metrics.HOLD_SWEEPS.labels("ok").inc()
            if expired:
                metrics.HOLDS_EXPIRED.inc(len(expired))
                log.info("released %d expired holds", len(expired))
        except Exception:  # a Redis/PostgreSQL outage: try again next round, do not die
            metrics.HOLD_SWEEPS.labels("error").inc()
            log.exception("hold sweep failed")
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass
