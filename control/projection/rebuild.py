"""Rebuild the Redis projection from PostgreSQL after a Redis loss: by itself (control.projection.self_heal,
in every rater process) or with `tollgate redis rebuild`.

Redis keeps nothing on disk; PostgreSQL has everything needed to put back what check.lua and
settle.lua read:
- plans, customers (cfg with every tier's limits; the tier is customers.tier, or the higher one
  the spend of the customer's current period (its plan's anchor day) has reached) and API keys,
  through control.projection.writes. customers.tier is what Redis had: promotions raise it as settle.lua
  raises cfg `tier`, and the period close sets both to the tier the new period starts with
  (rater.tiers), so a rebuild neither undoes a reset nor brings back a tier it replaced;
- wallet = sum(wallet_transactions) - sum(processed_events.wallet_micros);
- spend of every period a spend key would still live for (SPEND_TTL_MS back from now)
  = sum(processed_events.spend_micros);
- open holds (holds: status open, not yet expired) and `held`, their sum;
- the billing hierarchy (migration 0013): each level's limits (`limits` hash), the in-flight
  counts and held amounts of the levels that count open holds (from the open holds and the
  limits as they are now: each hold's value names the levels it is counted in, as check.lua
  writes it), and each level's spend of the periods above = sum(processed_events.spend_micros)
  by the event's key, whose path (key, app, team) is fixed (tollgate.limits.spend_levels);
- each customer's settled mark (settle.lua's idempotency) = its highest processed_events
  settle_seq: every processed event's figures are in the sums above, so an event the bus
  redelivers after the rebuild is a replay, not settled a second time. A processed event whose
  hold PostgreSQL still shows open (a crash between settle and mark_settled) gets an outbox entry
  saying it released that hold, and the hold is not put back: exactly the state a completed
  settlement would have left, and the redelivery records the release.
Not rebuilt, on purpose: rate-limit buckets (every key starts with a full minute's budget) and
gateway-retry records (a retry after the loss is decided again).

Order of the writes, so that the hot path never decides on half a projection:
1. `PROJECTION_BUILDING` = this rebuild's generation;
2. plans, then the settled marks and settlement outboxes (before any cfg: settle.lua refuses a
   customer without cfg), then each customer's state in one lua/rebuild_customer.lua run
   (wallet, spend, holds, then cfg, atomically: check.lua sees the customer as before or as
   rebuilt);
3. API key records (HSET of their four fields, never deleted first: a live lookup never sees a
   record missing), after every customer: a key the enforcer can resolve has its customer's
   state in place;
4. the projection marker, by lua/projection_done.lua only if the building record is still there
   (a Redis that restarted meanwhile gets no marker, and the next rebuild starts over); then
   `projection:<generation>` on the invalidation channel, so enforcers drop their caches.
Until 4, the enforcer fails open (`not_projected`) for a key it cannot find, instead of 401.

Every value is written absolutely, so running it twice gives the same Redis. `rebuild_locked`
runs it safely beside live traffic: one rebuild at a time (ONE_REBUILD), no control-plane write
meanwhile (PROJECTION_WRITES, see control.projection.writes) and no settlement or period close meanwhile
(every lock group's advisory lock, as the rating lanes take them): the figures read from
PostgreSQL are still the truth when they are written to Redis.
"""
from __future__ import annotations

import secrets
import time
from collections import defaultdict
from itertools import chain
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson
from redis.exceptions import NoScriptError

import lua
from control.projection.gateway_estimate import estimate_fields
from tollgate import guard_trips, limits, locks, redis_raw
from tollgate.customer_cfg import customer_config
from tollgate.keys import (INVALIDATION_CHANNEL, PROJECTION_BUILDING, PROJECTION_MARKER, SPEND_TTL_MS, CustomerKeys,
                           api_key_record, plan_estimate_record, plan_record)
from tollgate.periods import next_period, period_of
from tollgate.plans import Plan, plan_from_row
from tollgate.tiers import tier_index, tier_reached

BATCH = 1000  # customers (or records) per Redis round trip
BUILDING_TTL_MS = 3600_000  # a rebuild that died leaves its building record this long at most


class ProjectionLost(RuntimeError):
    """Redis lost this rebuild's writes while it ran (it restarted empty): no marker was written."""


async def projected(redis) -> bool:
    """Whether Redis holds a complete projection (the marker of a finished rebuild)."""
    return bool(await redis.exists(PROJECTION_MARKER))


