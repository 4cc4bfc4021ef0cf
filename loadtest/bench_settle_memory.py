"""Redis memory of settlement and of the hot path's per-request records.

    .venv/bin/python loadtest/bench_settle_memory.py                     # the figures in BENCHMARKS.md
    .venv/bin/python loadtest/bench_settle_memory.py --events 20000 --customers 200 --checks 2000   # smoke
    .venv/bin/python loadtest/bench_settle_memory.py --requests-only     # only check.lua's records

Everything runs on a private redis-server (no persistence) on a free port; memory is INFO memory
`used_memory`, read after the work and compared with a reading taken before it.

1. Settlement: --customers customers are projected (cfg as the control plane writes it, a wallet,
   this period's spend key: "the customers' own state"), memory is read, then --events usage
   events are settled through rater.settlement.settle, driven directly (not the whole rater: no
   PostgreSQL, no bus; the script, its keys and its arguments are exactly the rater's), in calls
   of --batch events over random customers, each customer's events numbered in sequence as the
   rating transaction numbers them. --hold-share of the events release a hold, placed beforehand
   in the format check.lua writes (amount:tokens:key id), and every call is followed by
   rater.settlement.clear_outbox, as the pipeline does once PostgreSQL has recorded the results.
   Reported: memory after minus before (target: under 50 MB for 1,000,000 events), and per
   customer. For comparison, the marker per event that settlement kept before (`tg:{c}:evt:<id>`,
   the stored reply, PX 7 days) is written for --old-markers events and measured per event.
2. Per-request records of the hot path, with real check.lua ALLOWs (a new request id each, the
   enforcer's key and argument shapes: request ids of 36 characters as a UUID, hold ids as the
   enforcer makes them): bytes per idempotency record `tg:{c}:req:<request id>` and per open hold
   (its `holds` field and `hold_exp` member), from the memory before and after --checks calls and
   again after deleting the idempotency records; Redis CPU per call (INFO commandstats, evalsha
   usec_per_call, reset before) of those ALLOWs and of --checks/10 replays (the same request ids
   again). Three variants in alternating order, --rounds times, Redis flushed between; medians:
   "before" is check.lua at --before-ref (the whole reply as the record, TTL 900 s), "now" this
   check.lua (the hold id only, TTL Settings().idempotency_ttl_s), and "now" with the key spelt
   `tg:{c}:r:` (the shorter-key option, measured, not adopted). Then what a steady --rate
   checks/s keeps: bytes per record x rate x TTL; open holds x how long they stay open.
   --requests-only skips part 1.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lua  # noqa: E402
from tollgate.customer_cfg import customer_config  # noqa: E402
from rater.settlement import SettleItem, clear_outbox, settle  # noqa: E402
from tollgate.keys import SPEND_TTL_MS  # noqa: E402
from tollgate.redis_raw import eval_many  # noqa: E402
from tollgate.config import Settings  # noqa: E402
from tollgate.keys import CustomerKeys  # noqa: E402
from tollgate.local_services import start_redis  # noqa: E402
from tollgate.periods import period_of  # noqa: E402
from tollgate.plans import load_plan_text  # noqa: E402

PLAN = """
id: bench
billing_mode: prepaid
limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000}
tiers:
  - {name: free, threshold: "0", multiplier: 1}
  - {name: build, threshold: "5.00", multiplier: 2}
  - {name: scale, threshold: "50.00", multiplier: 10}
