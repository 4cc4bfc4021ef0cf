"""The rating pipeline: a batch of bus messages in, its effect applied exactly once.

    decode -> resolve customer -> decompose -> stages (tollgate.rating.stages) -> PostgreSQL transaction
    -> settle on Redis (rater.settlement) -> record promotions and settled holds -> (caller acks)

Exactly once, with at-least-once delivery in:
- PostgreSQL: processed_events (event_id primary key) is the idempotency record. Only events
  without one are priced; their record, ledger lines and cumulatives commit together. Each usage
  record gets its customer's next settle sequence number in the same transaction.
- Redis: every usage event of the batch is settled, new or already processed, from the figures
  stored in processed_events; settle.lua ignores a sequence number at or below the customer's
  settled mark. A gap below a number (another rater committed and died before its settle) is
  settled first from its stored rows. This covers a crash between the PostgreSQL commit and the
  Redis settle, whoever rates the customer next.
- What settlement decided (holds released, promotions) is recorded in PostgreSQL, then taken out
  of the customer's settle outbox in Redis; a crash in between leaves it for the redelivery.
- The caller acknowledges the bus only after all of it; a crash before that redelivers the batch.

Concurrency: customers fall into locks.LOCK_GROUPS lock groups; a batch is split by group, and
each lane takes the session advisory locks of the free groups (up to its share of the batch's
groups) and rates their sub-batches in one transaction, the locks held from before the
idempotency check until after the Redis settle; a lane waits for a lock only while it holds
none. Two consumers rating the same customer (Redis Streams hands any entry to any consumer; a
Kafka rebalance can too) therefore serialise, and the wallet balance read for hybrid routing
already includes every earlier sub-batch's debits, while sub-batches of different groups run in
parallel (other consumers, and `lanes` connections of this one). If a rater died between its
commit and its settle, the next rater of a hybrid customer sees it before routing (the customer's
settled mark in Redis is below its last number in PostgreSQL) and settles those events first, so
the wallet it routes against includes their debits too.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg
import orjson

from rater import charges, dead_letters, grants, holds, ledger, metrics, plan_changes, rollovers, rollups, sessions
from rater.alerts import RaterAlerts
from rater.dead_letters import DeadLetter
from rater.decisions import record_counts
from rater.ledger import Processed
from rater.margin_guard import RaterGuard
from rater.key_paths import KeyPaths
from rater.settlement import (
    NotProjected,
    SettleItem,
    SettleResult,
    clear_outbox,
    fill_from,
    item_of,
    settle_filling,
)
from rater.tiers import record_promotions
from rater.tracing import traced_batch
from tollgate import locks, redis_raw, tracing
from tollgate.keys import CustomerKeys
from tollgate.periods import period_of
from tollgate.plans import Plan
from tollgate.rating.pricing import Cumulatives, InvalidMeasurementError, RatingError, UnknownMetricError
from tollgate.rating.sessions import BOUNDARY_TYPES
from tollgate.rating.stages.pipeline import run_event

log = logging.getLogger(__name__)

KINDS = ("usage", "decision", "fail_open")
SETTLED_KINDS = ("usage", "session_part")  # processed_events kinds a batch settles on Redis
# Measurements that count against the tokens/min limit (the enforcer's estimate uses the same).
TOKEN_METRICS = ("input_tokens", "output_tokens")
MAX_CACHED_CUMULATIVES = 50_000  # (customer, period) states kept between batches (a few hundred bytes each)


class ConcurrentRating(RuntimeError):
    """Another writer recorded one of our events meanwhile: roll back, retry the batch."""


class _AlreadyProcessed(Exception):
    """Raised inside the transaction to roll it back."""


@dataclass(slots=True)
class Customer:
    id: str
    plan: Plan
    billing_mode: str
    tier: str
    spend_cap_micros: int | None  # effective cap of the current tier (None: no cap)
    next: tuple[str, Customer] | None = None  # a pending plan change: (first period, the customer under it)


@dataclass(slots=True)
class Event:
    index: int  # position in the batch: the deterministic order within a customer
    raw: bytes
    body: dict
    id: str
    kind: str
    period: str = ""
    current: str = ""  # the customer's current period (its plan's billing anchor day), set by assign_periods
    measurements: dict[str, int] = field(default_factory=dict)
    customer: Customer | None = None
    # Agent sessions (rater.sessions), only for a plan that opts in: the event's session_id; set
    # by process_raw, cleared by the aggregate stage for an event it leaves to be rated alone.
    session: str | None = None
    part: bool = False  # recorded as a part of a session (kind session_part): not priced itself
    aggregate: bool = False  # a billable session: its parts were checked one by one (stage quantities)
    close: str | None = None  # a request to close `session` ('idle', 'period_close'), not an event


@dataclass
class BatchResult:
    size: int
    rated: int = 0  # usage events priced now
    replayed: int = 0  # processed by an earlier delivery: only settled again (a no-op on Redis)
    duplicates: int = 0  # the same id twice in this batch
    fail_open: int = 0
    decisions: int = 0
    spend_micros: int = 0  # charged by the events rated now
    dead_by_index: list[DeadLetter | None] = field(default_factory=list)  # by position in the batch
    charged: list[charges.Chunk] = field(default_factory=list)  # ledger lines to publish (rater.charges), if publishing
    first_received: str | None = None  # the earliest received_at of the batch's events (rater.metrics)

    def __post_init__(self) -> None:
        if not self.dead_by_index:
            self.dead_by_index = [None] * self.size

    @property
    def dead(self) -> list[DeadLetter]:
        """The dead letters, in batch order."""
        return [d for d in self.dead_by_index if d is not None]

    def add_dead(self, index: int, letter: DeadLetter) -> None:
        self.dead_by_index[index] = letter


# --------------------------------------------------------------------------- decode & decompose


def _dead(raw: bytes, reason: str, detail: str, body: dict | None = None) -> DeadLetter:
    body = body or {}
    eid = body.get("id") if isinstance(body.get("id"), str) else None
    cid = body.get("customer_id") if isinstance(body.get("customer_id"), str) else None
    return DeadLetter(eid, cid, reason, detail, raw)


def parse_period(ts: object, anchor_day: int = 1) -> str:
    """Period of an event time: ISO 8601 text (fast path for UTC calendar months) or epoch
    seconds/milliseconds; `anchor_day` is the plan's billing anchor (tollgate.periods)."""
    if isinstance(ts, str):
        if anchor_day == 1 and len(ts) >= 20 and ts[4] == "-" and ts[7] == "-" and (ts.endswith("Z") or ts.endswith("+00:00")):
            y, m = ts[0:4], ts[5:7]
            if y.isdigit() and m.isdigit() and "01" <= m <= "12":
                return y + m
        return period_of(datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc), anchor_day)
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return period_of(ts / 1000 if ts > 1e11 else ts, anchor_day)
    raise ValueError(f"timestamp {ts!r} is not an ISO 8601 time or epoch number")