async def rebuild_locked(redis, conn: asyncpg.Connection, *, wait: bool = True,
                         only_if_missing: bool = False, now: datetime | None = None) -> dict | None:
    """`rebuild` under the locks that make it safe beside running raters and control-plane writes.

    wait=False: None at once if another rebuild runs. only_if_missing: None if, once this one may
    run, the marker is there (another process has just rebuilt)."""
    ns = locks.PROJECTION_LOCK_NAMESPACE
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1, $2)", ns, locks.ONE_REBUILD)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", ns, locks.ONE_REBUILD):
        return None
    try:
        if only_if_missing and await projected(redis):
            return None
        started = time.monotonic()
        # Control-plane transactions in flight commit first; new ones wait for us.
        await conn.execute("SELECT pg_advisory_lock($1, $2)", ns, locks.PROJECTION_WRITES)
        try:
            # In order, one at a time: a rating lane or the period close holding one finishes its
            # transaction and settle, and never waits for a lock while it holds one, so no cycle.
            for group in range(locks.LOCK_GROUPS):
                await locks.lock_group_wait(conn, group)
            try:
                locked_after = time.monotonic() - started
                counts = await rebuild(redis, conn, now=now)
                counts["lock_wait_seconds"] = round(locked_after, 3)
                return counts
            finally:
                await locks.unlock_groups(conn, range(locks.LOCK_GROUPS))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", ns, locks.PROJECTION_WRITES)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", ns, locks.ONE_REBUILD)