charges:
  - {id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.000003"}
"""
OLD_MARKER_TTL_MS = 7 * 24 * 3600 * 1000  # the settled-event markers' default TTL before (168 h)
HOLD_TTL_MS = 300_000
OLD_IDEMPOTENCY_TTL_MS = 900_000  # TOLLGATE_IDEMPOTENCY_TTL_S's default before (now Settings')
BEFORE_REF = "a22bd31"  # main before check.lua stored only the hold id (the whole JSON reply before)


async def used_memory(redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


def customer_ids(n: int) -> list[str]:
    return [f"cus_{uuid.uuid4().hex[:12]}" for _ in range(n)]


async def provision(redis, customers: list[str], plan, period: str) -> None:
    """What a customer has before any settlement: cfg, wallet, this period's spend."""
    cfg = customer_config(plan, "prepaid", "free")
    for i in range(0, len(customers), 1000):
        async with redis.pipeline(transaction=False) as p:
            for c in customers[i:i + 1000]:
                k = CustomerKeys(c)
                p.hset(k.cfg, mapping=cfg)
                p.set(k.wallet, 10**15)
                p.set(k.spend(period), 0, px=SPEND_TTL_MS)
            await p.execute()


async def settle_events(redis, customers: list[str], n: int, batch: int, hold_share: float, period: str,
                        rnd: random.Random) -> tuple[int, float]:
    """Settle n events; returns (events settled, seconds)."""
    seqs = dict.fromkeys(customers, 0)
    settled = 0
    t0 = time.perf_counter()
    while settled < n:
        items = []
        holds = []
        for _ in range(min(batch, n - settled)):
            c = rnd.choice(customers)
            seqs[c] += 1
            hold = f"hold_{uuid.uuid4().hex[:21]}" if rnd.random() < hold_share else None
            if hold:
                holds.append((c, hold))
            items.append(SettleItem(c, f"evt_{uuid.uuid4().hex}", period, 1234, 1234, hold, 900, "key_bench", seqs[c]))
        if holds:  # placed as check.lua places them (without its rate-limit and reply records)
            async with redis.pipeline(transaction=False) as p:
                now = int(time.time() * 1000)
                for c, h in holds:
                    k = CustomerKeys(c)
                    p.hset(k.holds, h, "2000:1000:key_bench")
                    p.zadd(k.hold_expiry, {h: now + HOLD_TTL_MS})
                    p.incrby(k.held, 2000)
                await p.execute()
        results = await settle(redis, items, current_periods=None)
        assert all(not r.replayed for r in results)
        await clear_outbox(redis, items, results)
        settled += len(items)
    return settled, time.perf_counter() - t0


async def old_marker_bytes(redis, customers: list[str], n: int) -> float:
    """Bytes per settled-event marker as settle.lua wrote them before (SET key reply PX 7 days)."""
    before = await used_memory(redis)
    reply = orjson.dumps([0, "0", "999999999998766", "1234", "", ""])
    keys = []
    for i in range(0, n, 1000):
        async with redis.pipeline(transaction=False) as p:
            for j in range(i, min(n, i + 1000)):
                key = f"tg:{{{customers[j % len(customers)]}}}:evt:evt_{uuid.uuid4().hex}"
                keys.append(key)
                p.set(key, reply, px=OLD_MARKER_TTL_MS)
            await p.execute()
    per = (await used_memory(redis) - before) / n
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i:i + 1000])
    return per


def script_at(ref: str) -> lua.Script | None:
    """check.lua as it was at a git commit (the "before" of the per-request records); None where
    git does not have it (a shallow clone in CI)."""
    r = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:lua/check.lua"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    source = r.stdout
    script = lua.Script.__new__(lua.Script)
    script.name, script.source, script.sha = "check", source, hashlib.sha1(source.encode()).hexdigest()
    return script


def request_key(c: str, rid: str, short: bool) -> str:
    return f"tg:{{{c}}}:r:{rid}" if short else CustomerKeys(c).request(rid)