def assign_periods(events: Sequence[Event], now: float, now_period: str) -> None:
    """Once customers are known: each event's `current` period, and a usage event's own period,
    by its customer's plan anchor day. decode() already gave calendar-month periods (anchor 1);
    an anchored plan's are recomputed the same way: the event's timestamp, never later than the
    customer's current period."""
    current = {1: now_period}
    for e in events:
        if e.customer is None:
            continue
        anchor = e.customer.plan.billing_anchor_day
        cur = current.get(anchor)
        if cur is None:
            cur = current[anchor] = period_of(now, anchor)
        e.current = cur
        if anchor != 1 and e.kind == "usage":
            ts = e.body.get("timestamp") or e.body.get("received_at") or now
            e.period = min(parse_period(ts, anchor), cur)


def decompose(measurements: object) -> dict[str, int]:
    """A compound event's measurements -> one quantity per metric (repeats add up).

    Raises ValueError for anything that is not a list of {metric, value} with whole values >= 0.
    """
    if not isinstance(measurements, list) or not measurements:
        raise ValueError("measurements: a non-empty list of {metric, value} is required")
    out: dict[str, int] = {}
    for i, m in enumerate(measurements):
        if not isinstance(m, dict) or not isinstance(m.get("metric"), str) or not m["metric"]:
            raise ValueError(f"measurements[{i}]: needs a metric name")
        v = m.get("value")
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"measurements[{i}] ({m['metric']}): value {v!r} is not a whole number >= 0")
        out[m["metric"]] = out.get(m["metric"], 0) + v
    return out


def decode(index: int, raw: bytes, now_period: str) -> Event | DeadLetter:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return _dead(raw, "invalid_event", f"not JSON: {e}")
    if not isinstance(body, dict):
        return _dead(raw, "invalid_event", "not a JSON object")
    eid, kind = body.get("id"), body.get("kind", "usage")
    if not isinstance(eid, str) or not eid:
        return _dead(raw, "invalid_event", "no event id", body)
    if kind not in KINDS:
        return _dead(raw, "invalid_event", f"unknown kind {kind!r}", body)
    if not body.get("customer_id") and not body.get("api_key_hash"):
        return _dead(raw, "unknown_customer", "neither customer_id nor api_key_hash", body)
    ev = Event(index, raw, body, eid, kind)
    if kind == "usage":
        try:
            ms = body.get("measurements")
            # A session's start and end may measure nothing (rater.sessions); only they.
            ev.measurements = {} if not ms and body.get("event_type") in BOUNDARY_TYPES else decompose(ms)
            # A clock in the future must not open a period that does not exist yet.
            ev.period = min(parse_period(body.get("timestamp") or body.get("received_at") or time.time()), now_period)
        except (ValueError, OverflowError, OSError) as e:  # overflow: a time outside years 1-9999 in UTC
            return _dead(raw, "invalid_value", str(e), body)
    return ev


def actual_tokens(measurements: dict[str, int]) -> int:
    total = 0
    for m in TOKEN_METRICS:
        total += measurements.get(m, 0)
    return total


# --------------------------------------------------------------------------- customers