async def rebuild(redis, conn, *, now: datetime | None = None) -> dict:
    """Rebuild everything and write the marker; returns counts of what was written. Takes no lock:
    callers beside live raters use rebuild_locked."""
    now = now or datetime.now(timezone.utc)
    started = time.monotonic()
    generation = f"{int(time.time() * 1000)}-{secrets.token_hex(4)}"
    await redis.set(PROJECTION_BUILDING, generation, px=BUILDING_TTL_MS)
    has_events = await conn.fetchval("SELECT to_regclass('processed_events') IS NOT NULL")

    plans = {r["id"]: plan_from_row(r) for r in await conn.fetch("SELECT id, document FROM plans ORDER BY id")}
    anchors = {p.billing_anchor_day for p in plans.values()} | {1}
    periods = sorted({p for a in anchors for p in _periods(now - timedelta(milliseconds=SPEND_TTL_MS), now, a)})

    wallets = await _wallets(conn, has_events)
    spend = await _spend(conn, has_events, periods)
    holds = await _open_holds(conn, has_events, now)
    markers = await _markers(conn, has_events, wallets, spend)
    customers = await conn.fetch(
        "SELECT id, plan_id, billing_mode, tier, spend_cap_micros, status, limits FROM customers ORDER BY id")
    keys = await conn.fetch(
        "SELECT k.id, k.key_hash, k.customer_id, c.plan_id, k.status, k.app_id, a.kind AS app_kind, a.team_id, k.limits"
        " FROM api_keys k JOIN customers c ON c.id = k.customer_id LEFT JOIN apps a ON a.id = k.app_id ORDER BY k.id"
    )
    tree = await _hierarchy(conn, customers, keys, has_events, periods)
    counts = {"plans": len(plans), "customers": len(customers), "api_keys": len(keys), "wallets": 0,
              "spend_keys": 0, "holds": 0, "markers": 0, "level_spend_keys": 0}
    read_done = time.monotonic()

    await _execute(redis, [("SET", plan_record(pid), orjson.dumps(p.document)) for pid, p in plans.items()])
    await _execute(redis, [c for pid, p in plans.items()  # the gateways' estimate (in-gateway Kong)
                           for c in (("DEL", plan_estimate_record(pid)),
                                     ("HSET", plan_estimate_record(pid), *chain(*estimate_fields(p).items())))])

    # Settled marks (and outboxes) before any cfg: settle.lua refuses a customer without cfg, so
    # a settlement that finds the rebuilt cfg also finds the mark that makes a redelivery a replay.
    mark_commands: list[tuple] = []
    for cid, mark, outbox in markers:
        k = CustomerKeys(cid)
        mark_commands += [("DEL", k.settle_outbox), ("SET", k.settled, mark)]
        if outbox:
            mark_commands.append(("HSET", k.settle_outbox, *(x for pair in outbox.items() for x in pair)))
    await _execute(redis, mark_commands)

    script = lua.load("rebuild_customer")
    current = {pid: period_of(now, p.billing_anchor_day) for pid, p in plans.items()}
    cfgs: dict[tuple, tuple] = {}  # customers of a plan mostly share their cfg: built once
    calls = []
    for c in customers:
        cid, plan = c["id"], plans[c["plan_id"]]
        cust_spend = spend.get(cid, {})
        tier = _tier(plan, c["tier"], cust_spend.get(current[plan.id], 0))
        shape = (plan.id, c["billing_mode"], tier, c["spend_cap_micros"], c["status"])
        cfg = cfgs.get(shape)
        if cfg is None:
            fields = customer_config(plan, c["billing_mode"], tier, c["spend_cap_micros"], c["status"])
            cfg = cfgs[shape] = tuple(x for pair in fields.items() for x in pair)
        open_holds = holds.get(cid, ())
        k = CustomerKeys(cid)
        wallet = wallets.get(cid)
        counts["wallets"] += wallet is not None
        counts["spend_keys"] += len(cust_spend)
        counts["holds"] += len(open_holds)
        limits_fields = tree.limits.get(cid, {})
        inflight: dict[str, int] = defaultdict(int)
        hold_args: list = []
        for hold_id, value, expiry, amount in open_holds:
            levels = tree.tracked(cid, value.rsplit(":", 1)[1])
            if levels:  # counted where check.lua would count it now
                value += ":" + " ".join(levels)
                for f in levels:
                    inflight[f] += 1
                    if amount:
                        inflight["held:" + f] += amount
            hold_args += (hold_id, value, expiry)
        level_spend = tree.spend.get(cid, {})
        counts["level_spend_keys"] += len(level_spend)
        args: list = ["" if wallet is None else wallet, sum(a for _, _, _, a in open_holds), SPEND_TTL_MS,
                      len(cfg) // 2, len(open_holds), len(periods), len(limits_fields), len(inflight)]
        args += [cust_spend.get(p, "") for p in periods]
        args += cfg
        args += hold_args
        args += [x for pair in limits_fields.items() for x in pair]
        args += [x for pair in inflight.items() for x in pair]
        args += level_spend.values()
        calls.append(([k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.limits, k.inflight,
                       *(k.spend(p) for p in periods), *(k.level_spend(f, p) for f, p in level_spend)], args))
    for start in range(0, len(calls), BATCH):
        await _eval(redis, script, calls[start:start + BATCH])
    counts["markers"] = len(markers)

    # Margin Guard: the fields of the active deny trips, exactly (a reset's lost HDEL goes too).
    has_guard = await conn.fetchval("SELECT to_regclass('margin_guard_trips') IS NOT NULL")
    guards = await guard_trips.active_deny_fields(conn) if has_guard else {}
    guard_commands: list[tuple] = []
    for c in customers:
        guard_commands.append(("DEL", CustomerKeys(c["id"]).guard))
        if fields := guards.get(c["id"]):
            guard_commands.append(("HSET", CustomerKeys(c["id"]).guard, *(x for pair in fields.items() for x in pair)))
    await _execute(redis, guard_commands)
    counts["guard_fields"] = sum(len(f) for f in guards.values())

    await _execute(redis, [("HSET", api_key_record(k["key_hash"]), "customer_id", k["customer_id"], "key_id", k["id"],
                            "plan_id", k["plan_id"], "status", k["status"],
                            *(("app_id", k["app_id"], "app_kind", k["app_kind"], "team_id", k["team_id"])
                              if k["app_id"] else ())) for k in keys])

    (done,) = await _eval(redis, lua.load("projection_done"), [([PROJECTION_BUILDING, PROJECTION_MARKER], [generation])])
    if not int(done):
        raise ProjectionLost("Redis lost the rebuild's writes while it ran (restarted?): no marker written")
    await redis.publish(INVALIDATION_CHANNEL, f"projection:{generation}")
    counts["generation"] = generation
    counts["read_seconds"] = round(read_done - started, 3)  # PostgreSQL
    counts["write_seconds"] = round(time.monotonic() - read_done, 3)  # Redis (and building the commands)
    return counts


async def _eval(redis, script: lua.Script, calls: list[tuple[list, list]]) -> list:
    """Each (keys, args) run of `script`, in one pipeline: tollgate.redis_raw.eval_many, or on a
    RedisCluster its pipeline (which routes EVALSHA by the keys' slot; only its `evalsha` method is
    refused in pipelines), loading the script on every node first if one lacks it."""
    if redis_raw.supported(redis):
        return await redis_raw.eval_many(redis, script, calls)
    replies = await _cluster_pipeline(redis, [("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls])
    if any(isinstance(r, NoScriptError) for r in replies):
        await redis.script_load(script.source)  # every primary
        replies = await _cluster_pipeline(redis, [("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls])
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies


async def _cluster_pipeline(redis, commands: list[tuple]) -> list:
    async with redis.pipeline(transaction=False) as p:
        for cmd in commands:
            p.execute_command(*cmd)
        return await p.execute(raise_on_error=False)


async def _execute(redis, commands: list[tuple]) -> None:
    """Plain commands, BATCH per round trip; an error reply raises."""
    for start in range(0, len(commands), BATCH):
        chunk = commands[start:start + BATCH]
        if redis_raw.supported(redis):
            replies = await redis_raw.execute(redis, chunk)
        else:  # RedisCluster: its pipeline routes each command to its slot's node
            replies = await _cluster_pipeline(redis, chunk)
        for r in replies:
            if isinstance(r, Exception):
                raise r


def _tier(plan: Plan, recorded: str, period_spend: int) -> str:
    """customers.tier, or higher if this period's spend already reached a higher threshold (a
    promotion settle.lua made whose record was lost with a crash): never lower, as in settle.lua."""
    return plan.tiers[max(tier_reached(plan, period_spend), tier_index(plan, recorded))].name


def _periods(start: datetime, end: datetime, anchor_day: int = 1) -> list[str]:
    """Every period id from start's to end's, inclusive."""
    out, p, last = [], period_of(start, anchor_day), period_of(end, anchor_day)
    while p <= last:
        out.append(p)
        p = next_period(p)
    return out


async def _wallets(conn, has_events: bool) -> dict[str, int]:
    """Only customers with wallet activity get a wallet key (postpaid ones keep none)."""
    out: dict[str, int] = defaultdict(int)
    for r in await conn.fetch("SELECT customer_id, sum(amount_micros)::bigint AS s FROM wallet_transactions GROUP BY 1"):
        out[r["customer_id"]] += r["s"]
    if has_events:
        for r in await conn.fetch(
            "SELECT customer_id, sum(wallet_micros)::bigint AS s FROM processed_events"
            " GROUP BY 1 HAVING sum(wallet_micros) <> 0"
        ):
            out[r["customer_id"]] -= r["s"]
    return dict(out)


async def _spend(conn, has_events: bool, periods: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    if has_events:
        for r in await conn.fetch(
            "SELECT customer_id, period, sum(spend_micros)::bigint AS s FROM processed_events"
            " WHERE period = ANY($1::text[]) GROUP BY 1, 2", periods,
        ):
            out[r["customer_id"]][r["period"]] = r["s"]
    return out


async def _open_holds(conn, has_events: bool, now: datetime) -> dict[str, list[tuple[str, str, int, int]]]:
    """customer -> [(hold id, "amount:tokens:key id", expiry ms, amount)] of still-open holds."""
    settled_by_event = (
        " AND NOT EXISTS (SELECT 1 FROM processed_events pe"
        " WHERE pe.hold_id = h.hold_id AND pe.customer_id = h.customer_id)" if has_events else ""
    )
    rows = await conn.fetch(
        "SELECT h.hold_id, h.customer_id, h.key_id, h.amount_micros, h.estimated_tokens, h.expires_at"
        " FROM holds h WHERE h.status = 'open' AND h.expires_at > $1 AND h.customer_id IS NOT NULL"
        " AND h.amount_micros IS NOT NULL" + settled_by_event, now,
    )
    out: dict[str, list] = defaultdict(list)
    for r in rows:
        value = f"{r['amount_micros']}:{r['estimated_tokens']}:{r['key_id'] or ''}"
        out[r["customer_id"]].append((r["hold_id"], value, int(r["expires_at"].timestamp() * 1000), r["amount_micros"]))
    return out


class _Tree:
    """The hierarchy as the rebuild needs it: per customer its `limits` hash fields, the levels
    each key's open holds are counted in, and each level's spend per period."""

    def __init__(self):
        self.limits: dict[str, dict[str, str]] = defaultdict(dict)  # customer -> level -> encoded limits
        self.tracking: dict[str, set[str]] = defaultdict(set)  # customer -> levels that count open holds
        self.paths: dict[str, tuple[str, ...]] = {}  # key id -> its levels, most specific first, customer last
        self.spend: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)  # customer -> (level, period) -> micros

    def add(self, customer_id: str, level: str, raw_limits) -> None:
        parsed = limits.loads(raw_limits)
        encoded = limits.encode(parsed)
        if encoded is not None:
            self.limits[customer_id][level] = encoded
        if limits.tracks_holds(parsed):
            self.tracking[customer_id].add(level)

    def tracked(self, customer_id: str, key_id: str) -> list[str]:
        """The levels an open hold of `key_id` is counted in (check.lua's order)."""
        tracking = self.tracking.get(customer_id)
        if not tracking:
            return []
        path = self.paths.get(key_id, ("key:" + key_id, "customer"))
        # the customer counts in-flight only (its cap is cfg's, over `held`)
        return [f for f in path if f in tracking]


async def _hierarchy(conn, customers, keys, has_events: bool, periods: list[str]) -> _Tree:
    tree = _Tree()
    for c in customers:
        parsed = limits.loads(c["limits"])
        encoded = limits.encode(parsed)
        if encoded is not None:
            tree.limits[c["id"]]["customer"] = encoded
        if "max_in_flight" in parsed:
            tree.tracking[c["id"]].add("customer")
    for r in await conn.fetch("SELECT id, customer_id, limits FROM teams WHERE limits <> '{}'::jsonb"):
        tree.add(r["customer_id"], limits.level_field("team", r["id"]), r["limits"])
    for r in await conn.fetch("SELECT id, customer_id, limits FROM apps WHERE limits <> '{}'::jsonb"):
        tree.add(r["customer_id"], limits.level_field("app", r["id"]), r["limits"])
    counted: dict[str, tuple[str, tuple[str, ...]]] = {}  # key id -> (customer, levels its spend counts in)
    for k in keys:
        tree.add(k["customer_id"], limits.level_field("key", k["id"]), k["limits"])
        key_level = limits.level_field("key", k["id"])
        if k["app_id"]:
            tree.paths[k["id"]] = (key_level, limits.level_field("app", k["app_id"]),
                                   limits.level_field("team", k["team_id"]), "customer")
        levels = limits.spend_levels(k["id"], k["app_id"], k["team_id"], limits.loads(k["limits"]))
        if levels:
            counted[k["id"]] = (k["customer_id"], levels)
    if has_events and counted:
        rows = await conn.fetch(
            "SELECT key_id, period, sum(spend_micros)::bigint AS s FROM processed_events"
            " WHERE key_id = ANY($1::text[]) AND period = ANY($2::text[]) GROUP BY 1, 2", list(counted), periods,
        )
        for r in rows:
            cid, levels = counted[r["key_id"]]
            spend = tree.spend[cid]
            for level in levels:
                spend[(level, r["period"])] = spend.get((level, r["period"]), 0) + r["s"]
    return tree


async def _markers(conn, has_events: bool, wallets: dict[str, int],
                   spend: dict[str, dict[str, int]]) -> list[tuple[str, int, dict[int, bytes]]]:
    """(customer, settled mark, outbox) for settle.lua's idempotency: the mark is the customer's
    highest settle sequence number; the outbox has, per event whose hold PostgreSQL still shows
    open, what a replay returns: that hold released, and as wallet/spend "after" the figures as
    rebuilt (the historical ones are not kept anywhere). A promotion not recorded before the loss
    is not known here; the tier itself is rebuilt from the period's spend (_tier)."""
    if not has_events:
        return []
    marks = await conn.fetch(
        "SELECT c.id, (SELECT p.settle_seq FROM processed_events p WHERE p.customer_id = c.id"
        " AND p.settle_seq IS NOT NULL ORDER BY p.settle_seq DESC LIMIT 1) AS mark FROM customers c"
    )
    open_released = await conn.fetch(
        """SELECT pe.customer_id, pe.settle_seq, pe.period, h.amount_micros
             FROM holds h JOIN processed_events pe ON pe.hold_id = h.hold_id AND pe.customer_id = h.customer_id
            WHERE h.status = 'open' AND h.amount_micros IS NOT NULL AND pe.settle_seq IS NOT NULL"""
    )
    outboxes: dict[str, dict[int, bytes]] = defaultdict(dict)
    for r in open_released:
        cid = r["customer_id"]
        outboxes[cid][r["settle_seq"]] = orjson.dumps(
            [0, str(r["amount_micros"]), str(wallets.get(cid, 0)), str(spend.get(cid, {}).get(r["period"], 0)), "", ""])
    return [(r["id"], r["mark"], outboxes.get(r["id"], {})) for r in marks if r["mark"]]


# --------------------------------------------------------------------------------------- CLI


def register(sub) -> None:
    from tollgate.cli import command, group  # noqa: PLC0415  (the CLI imports this module)

    redis_cmds = group(sub, "redis", "the Redis projection")
    command(redis_cmds, "rebuild", _cli_rebuild,
            "reconstruct balances, spend, tiers, holds and keys in Redis from PostgreSQL (safe while raters run;"
            " they also do it by themselves when Redis lost its projection)")


async def _cli_rebuild(ctx) -> int:
    started = time.monotonic()
    async with ctx.backends() as (pool, redis), pool.acquire() as conn:
        counts = await rebuild_locked(redis, conn)
    counts["seconds"] = round(time.monotonic() - started, 3)
    ctx.emit(counts, "rebuilt: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