async def evalsha_usec(redis) -> float:
    return float((await redis.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"])


async def cpu_seconds(redis) -> float:
    """Redis's process CPU (user + sys): unlike usec_per_call, not inflated by time it waited for a core."""
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def request_records(redis, script: lua.Script, n: int, plan, period: str, ttl_ms: int,
                          short_key: bool = False) -> dict:
    """Bytes per idempotency record and per open hold, from n real check.lua ALLOWs, and Redis's
    CPU per call (INFO commandstats, evalsha usec_per_call) of those ALLOWs and of n/10 replays."""
    customers = customer_ids(max(1, n // 50))
    await provision(redis, customers, plan, period)
    # warm the per-key rate buckets and the held counter: they exist for any active key
    calls, req_keys = [], []
    rnd = random.Random(3)

    def call(c: str, rid: str, hold_id: str):
        k = CustomerKeys(c)
        keys = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.spend(period), request_key(c, rid, short_key),
                k.rate_requests("key_bench"), k.rate_tokens("key_bench")]
        return keys, [hold_id, 1, 2300, 6900, HOLD_TTL_MS, ttl_ms, "key_bench"]

    warm = [call(c, str(uuid.uuid4()), "hold_" + os.urandom(8).hex() + "0") for c in customers]
    await eval_many(redis, script, warm)
    # the warm-up's own records and holds go: the customers start with empty holds, warm buckets
    async with redis.pipeline(transaction=False) as p:
        for (keys, _) in warm:
            p.delete(keys[6], keys[3], keys[4])
            p.set(keys[2], 0)
        await p.execute()
    prefix = os.urandom(8).hex()
    for i in range(n):
        c = rnd.choice(customers)
        rid = str(uuid.uuid4())
        calls.append(call(c, rid, f"hold_{prefix}{i + 1:x}"))
        req_keys.append(request_key(c, rid, short_key))
    before = await used_memory(redis)
    await redis.config_resetstat()
    cpu0 = await cpu_seconds(redis)
    for i in range(0, n, 1000):
        replies = await eval_many(redis, script, calls[i:i + 1000])
        assert all(r[0] == 1 and r[12] == 0 for r in replies), replies[:1]
    allow_cpu_us = (await cpu_seconds(redis) - cpu0) / n * 1e6
    allow_usec = await evalsha_usec(redis)
    after = await used_memory(redis)
    await redis.config_resetstat()
    replays = [(keys, [f"hold_{prefix}0", *argv[1:]]) for keys, argv in calls[:max(1, n // 10)]]
    for i in range(0, len(replays), 1000):
        replies = await eval_many(redis, script, replays[i:i + 1000])
        assert all(r[0] == 1 and r[12] == 1 and r[2] == c[1][0].encode()
                   for r, c in zip(replies, calls[i:i + 1000])), replies[:1]
    replay_usec = await evalsha_usec(redis)
    sample = await redis.get(req_keys[0])
    for i in range(0, n, 1000):
        await redis.delete(*req_keys[i:i + 1000])
    holds_only = await used_memory(redis)
    return {"checks": n, "req_bytes": (after - holds_only) / n, "hold_bytes": (holds_only - before) / n,
            "req_value_len": len(sample), "req_key_len": len(req_keys[0]), "allow_usec": allow_usec, "allow_cpu_us": allow_cpu_us,
            "replay_usec": replay_usec}


async def request_records_compared(redis, args, plan, period: str) -> dict:
    """check.lua before (--before-ref, its 900 s TTL) and now (the default TTL), in alternating
    rounds on one Redis (flushed between): memory is steady, CPU on a busy box is not, so each
    figure is the median of --rounds, before and after interleaved."""
    before = script_at(args.before_ref)
    variants = {
        "before": (before, OLD_IDEMPOTENCY_TTL_MS, False),
        "after": (lua.load("check"), Settings().idempotency_ttl_s * 1000, False),
        "after_short_key": (lua.load("check"), Settings().idempotency_ttl_s * 1000, True),
    }
    if before is None:
        print(f"no lua/check.lua at {args.before_ref} in git: measuring without 'before'", file=sys.stderr)
        del variants["before"]
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            script, ttl_ms, short = variants[name]
            await redis.flushall()
            runs[name].append(await request_records(redis, script, args.checks, plan, period, ttl_ms, short))
    out = {}
    for name, rs in runs.items():
        ttl_ms = variants[name][1]
        med = {k: statistics.median(r[k] for r in rs) if isinstance(rs[0][k], float) else rs[0][k] for k in rs[0]}
        med["ttl_s"] = ttl_ms // 1000
        med["steady_bytes"] = round(args.rate * ttl_ms / 1000 * med["req_bytes"])
        med["allow_usec_all"] = [r["allow_usec"] for r in rs]
        med["allow_cpu_us_all"] = [round(r["allow_cpu_us"], 1) for r in rs]
        out[name] = {k: round(v, 2) if isinstance(v, float) else v for k, v in med.items()}
    return out


async def settlement(redis, args, out: dict, plan, period: str, rnd: random.Random) -> None:
    customers = customer_ids(args.customers)
    await provision(redis, customers, plan, period)
    base = await used_memory(redis)
    done, seconds = await settle_events(redis, customers, args.events, args.batch, args.hold_share, period, rnd)
    after = await used_memory(redis)
    out.update(settled=done, settle_seconds=round(seconds, 1), settle_events_per_s=round(done / seconds),
               customers_state_bytes=base, settle_delta_bytes=after - base,
               settle_delta_per_customer=round((after - base) / args.customers, 1),
               keys_per_customer=round(await redis.dbsize() / args.customers, 2),
               outbox_fields=sum([await redis.hlen(CustomerKeys(c).settle_outbox) for c in customers[:1000]]))
    out["old_marker_bytes_per_event"] = round(await old_marker_bytes(redis, customers, args.old_markers), 1)


async def run(args) -> dict:
    server = start_redis()
    redis = Redis.from_url(server.url)
    out: dict = {"redis_url": server.url, "events": args.events, "customers": args.customers}
    try:
        plan = load_plan_text(PLAN)
        period = period_of(time.time())
        rnd = random.Random(7)
        if not args.requests_only:
            await settlement(redis, args, out, plan, period, rnd)
        rr = await request_records_compared(redis, args, plan, period)
        out["requests"] = rr
        out["rate"] = args.rate
        hold_bytes = rr["after"]["hold_bytes"]
        out["holds_steady_bytes_at_10s"] = round(args.rate * 10 * hold_bytes)
        out["holds_steady_bytes_at_ttl"] = round(args.rate * HOLD_TTL_MS / 1000 * hold_bytes)
    finally:
        await redis.aclose()
        server.stop()
    return out


def report(r: dict) -> str:
    mb = 1 / 1e6
    lines = [f"settle memory benchmark (private redis-server {r['redis_url']})"]
    if "settled" in r:
        lines += [
            f"  settled             {r['settled']:,} events over {r['customers']:,} customers through rater.settlement.settle"
            f" ({r['settle_events_per_s']:,} events/s, {r['settle_seconds']} s)",
            f"  customers' state    {r['customers_state_bytes'] * mb:,.1f} MB used_memory before (cfg, wallet, spend)",
            f"  settlement adds     {r['settle_delta_bytes'] * mb:,.2f} MB   ({r['settle_delta_per_customer']} bytes per customer;"
            f" {r['keys_per_customer']} keys per customer; outbox fields left in the first 1,000: {r['outbox_fields']})",
            f"  before (markers)    {r['old_marker_bytes_per_event']} bytes per settled event for 7 days:"
            f" {r['old_marker_bytes_per_event'] * r['settled'] * mb:,.0f} MB for these events",
        ]
    rq = r["requests"]
    a = rq["after"]
    lines.append(f"  check.lua per-request records ({a['checks']:,} real ALLOWs a round; medians of the rounds;"
                 f" steady state = bytes per record x {r['rate']:,.0f} checks/s x TTL):")
    for name, label in (("before", f"before ({BEFORE_REF}, whole reply)"), ("after", "now (hold id only)"),
                        ("after_short_key", "now, key ':r:' (not adopted)")):
        if name not in rq:
            continue
        x = rq[name]
        lines.append(
            f"    {label:34} {x['req_bytes']:6.1f} bytes a record (key {x['req_key_len']}, value {x['req_value_len']} bytes),"
            f" TTL {x['ttl_s']} s: {x['steady_bytes'] * mb:,.0f} MB at {r['rate']:,.0f}/s;"
            f" Redis usec_per_call {x['allow_usec']} per ALLOW {x['allow_usec_all']}, {x['replay_usec']} per replay;"
            f" Redis process CPU {x['allow_cpu_us']} us per ALLOW {x['allow_cpu_us_all']}")
    lines.append(f"  open holds          {a['hold_bytes']} bytes each: {r['holds_steady_bytes_at_10s'] * mb:,.1f} MB"
                 f" if settled in 10 s, {r['holds_steady_bytes_at_ttl'] * mb:,.0f} MB if all live their 300 s TTL")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=2000, help="events per settle() call (a rater poll)")
    p.add_argument("--hold-share", type=float, default=0.5, help="share of events that release a hold")
    p.add_argument("--old-markers", type=int, default=100_000)
    p.add_argument("--checks", type=int, default=100_000, help="check.lua ALLOWs per round and variant")
    p.add_argument("--rounds", type=int, default=5, help="rounds of before/after, interleaved")
    p.add_argument("--before-ref", default=BEFORE_REF, help="git commit whose lua/check.lua is 'before'")
    p.add_argument("--requests-only", action="store_true", help="skip settlement: only check.lua's records")
    p.add_argument("--rate", type=float, default=5000, help="checks/s for the steady-state figures")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = asyncio.run(run(args))
    print(json.dumps(r) if args.json else report(r))


if __name__ == "__main__":
    main()