# What a cached customer's rating depends on, cheaply: its own version (plan change, prices, cap,
# mode: control.accounts.lifecycle bumps it), its plans' versions (a plan applied again) and
# those of the cost catalogs the plans name (a catalog applied again: new costs).
_CATALOGS = """LEFT JOIN cost_catalogs k ON k.id = p.document ->> 'cost_catalog'
               LEFT JOIN cost_catalogs kn ON kn.id = n.document ->> 'cost_catalog'"""
_STAMPS = f"""SELECT c.id, c.version, p.version, n.version, k.version, kn.version
             FROM customers c JOIN plans p ON p.id = c.plan_id LEFT JOIN plans n ON n.id = c.pending_plan_id
             {_CATALOGS}
             WHERE c.id = ANY($1::text[])"""


class Directory:
    """Customer (with plan) and API key hash -> customer, cached for ttl_s (0: no cache).

    Unknown customers are not cached: one created a moment ago is found on the next batch. A
    cached customer is checked against PostgreSQL on every batch by its version stamp (the
    customer's version and its plans' versions: one small query per batch), so a plan change
    "now", a new plan version, negotiated prices or a cap override apply from the next batch
    read after they commit, not up to ttl_s later; the documents are fetched again only then.
    """

    def __init__(self, ttl_s: float = 5.0):
        self.ttl_s = ttl_s
        self._customers: dict[str, tuple[float, Customer]] = {}
        self._stamps: dict[str, tuple] = {}  # customer id -> its version stamp when loaded (_STAMP)
        self._keys: dict[str, tuple[float, str]] = {}
        self._plans = plan_changes.Plans()  # by (plan id, version, negotiated prices)

    @tracing.traced("rater.resolve_customers")
    async def resolve(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        now = time.monotonic()
        hashes = {e.body["api_key_hash"] for e in events if not e.body.get("customer_id")}
        missing = [h for h in hashes if self._keys.get(h, (0,))[0] <= now]
        if missing:
            rows = await conn.fetch("SELECT key_hash, customer_id FROM api_keys WHERE key_hash = ANY($1::text[])", missing)
            for h, cid in rows:
                self._keys[h] = (now + self.ttl_s, cid)
        ids = {}
        for e in events:
            cid = e.body.get("customer_id") or self._keys.get(e.body.get("api_key_hash"), (0, None))[1]
            ids[e.index] = cid if isinstance(cid, str) else None
        wanted = {c for c in ids.values() if c}
        need = [c for c in wanted if self._customers.get(c, (0,))[0] <= now]
        cached = [c for c in wanted if c not in need]
        if cached:
            stamps = {r[0]: tuple(r[1:]) for r in await conn.fetch(_STAMPS, cached)}
            need += [c for c in cached if stamps.get(c) != self._stamps.get(c)]
        if need:
            await self._load(conn, need, now)
        for e in events:
            hit = self._customers.get(ids[e.index]) if ids[e.index] else None
            e.customer = hit[1] if hit else None

    def cached(self, customer_id: str) -> Customer | None:
        """The customer as last loaded, however old (alerts of a batch just rated)."""
        hit = self._customers.get(customer_id)
        return hit[1] if hit else None

    async def customer(self, conn: asyncpg.Connection, customer_id: str) -> Customer | None:
        now = time.monotonic()
        if self._customers.get(customer_id, (0,))[0] <= now:
            await self._load(conn, [customer_id], now)
        hit = self._customers.get(customer_id)
        return hit[1] if hit else None

    async def _load(self, conn: asyncpg.Connection, ids: list[str], now: float) -> None:
        rows = await conn.fetch(
            f"""SELECT c.id, c.billing_mode, c.tier, c.spend_cap_micros, c.prices, c.pending_from_period, c.version AS cv,
                      p.id AS plan_id, p.version, p.document, n.id AS next_id, n.version AS next_version,
                      n.document AS next_document, k.version AS kv, k.document AS catalog,
                      kn.version AS next_kv, kn.document AS next_catalog
               FROM customers c JOIN plans p ON p.id = c.plan_id LEFT JOIN plans n ON n.id = c.pending_plan_id
               {_CATALOGS}
               WHERE c.id = ANY($1::text[])""",
            ids,
        )
        for r in rows:
            c = self._customer(r, self._plans.get(r["plan_id"], r["version"], r["document"], r["prices"],
                                                  (r["kv"], r["catalog"])))
            if r["next_id"] is not None:
                c.next = (r["pending_from_period"],
                          self._customer(r, self._plans.get(r["next_id"], r["next_version"], r["next_document"],
                                                            r["prices"], (r["next_kv"], r["next_catalog"]))))
            self._customers[r["id"]] = (now + self.ttl_s, c)
            self._stamps[r["id"]] = (r["cv"], r["version"], r["next_version"], r["kv"], r["next_kv"])

    @staticmethod
    def _customer(r, plan: Plan) -> Customer:
        tier = plan.tier(r["tier"])
        cap = plan.limits_for_tier(tier)[2] if r["spend_cap_micros"] is None else int(r["spend_cap_micros"] * tier.multiplier)
        return Customer(r["id"], plan, r["billing_mode"], tier.name, None if cap < 0 else cap)


# --------------------------------------------------------------------------- the pipeline


def part_dead(res: BatchResult):
    """The aggregate stage's dead-lettering of a session part rating would refuse."""
    def dead(e: Event, err: Exception) -> None:
        res.add_dead(e.index, _dead(e.raw, _reason(err), str(err), e.body))
    return dead


def _reason(e: Exception) -> str:
    if isinstance(e, UnknownMetricError):
        return "unknown_metric"
    if isinstance(e, InvalidMeasurementError):
        return "invalid_value"
    return "rating_error"


class Pipeline:
    def __init__(self, pool: asyncpg.Pool, redis, *, cache_ttl_s: float = 5.0, lanes: int = 3, charges=None):
        """lanes: lock groups of one batch rated at once, each on its own connection (the pool
        needs lanes + 1): one prices while another waits for PostgreSQL or Redis. Three measured
        ~4 % more events/s than two with two raters and batches of 2,000 (bench_rater, 4 pairs)."""
        self.pool = pool
        self.redis = redis
        self.lanes = lanes
        self.charges = charges  # rater.charges publisher of `billing.charges` (None: not published)
        self.directory = Directory(cache_ttl_s)
        self.paths = KeyPaths(cache_ttl_s)  # API key -> team, app, levels counting its spend
        self.alerts = RaterAlerts(cache_ttl_s, redis=redis, paths=self.paths)
        self.guard = RaterGuard(cache_ttl_s)
        # (customer, period) -> the engine's Cumulatives after our last rating of it: reused when
        # PostgreSQL (read under the lock) has exactly these quantities, so the engine does not
        # re-price the customer's period once per transaction (~2 µs per event). Never trusted
        # otherwise: another rater's or a rolled-back write shows as different quantities.
        self._cumulatives: dict[tuple[str, str], Cumulatives] = {}
        self._carried = rollovers.CarriedIn()  # units carried into periods (rollover plans only)

    @traced_batch  # rater.tracing: a batch span linked to each event's trace, when tracing is on
    async def process_raw(self, raws: Sequence[bytes], *, now: float | None = None,
                          record_dead: bool = True) -> BatchResult:
        """Rate one batch. Raises on PostgreSQL/Redis trouble: nothing is then acknowledged and
        retrying the same batch (or its redelivery) is safe."""
        now = time.time() if now is None else now
        now_period = period_of(now)
        res = BatchResult(len(raws))
        events: list[Event] = []
        seen: set[str] = set()
        with tracing.span("rater.decode"):  # and decompose
            for i, raw in enumerate(raws):
                ev = decode(i, raw, now_period)
                if isinstance(ev, DeadLetter):
                    res.add_dead(i, ev)
                elif ev.id in seen:
                    res.duplicates += 1
                else:
                    seen.add(ev.id)
                    events.append(ev)
        res.first_received = metrics.oldest_received(e.body for e in events)

        async with self.pool.acquire() as conn:
            await self.directory.resolve(conn, events)
        assign_periods(events, now, now_period)
        plan_changes.switch_pending(events)  # a plan change at the boundary: exact by the event's period
        groups: dict[int, list[Event]] = defaultdict(list)
        decisions: list[Event] = []
        for ev in events:
            if ev.customer is None:
                res.add_dead(ev.index, _dead(ev.raw, "unknown_customer", "no such customer or API key", ev.body))
            elif ev.kind == "decision":
                decisions.append(ev)
            else:
                if ev.customer.plan.session_idle_timeout_s is not None and ev.kind == "usage":
                    sid = ev.body.get("session_id")
                    if type(sid) is str and sid:
                        ev.session = sid
                groups[locks.lock_group(ev.customer.id)].append(ev)

        todo, claimed = sorted(groups), set()
        lanes = min(self.lanes, len(todo))
        # Groups per transaction: fewer transactions pay their fixed costs less often, but a lane
        # that holds many groups makes other raters' lanes wait. With two rater processes, 2 of 8
        # per lane measured best (12.6k events/s; 1: 7.7-11.3k, 4: 8.3-9.9k, with two lanes and
        # batches of 1,000; not measured again with three lanes and 2,000, which take 2 of 8 too).
        share = -(-len(todo) // (2 * lanes)) if lanes else 0

        async def lane() -> None:
            async with self.pool.acquire() as conn:
                while got := await self._claim(conn, todo, claimed, share):
                    try:
                        await self._locked(conn, res, [e for g in got for e in groups[g]], now)
                    finally:
                        await locks.unlock_groups(conn, got)

        try:
            async with asyncio.TaskGroup() as tg:  # a failing lane cancels the others
                for _ in range(lanes):
                    tg.create_task(lane())
        except BaseExceptionGroup as eg:  # callers retry the batch on any one failure
            raise eg.exceptions[0] from eg

        if self.charges is not None:  # after every commit, before the caller acknowledges: at least once
            with tracing.span("rater.publish_charges"):
                await self.charges.publish(res.charged)
        await self._judge_margins([e for g in groups.values() for e in g], now)
        dead = res.dead if record_dead else []
        placed = [self._hold(e) for e in decisions if e.body.get("hold_id") and e.body.get("decision", "ALLOW") == "ALLOW"]
        res.decisions = len(decisions)
        if dead or placed or decisions:
            with tracing.span("rater.record_decisions"):  # and dead letters, placed holds
                async with self.pool.acquire() as conn, conn.transaction():
                    await dead_letters.record(conn, dead)
                    await holds.record_placed_holds(conn, placed)
                    await record_counts(conn, [(e.customer.id, e.body) for e in decisions])
        return res

    @tracing.traced("rater.close_idle_sessions")  # the sweeper's stages under one span
    async def close_idle(self, now: float | None = None, limit: int = 1000,
                         customer_ids: Sequence[str] | None = None) -> BatchResult:
        """The idle sweeper (rater.sessions): close and rate the open sessions whose idle_at has
        passed, at most `limit` of them (the longest idle first), each customer under its lock
        group; a session that saw an event meanwhile is left open (checked again under the lock).
        `customer_ids`: only theirs. A lock group whose settlement fails (NotProjected: Redis is
        being rebuilt) is logged and left: its closes are committed, and the rebuild or the
        customer's next settlement (a gap) settles them; the other groups go on."""
        now = time.time() if now is None else now
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT customer_id, session_id FROM agent_sessions WHERE status = 'open' AND idle_at <= $1"
                " AND ($3::text[] IS NULL OR customer_id = ANY($3::text[])) ORDER BY idle_at LIMIT $2",
                datetime.fromtimestamp(now, timezone.utc), limit, None if customer_ids is None else list(customer_ids))
            requests = await self._close_requests(conn, rows, "idle", now)
        by_group: dict[int, list[Event]] = defaultdict(list)
        for e in requests:
            by_group[locks.lock_group(e.customer.id)].append(e)
        res = BatchResult(len(requests))
        async with self.pool.acquire() as conn:
            for g, evs in sorted(by_group.items()):
                await locks.lock_group_wait(conn, g)
                try:
                    await self._locked(conn, res, evs, now)
                except NotProjected as e:
                    log.warning("idle sessions of lock group %d closed, not settled yet: %s", g, e)
                finally:
                    await locks.unlock_group(conn, g)
        await self._finish_closes(res)
        await self._judge_margins(requests, now)  # their session trips end with them
        return res

    async def close_sessions_locked(self, conn, customer_id: str, period: str, now: float) -> BatchResult:
        """Close and rate the customer's sessions still open in `period` or before (the period
        close calls this holding the customer's lock group, before invoicing the period)."""
        rows = await conn.fetch("SELECT customer_id, session_id FROM agent_sessions WHERE customer_id = $1"
                                " AND status = 'open' AND period <= $2", customer_id, period)
        requests = await self._close_requests(conn, rows, "period_close", now)
        res = BatchResult(len(requests))
        if requests:
            await self._locked(conn, res, requests, now)
            await self._finish_closes(res)
            await self._judge_margins(requests, now)
        return res

    @tracing.traced("rater.margin_guard")
    async def _judge_margins(self, events: Sequence[Event], now: float) -> None:
        """Margin Guard (rater.margin_guard) over the customers and agent sessions of rated events,
        after their settlement and before the ack: a trip is denied at the next check."""
        customers = {e.customer.id: e.customer for e in events if e.customer is not None}
        if customers:
            await self.guard.after_batch(self.pool, self.redis, list(customers.values()),
                                         {(e.customer.id, e.session) for e in events if e.session and e.customer},
                                         self.paths, now)

    async def _close_requests(self, conn, rows, reason: str, now: float) -> list[Event]:
        out = []
        for cid, sid in rows:
            customer = await self.directory.customer(conn, cid)
            if customer is None:
                continue
            current = period_of(now, customer.plan.billing_anchor_day)
            out.append(Event(len(out), b"", {"customer_id": cid, "session_id": sid}, sessions.billable_id(cid, sid),
                             "usage", current, current, {}, customer, session=sid, close=reason))
        return out

    async def _finish_closes(self, res: BatchResult) -> None:
        """What process_raw does after its lanes, for closes that no bus message carried."""
        if self.charges is not None:
            await self.charges.publish(res.charged)
        if res.dead:
            async with self.pool.acquire() as conn:
                await dead_letters.record(conn, res.dead)

    @staticmethod
    async def _claim(conn, todo: list[int], claimed: set[int], share: int) -> list[int]:
        """Lock up to `share` lock groups nobody holds, else wait for one (then also take up to
        share - 1 that are free); [] when all are taken by our lanes. The groups taken are rated
        in one transaction: its fixed costs (lock, BEGIN, five statements, COMMIT, settle round
        trip, unlock: ~7 µs per event in all with a group each) are paid once for all of them.

        `claimed` is marked before each await, so two lanes never take the same group, and a lane
        waits only while it holds no lock, so two raters never wait for each other."""
        got = await Pipeline._try_lock(conn, todo, claimed, share)
        if got:
            return got
        free = [g for g in todo if g not in claimed]
        if not free:
            return []
        g = free[0]
        claimed.add(g)
        todo.remove(g)
        await locks.lock_group_wait(conn, g)  # another consumer has it: queue behind it
        return [g, *await Pipeline._try_lock(conn, todo, claimed, share - 1)]

    @staticmethod
    async def _try_lock(conn, todo: list[int], claimed: set[int], n: int) -> list[int]:
        """Up to n unclaimed groups of `todo` whose locks were free (taken without waiting)."""
        got: list[int] = []
        tried: set[int] = set()
        while len(got) < n:
            candidates = [g for g in todo if g not in claimed and g not in tried][:n - len(got)]
            if not candidates:
                break
            claimed.update(candidates)
            tried.update(candidates)
            for g, locked in zip(candidates, await locks.try_lock_groups(conn, candidates)):
                if locked:
                    todo.remove(g)
                    got.append(g)
                else:  # another consumer holds it
                    claimed.discard(g)
        return got

    @tracing.traced("rater.lock_groups")
    async def _locked(self, conn, res: BatchResult, rated: list[Event], now: float) -> None:
        """The events of the lock groups this lane holds: price, commit, settle, record.

        Optimistic: every event is taken as new and the processed_events insert proves it, which
        saves a lookup per batch (redeliveries are rare). If any was processed before, that
        attempt is rolled back and the careful path runs: look up the processed ones, settle
        them first (so the wallets read next include them), then price only the others.
        """
        replay_items: list[SettleItem] = []
        replay_results: list[SettleResult] = []
        current = {e.customer.id: e.current for e in rated}  # for promotions: anchored periods
        fill = fill_from(conn, self.paths)

        settled_first: list[tuple[SettleItem, SettleResult]] = []  # gaps of hybrid customers, before routing
        rows = await self._rate_and_commit(conn, res, rated, now, optimistic=True, settled_first=settled_first)
        if rows is None:
            done = await ledger.processed(conn, [e.id for e in rated])
            replay_items = await self.paths.annotate(conn, [item_of(p) for p in done.values() if p.kind in SETTLED_KINDS])
            if replay_items:
                replay_items, replay_results = await settle_filling(self.redis, replay_items, fill, now=now,
                                                                    current_periods=current)
            res.replayed += len(done)
            if self.charges is not None:  # maybe never published: a crash before the ack
                res.charged.append((await charges.ledger_lines(
                    conn, [p.event_id for p in done.values() if p.kind == "usage"]), None))
            rows = await self._rate_and_commit(conn, res, [e for e in rated if e.id not in done], now,
                                               optimistic=False, settled_first=settled_first)
        items = await self.paths.annotate(conn, [item_of(p) for p in rows if p.kind in SETTLED_KINDS])
        results: list[SettleResult] = []
        if items:
            items, results = await settle_filling(self.redis, items, fill, now=now, current_periods=current)
        await self._record_settlement(conn, [it for it, _ in settled_first] + replay_items + items,
                                      [r for _, r in settled_first] + replay_results + results)

    @tracing.traced("rater.transaction")
    async def _rate_and_commit(self, conn, res: BatchResult, new: list[Event], now: float, optimistic: bool,
                               settled_first: list[tuple[SettleItem, SettleResult]]) -> list[Processed] | None:
        """Price `new` in one transaction; None (rolled back) when optimistic and some event
        turned out to be processed already."""
        await self._late_events(conn, new)
        await self.paths.load(conn, (e.body.get("key_id") for e in new if e.kind == "usage"
                                     and isinstance(e.body.get("key_id"), str)))
        wallets, marks = await self._wallets({e.customer.id for e in new if e.customer.billing_mode == "hybrid"})
        new = sorted(new, key=lambda e: (e.customer.id, e.index))
        rows: list[Processed] = []
        lines: list[tuple] = []
        changed: dict[tuple[str, str, str, str], int] = {}
        part = BatchResult(res.size)  # merged into res on commit
        absorbed = None
        try:
            async with conn.transaction():
                if any(e.session is not None for e in new):  # an opted-in plan's session events
                    absorbed = await sessions.absorb(conn, new, now, self._billable, part_dead(part))
                    new = absorbed.events
                    await self._late_events(conn, absorbed.billable)  # a session's period invoiced meanwhile
                    await self.paths.load(conn, (e.body.get("key_id") for e in absorbed.billable
                                                 if isinstance(e.body.get("key_id"), str)))  # their lines' path
                cums = await ledger.read_cumulatives(conn, {(e.customer.id, e.period) for e in new if e.kind == "usage"})
                # Units carried into the period (rollover): read only for plans that have it.
                carried = await self._carried.load(conn, {(e.customer.id, e.period): e.customer.plan for e in new
                                                          if e.kind == "usage" and e.customer.plan.has_rollover})
                seqs = await ledger.last_seqs(conn, {e.customer.id for e in new if e.kind == "usage"})
                behind = [c for c in wallets if seqs.get(c, 0) > marks[c]]
                if behind:  # a dead rater's committed events: their debits count before routing
                    current = {e.customer.id: e.current for e in new}
                    await self._settle_behind(conn, behind, marks, seqs, wallets, current, settled_first)
                for key, quantities in cums.items():
                    known = self._cumulatives.get(key)
                    if known is not None and known == quantities:
                        cums[key] = known
                # A hybrid credit (a volume tier repricing units already paid) is routed by what
                # the period's earlier charges went to (tollgate.rating.stages.route). Those sums
                # are read only when a pass meets such a credit: then the pass is priced again
                # with them (rare: once per tier a customer's volume crosses).
                routed: dict[tuple[str, str], list[int]] = {}
                start = dict(cums), dict(wallets), dict(seqs)
                with tracing.span("rater.price"):
                    while True:
                        needed: set[tuple[str, str]] = set()
                        for e in new:
                            if e.kind == "fail_open":
                                rows.append(Processed(e.id, "fail_open", e.customer.id, e.current, 0, 0, 0, None, 0, None))
                                part.fail_open += 1
                            elif e.part:
                                self._session_part(e, seqs, rows)
                            else:
                                self._rate(e, cums, carried, wallets, seqs, rows, lines, changed, part, routed, needed)
                        if not needed:
                            break
                        routed = await ledger.routed_so_far(conn, needed)
                        cums, wallets, seqs = dict(start[0]), dict(start[1]), dict(start[2])
                        rows, lines, changed, part = [], [], {}, BatchResult(res.size)
                with tracing.span("rater.ledger_write"):  # and the rollups, sessions and grants beside it
                    try:
                        await ledger.insert_processed(conn, rows)
                    except asyncpg.UniqueViolationError:
                        raise _AlreadyProcessed from None
                    payload = await ledger.copy_lines(conn, lines)
                    if absorbed is not None:
                        await sessions.write(conn, absorbed, {r.event_id: r.spend_micros for r in rows if r.kind == "usage"},
                                             {r.event_id for r in rows}, lines)
                    await ledger.upsert_cumulatives(conn, [(*k, q) for k, q in changed.items()])
                    await rollups.write(conn, new, rows, lines)  # the read API's usage, never the ledger
                    await self.alerts.record_pace(conn, new, rows)
                    await grants.spend_grants(conn, rows)  # what the wallet paid, from the customers' credit grants
        except _AlreadyProcessed:
            if optimistic:
                return None
            raise ConcurrentRating("events were recorded by another writer meanwhile") from None
        if len(self._cumulatives) > MAX_CACHED_CUMULATIVES:
            self._cumulatives.clear()
        self._cumulatives.update((k, c) for k, c in cums.items() if isinstance(c, Cumulatives))
        res.rated += part.rated
        res.fail_open += part.fail_open
        res.spend_micros += part.spend_micros
        if self.charges is not None:
            res.charged.append((lines, payload))
        for i, d in enumerate(part.dead_by_index):
            if d is not None:
                res.add_dead(i, d)
        return rows

    def _rate(self, e: Event, cums, carried, wallets: dict[str, int], seqs: dict[str, int], rows, lines, changed,
              res: BatchResult, routed: dict[tuple[str, str], list[int]], needed: set[tuple[str, str]]) -> None:
        c = e.customer
        key = (c.id, e.period)
        body = e.body
        dims = body.get("properties") or {}
        so_far = routed.get(key)  # [wallet paid, invoice due] of the period, when read
        try:
            ctx = run_event(c.plan, dims, e.measurements, cums[key], billing_mode=c.billing_mode,
                            spend_cap_micros=c.spend_cap_micros, wallet_available_micros=wallets.get(c.id, 0),
                            wallet_paid_micros=so_far[0] if so_far else None,
                            invoice_due_micros=so_far[1] if so_far else None,
                            carried_in=carried.get(key) if carried else None, aggregate=e.aggregate)
        except Exception as err:  # pricing is pure: the same event fails the same way every time
            if not isinstance(err, RatingError):
                log.exception("rating event %s failed", e.id)
            res.add_dead(e.index, _dead(e.raw, _reason(err), str(err), body))
            return
        if so_far is not None:
            so_far[0] += ctx.wallet_micros
            so_far[1] += ctx.invoice_micros
        elif ctx.total_micros < 0 and ctx.effective_billing_mode == "hybrid":
            needed.add(key)  # routed to the invoice for want of the sums: this pass is priced again
        cums[key] = ctx.cumulative_after
        for (charge_id, dim_key), q in ctx.updates.items():
            changed[(c.id, e.period, charge_id, dim_key)] = q
        if c.id in wallets:
            wallets[c.id] -= ctx.wallet_micros
        corr = body.get("correlation_id")
        ses = body.get("session_id")  # attribution, opted in or not (rater.sessions)
        if type(ses) is not str or not ses:
            ses = None
        plan_id = c.plan.id
        key_id = body.get("key_id")
        key_id = key_id if isinstance(key_id, str) and key_id else None
        team_id, app_id, _, _ = self.paths.get(key_id)  # loaded for the batch (_rate_and_commit)
        n = 0
        for n, ln in enumerate(ctx.lines):
            lines.append((e.id, n, corr, c.id, plan_id, e.period, ln.kind, ln.charge_id, ln.metric,
                          ln.dimension_key, ln.quantity, ln.unit_price, ln.amount_micros, ln.cost_micros,
                          key_id, team_id, app_id, ses))
        n = len(ctx.lines)
        if ctx.discount_micros:
            lines.append((e.id, n, corr, c.id, plan_id, e.period, "discount", "discount", None, "default", 0, None,
                          -ctx.discount_micros, 0, key_id, team_id, app_id, ses))
            n += 1
        if ctx.tax_micros:
            lines.append((e.id, n, corr, c.id, plan_id, e.period, "tax", "tax", None, "default", 0, None, ctx.tax_micros,
                          0, key_id, team_id, app_id, ses))
        total = ctx.total_micros
        seq = seqs[c.id] = seqs[c.id] + 1  # only a rated event takes a number: no holes
        rows.append(Processed(e.id, "usage", c.id, e.period, total, ctx.wallet_micros, ctx.invoice_micros,
                              body.get("hold_id") or None, actual_tokens(e.measurements), corr, key_id, seq))
        res.rated += 1
        res.spend_micros += total

    @staticmethod
    def _session_part(e: Event, seqs: dict[str, int], rows: list[Processed]) -> None:
        """An event aggregated into (or ignored by) its session: recorded once, settled with spend 0
        (its hold released, its tokens/min corrected), priced with its session (rater.sessions)."""
        c, body = e.customer, e.body
        seq = seqs[c.id] = seqs[c.id] + 1
        key_id = body.get("key_id")
        rows.append(Processed(e.id, "session_part", c.id, e.period, 0, 0, 0, body.get("hold_id") or None,
                              actual_tokens(e.measurements), body.get("correlation_id"),
                              key_id if isinstance(key_id, str) and key_id else None, seq))

    def _billable(self, trigger: Event, s: sessions.Session, body: dict) -> Event:
        """The one event a closed session is rated as: in the period of its first event, under the
        plan of that period (a plan change pending from a later period does not apply to it)."""
        customer = self.directory.cached(s.customer_id) or trigger.customer
        ev = Event(trigger.index, b"", body, body["id"], "usage", s.period, trigger.current, {}, customer,
                   aggregate=True)
        plan_changes.switch_pending([ev])
        return ev

    @staticmethod
    def _hold(e: Event) -> dict:
        b = e.body
        return {"hold_id": b["hold_id"], "customer_id": e.customer.id, "request_id": b.get("request_id"),
                "key_id": b.get("key_id"), "amount_micros": int(b.get("estimate_micros") or 0),
                "placed_at": b.get("timestamp"), "estimate": b.get("estimate") or {}}

    async def _late_events(self, conn, new: list[Event]) -> None:
        """A usage event of a period already closed (invoiced) is billed in the current period."""
        late = {(e.customer.id, e.period) for e in new if e.kind == "usage" and e.period < e.current}
        if not late:
            return
        closed = {tuple(r) for r in await conn.fetch(
            "SELECT customer_id, period FROM invoices JOIN unnest($1::text[], $2::text[]) AS l(c, p)"
            " ON customer_id = l.c AND period = l.p",
            [x[0] for x in late], [x[1] for x in late],
        )}
        for e in new:
            if (e.customer.id if e.customer else None, e.period) in closed:
                e.period = e.current

    async def _settle_behind(self, conn, customer_ids: list[str], marks: dict[str, int], seqs: dict[str, int],
                             wallets: dict[str, int], current: dict[str, str],
                             settled: list[tuple[SettleItem, SettleResult]]) -> None:
        """Settle the numbers a dead rater committed and left unsettled (marks[c] + 1 .. seqs[c])
        of these hybrid customers, then read their wallets again: routing must see those debits.
        Their results are recorded with the batch's (`settled`)."""
        fill = fill_from(conn, self.paths)
        missing = [it for c in customer_ids for it in await fill(c, marks[c] + 1, seqs[c])]
        log.warning("settling %d events of %d hybrid customers that an earlier rater committed and did not settle,"
                    " before routing", len(missing), len(customer_ids))
        items, results = await settle_filling(self.redis, missing, fill, current_periods=current)
        settled += zip(items, results)
        fresh, _ = await self._wallets(set(customer_ids))
        wallets.update(fresh)

    async def _wallets(self, customer_ids: set[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Prepaid balances of hybrid customers (holds are not subtracted: this settlement
        releases the event's own hold, and the others are estimates, not debits), and their
        settled marks: a balance is only complete if the mark is the customer's last number."""
        if not customer_ids:
            return {}, {}
        ids = sorted(customer_ids)
        keys = [k for c in ids for k in (CustomerKeys(c).wallet, CustomerKeys(c).settled)]
        if redis_raw.supported(self.redis):  # GETs hiredis-packed in one write
            values = await redis_raw.execute(self.redis, [("GET", k) for k in keys])
            for v in values:
                if isinstance(v, Exception):
                    raise v
        else:
            async with self.redis.pipeline(transaction=False) as p:
                for k in keys:
                    p.get(k)
                values = await p.execute()
        return ({c: int(v or 0) for c, v in zip(ids, values[0::2])},
                {c: int(v or 0) for c, v in zip(ids, values[1::2])})

    @tracing.traced("rater.record_settlement")
    async def _record_settlement(self, conn, items: list[SettleItem], results: list[SettleResult]) -> None:
        if not items:
            return
        await record_promotions(conn, items, results)
        await holds.mark_settled(conn, holds.settled_holds(items, results))
        await self.alerts.raise_after_settlement(conn, self.directory, items, results)  # before the outbox goes
        await clear_outbox(self.redis, items, results)
