"""Rater benchmark: events/s through the whole rater (bus -> priced -> ledger -> Redis settle ->
ack) and the end-to-end lag at a fixed offered rate, beside the raw ceilings measured in the same
run (PostgreSQL COPY rows/s, Redis EVALSHA/s of settle.lua).

    .venv/bin/python loadtest/bench_rater.py                      # the figures in BENCHMARKS.md
    .venv/bin/python loadtest/bench_rater.py --events 50000 --rate 5000 --duration 15 --workers 1

Everything is private to the run: a redis-server on a free port, a fresh PostgreSQL database
(TOLLGATE_BENCH_PG_DSN, default the local server, else the embedded pgserver), dropped at the end.
The raters reach both over loopback TCP; --unix uses unix sockets instead (the server's own
socket directory for PostgreSQL), as a co-located deployment could.
The rater runs exactly as `tollgate-rater` does (rater.service.Rater: Redis Streams consumer group,
rater.pipeline.Pipeline); `--workers N` runs N such rater processes in one consumer group.
Throughput: N events published first, then the raters, started and connected, drain them (time
from their go signal to the last ack: process start-up is not in it, as in a running service).
Lag: an open-loop producer in another process sends at --rate on a fixed schedule; lag is the time
from an event's scheduled send to the acknowledgement of its batch.
CPU per event of the drain, by process: the rater processes (their own process time), their
PostgreSQL backends (application_name tollgate-bench-rater, /proc), Redis (INFO cpu); and how busy
the whole machine was meanwhile (/proc/stat: other work on a shared box shows there).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lua  # noqa: E402
from rater.consumers.redis_streams import RedisStreamConsumer  # noqa: E402
from control.accounts import customers as customers_svc  # noqa: E402
from control.accounts import plans as plans_svc  # noqa: E402
from control.accounts import wallets as wallets_svc  # noqa: E402
from control.credits import grants as credit_grants_svc  # noqa: E402
from rater import ledger  # noqa: E402
from rater.charges import RedisCharges, enabled as charges_enabled  # noqa: E402
from rater.pipeline import Pipeline  # noqa: E402
from rater.schema import migrate  # noqa: E402
from rater.service import DEFAULT_BATCH, Rater  # noqa: E402
from tollgate.keys import SPEND_TTL_MS  # noqa: E402
from tollgate.redis_raw import eval_many  # noqa: E402
from tollgate.keys import EVENTS_STREAM, CustomerKeys  # noqa: E402
from tollgate.gc_tuning import freeze_startup_heap  # noqa: E402
from tollgate.local_services import start_postgres, start_redis  # noqa: E402
from tollgate.periods import period_of  # noqa: E402

PLAN = """
id: bench
billing_mode: postpaid
limits: {requests_per_minute: 100000, tokens_per_minute: 100000000}
tiers:
  - {name: free, threshold: "0", multiplier: 1}
  - {name: build, threshold: "5.00", multiplier: 2}
  - {name: scale, threshold: "50.00", multiplier: 10}
charges:
  - id: input_tokens
    model: per_unit
    metric: input_tokens
    unit_price: "0.000003"
    overrides:
      - {match: {model: big}, unit_price: "0.000015"}
  - id: output_tokens
    model: graduated
    metric: output_tokens
    tiers:
      - {up_to: 1000000, unit_price: "0.000015"}
      - {up_to: null, unit_price: "0.000012"}
  - {id: cache_read_tokens, model: per_unit, metric: cache_read_tokens, unit_price: "0.0000003"}
"""
# --alerts: every alert the rater evaluates switched on (a cap, a balance floor, spike watching:
# the pace row written in each rating transaction), none reached: the cost of watching.
ALERTS = """alerts: {balance_below: "1.00", usage_spike: {factor: 1000, min_amount: "1000000"}}
"""
ADMIN_DSN = os.environ.get("TOLLGATE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


# --------------------------------------------------------------------------- setup


async def make_database(tmp: Path, unix: bool) -> tuple[str, str]:
    """(admin DSN, DSN of a new migrated database); with `unix`, the DSN names the server's unix
    socket directory when the server is on this machine and has one."""
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=3)
        admin = ADMIN_DSN
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        admin = start_postgres(tmp / "pgdata")  # its DSN is a unix socket already
        conn = await asyncpg.connect(admin)
    name = f"tg_bench_{uuid.uuid4().hex[:10]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    socket_dir = (await conn.fetchval("SHOW unix_socket_directories")).split(",")[0].strip()
    port = await conn.fetchval("SHOW port")
    await conn.close()
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    parts = urlsplit(admin)
    dsn = urlunsplit(parts._replace(path=f"/{name}"))
    if unix and parts.hostname in ("127.0.0.1", "localhost", "::1") and socket_dir \
            and Path(socket_dir, f".s.PGSQL.{port}").exists():
        dsn = f"postgresql://{parts.username or 'postgres'}@/{name}?host={socket_dir}&port={port}"
    await migrate(dsn)
    return admin, dsn


async def drop_database(admin: str, dsn: str) -> None:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


async def provision(pool, redis, n_customers: int, alerts: bool = False, grants: bool = False) -> list[str]:
    await plans_svc.apply_plan(pool, redis, PLAN.replace("tokens_per_minute: 100000000}", 'tokens_per_minute: 100000000,'
                                                         ' monthly_spend_cap: "1000000.00"}') + ALERTS if alerts else PLAN)
    ids = []
    for i in range(n_customers):
        mode = ("prepaid", "postpaid", "hybrid")[i % 3]
        c = await customers_svc.create_customer(pool, redis, name=f"bench {i}", plan_id="bench",
                                                customer_id=f"cus_bench_{i:05d}", billing_mode=mode)
        if mode != "postpaid":
            await wallets_svc.topup(pool, redis, c["id"], "1000000.00" if mode == "prepaid" else "5.00")
            if grants:  # every wallet payment is then taken from grants (tollgate.credit_grants)
                await credit_grants_svc.create_grant(pool, redis, c["id"], "1.00", expires_at="2999-01-01T00:00:00Z")
                await credit_grants_svc.create_grant(pool, redis, c["id"], "1000.00", kind="purchased")
        ids.append(c["id"])
    return ids


def make_event(rnd: random.Random, customers: list[str], ts: str, sent_at: float | None = None) -> dict:
    eid = f"evt_{uuid.uuid4().hex}"
    m = [{"metric": "input_tokens", "value": rnd.randint(100, 8000)},
         {"metric": "output_tokens", "value": rnd.randint(10, 2000)}]
    if rnd.random() < 0.3:
        m.append({"metric": "cache_read_tokens", "value": rnd.randint(1000, 20000)})
    ev = {"kind": "usage", "id": eid, "customer_id": rnd.choice(customers), "key_id": "key_bench",
          "plan_id": "bench", "correlation_id": f"req_{eid[4:]}", "hold_id": None, "event_type": "llm.completion",
          "timestamp": ts, "properties": {"model": "big" if rnd.random() < 0.2 else "small"},
          "measurements": m, "received_at": ts}
    if sent_at is not None:
        ev["sent_at"] = sent_at
    return ev


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def publish(redis, events: list[dict]) -> None:
    for i in range(0, len(events), 2000):
        async with redis.pipeline(transaction=False) as p:
            for e in events[i:i + 2000]:
                p.xadd(EVENTS_STREAM, {"key": e["customer_id"], "event": orjson.dumps(e)})
            await p.execute()


# --------------------------------------------------------------------------- raw ceilings


async def copy_ceiling(dsn: str, rows: int, batch: int) -> float:
    """Rows/s of the rater's ledger COPY (rater.ledger.copy_lines, text format) into a table
    shaped and indexed like ledger_lines, one transaction per batch (as the pipeline commits)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_copy (LIKE ledger_lines INCLUDING ALL)")
        period = period_of(time.time())
        recs = [(f"evt_{i:012d}", i % 3, f"req_{i // 3:012d}", f"cus_bench_{i % 200:05d}", "bench", period, "usage",
                 "input_tokens", "input_tokens", "default", 1234, None, 3702, 0, f"key_bench_{i % 200:05d}", None, None,
                 None) for i in range(rows)]
        t = time.perf_counter()
        for i in range(0, rows, batch):
            async with conn.transaction():
                await ledger.copy_lines(conn, recs[i:i + batch], table="bench_copy")
        return rows / (time.perf_counter() - t)
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.close()


EVENTS_PER_CALL = 4  # events of one customer per settle.lua run, about what a rating batch has


def _settle_calls(customers: list[str], n: int, marks: dict[str, int]) -> list[tuple[list, list]]:
    """settle.lua runs for n events, EVENTS_PER_CALL of one customer per run (the last fewer),
    each the next settle sequence number after the customer's mark in `marks` (what Redis has)."""
    period = period_of(time.time())
    calls = []
    seqs = dict(marks)
    for c, start in enumerate(range(0, n, EVENTS_PER_CALL)):
        customer = customers[c % len(customers)]
        k = CustomerKeys(customer)
        keys, args = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.settled, k.settle_outbox, k.inflight], [SPEND_TTL_MS]
        for _ in range(start, min(n, start + EVENTS_PER_CALL)):
            seqs[customer] = seq = seqs.get(customer, 0) + 1
            keys += [k.spend(period), k.cfg]  # no API key: the tokens bucket slot names cfg, never touched
            args += [seq, "", 0, 1000, 0, 0, 0]  # a key without levels: no level spend keys
        calls.append((keys, args))
    return calls


async def settled_marks(redis, customers: list[str]) -> dict[str, int]:
    """Each customer's settled mark in Redis (the ceilings settle new numbers after it)."""
    values = await redis.mget([CustomerKeys(c).settled for c in customers])
    return {c: int(v or 0) for c, v in zip(customers, values)}


async def evalsha_ceiling(redis, customers: list[str], n: int, batch: int) -> float:
    """Settled events/s of settle.lua as settle() sends them (rater.settlement.eval_many: a
    redis-py client's connection, hiredis packing), `batch` events per round trip in runs of
    EVENTS_PER_CALL events of one customer, each on a new event id."""
    script = lua.load("settle")
    calls = _settle_calls(customers, n, await settled_marks(redis, customers))
    await eval_many(redis, script, calls[:1])
    per_trip = max(1, batch // EVENTS_PER_CALL)
    t = time.perf_counter()
    for i in range(1, len(calls), per_trip):
        await eval_many(redis, script, calls[i:i + per_trip])
    return (n - (len(calls[0][0]) - 8) // 2) / (time.perf_counter() - t)  # the first run warmed up


async def evalsha_raw_ceiling(port: int, customers: list[str], n: int, batch: int, marks: dict[str, int]) -> float:
    """The same settle.lua runs with the lightest client: hiredis-packed, one write per batch
    on a raw socket. What Redis itself sustains from one connection, in settled events/s."""
    import hiredis  # noqa: PLC0415

    sha = lua.load("settle").sha
    packed = [hiredis.pack_command(("EVALSHA", sha, len(k), *k, *a)) for k, a in _settle_calls(customers, n, marks)]
    per_trip = max(1, batch // EVENTS_PER_CALL)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader()
    t = time.perf_counter()
    for i in range(0, len(packed), per_trip):
        chunk = packed[i:i + per_trip]
        writer.write(b"".join(chunk))
        got = 0
        while got < len(chunk):
            parser.feed(await reader.read(1 << 16))
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(reply)
                got += 1
    elapsed = time.perf_counter() - t
    writer.close()
    return n / elapsed


# --------------------------------------------------------------------------- the rater


def rater_process(redis_url: str, dsn: str, name: str, batch: int, go, stop_flag, ready_out, lag_out,
                  count_out) -> None:
    """One rater (as tollgate-rater runs it): connected, it reports ready and waits for `go`, then
    rates until stop_flag is set (multiprocessing Events)."""
    import uvloop  # noqa: PLC0415

    uvloop.run(_rater(redis_url, dsn, name, batch, go, stop_flag, ready_out, lag_out, count_out))


RATER_APP = "tollgate-bench-rater"  # application_name of the raters' PostgreSQL connections


async def _rater(redis_url, dsn, name, batch, go, stop_flag, ready_out, lag_out, count_out) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, server_settings={"application_name": RATER_APP})
    redis = Redis.from_url(redis_url)
    consumer = RedisStreamConsumer(redis, name=name)
    await consumer.start()
    lags: list[float] = []
    done = [0, None, None]  # events, first ack, last ack

    def on_batch(msgs, res) -> None:
        t = time.time()
        done[0] += len(msgs)
        done[1] = done[1] or t
        done[2] = t
        for m in msgs:
            if b'"sent_at"' in m.value:  # the lag run's events (not parsed again in the drain)
                lags.append(t - orjson.loads(m.value)["sent_at"])

    # As tollgate-rater runs: rated lines published on `billing.charges` (the stream on the bus
    # Redis) unless TOLLGATE_CHARGES=0.
    rater = Rater(consumer, Pipeline(pool, redis, charges=RedisCharges(redis) if charges_enabled() else None),
                  batch_size=batch, poll_ms=50, on_batch=on_batch)
    stop = asyncio.Event()
    freeze_startup_heap()  # as rater.service does
    ready_out.put(name)
    while not go.is_set():  # start-up (spawn, imports, connections) is not part of the figures
        await asyncio.sleep(0.005)
    cpu0 = time.process_time()

    async def watch() -> None:  # the batch in hand is finished and acknowledged, then it stops
        while not stop_flag.is_set():
            await asyncio.sleep(0.05)
        stop.set()

    watcher = asyncio.create_task(watch())
    await rater.run(stop)
    await watcher
    await redis.aclose()
    await pool.close()
    lag_out.put(lags)
    count_out.put((*done, time.process_time() - cpu0))


def producer_process(redis_url: str, customers: list[str], rate: float, start_at: float, duration: float) -> None:
    """Open loop: event k is due at start_at + k / rate and carries that time as sent_at."""
    import redis as sync_redis  # noqa: PLC0415

    r = sync_redis.Redis.from_url(redis_url)
    rnd = random.Random(11)
    total = int(rate * duration)
    k = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while k < total:
        now = time.time()
        due = min(total, int((now - start_at) * rate) + 1)
        if due > k:
            ts = now_iso()
            p = r.pipeline(transaction=False)
            for j in range(k, due):
                e = make_event(rnd, customers, ts, sent_at=start_at + j / rate)
                p.xadd(EVENTS_STREAM, {"key": e["customer_id"], "event": orjson.dumps(e)})
            p.execute()
            k = due
        else:
            time.sleep(0.0005)


class Raters:
    """N rater processes in one consumer group, started and connected; go() lets them rate and
    returns that time; stop() returns their lags and (count, first ack, last ack, CPU s)."""

    def __init__(self, ctx, redis_url: str, dsn: str, workers: int, batch: int):
        self.go_flag, self.flag = ctx.Event(), ctx.Event()
        self.ready_q, self.lag_q, self.count_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=rater_process,
                                  args=(redis_url, dsn, f"bench-{i}", batch, self.go_flag, self.flag, self.ready_q,
                                        self.lag_q, self.count_q))
                      for i in range(workers)]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready_q.get(timeout=120)

    def go(self) -> float:
        self.go_flag.set()
        return time.time()

    def stop(self) -> tuple[list[float], list[tuple]]:
        self.flag.set()
        lags, counts = [], []
        for _ in self.procs:
            lags += self.lag_q.get(timeout=60)
            counts.append(self.count_q.get(timeout=60))
        for p in self.procs:
            p.join()
        return lags, counts


async def wait_drained(redis, total: int, timeout: float) -> float:
    """Wait until the group has acknowledged `total` entries; returns the time it happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g = (await redis.xinfo_groups(EVENTS_STREAM))
        if g and g[0]["lag"] == 0 and g[0]["pending"] == 0 and g[0].get("entries-read", total) >= total:
            return time.time()
        await asyncio.sleep(0.02)
    raise TimeoutError("the raters did not drain the stream in time")


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v) - idle, sum(v)


async def _redis_cpu_s(redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _raters_pg_cpu_s(pool) -> float:
    """CPU of the raters' PostgreSQL backends so far (they live as long as the raters)."""
    pids = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()", RATER_APP)
    total = 0.0
    for (pid,) in pids:
        try:
            total += _proc_cpu_s(pid)
        except OSError:  # PostgreSQL on another host (TOLLGATE_BENCH_PG_DSN): not measured
            return float("nan")
    return total


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# --------------------------------------------------------------------------- main


async def main(args) -> dict:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"tg-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True, exist_ok=True)
    redis_server = start_redis(unix_socket=str(tmp / "redis.sock") if args.unix else None)
    admin, dsn = await make_database(tmp, unix=args.unix)
    redis = Redis.from_url(redis_server.url)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    ctx = mp.get_context("spawn")
    out: dict = {"events": args.events, "workers": args.workers, "batch": args.batch, "cpus": os.cpu_count(),
                 "redis_url": redis_server.url, "dsn": dsn}
    try:
        customers = await provision(pool, redis, args.customers, args.alerts, args.grants)
        await redis.xgroup_create(EVENTS_STREAM, "rater", id="0", mkstream=True)

        # 1. Throughput: drain a backlog.
        rnd = random.Random(5)
        ts = now_iso()
        events = [make_event(rnd, customers, ts) for _ in range(args.events)]
        await publish(redis, events)
        del events
        raters = Raters(ctx, redis_server.url, dsn, args.workers, args.batch)  # connected, not reading yet
        redis_cpu0, pg_cpu0, machine0 = await _redis_cpu_s(redis), await _raters_pg_cpu_s(pool), _machine_cpu()
        t0 = raters.go()
        t1 = await wait_drained(redis, args.events, 600)
        pg_cpu = await _raters_pg_cpu_s(pool) - pg_cpu0
        redis_cpu, machine1 = await _redis_cpu_s(redis) - redis_cpu0, _machine_cpu()
        _, counts = raters.stop()
        firsts = [c[1] for c in counts if c[1]]
        t_first = min(firsts) if firsts else t0
        out["throughput_eps"] = round(args.events / (t1 - t0))
        out["throughput_after_first_batch_eps"] = round(args.events / (t1 - t_first))
        us = 1e6 / args.events
        cpu = {"raters": sum(c[3] for c in counts) * us, "postgres": pg_cpu * us, "redis": redis_cpu * us}
        out["cpu_us_per_event"] = {k: round(v, 1) for k, v in {**cpu, "total": sum(cpu.values())}.items()}
        out["machine_busy_pct"] = round(100 * (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]), 1)
        row = await pool.fetchrow("SELECT count(*) AS n, sum(spend_micros) AS spend FROM processed_events")
        out["processed"] = row["n"]
        assert row["n"] == args.events, row
        out["ledger_lines"] = await pool.fetchval("SELECT count(*) FROM ledger_lines")

        # 2. Lag at a fixed offered rate.
        entries_before = (await redis.xinfo_groups(EVENTS_STREAM))[0].get("entries-read") or args.events
        start_at = time.time() + 2.0
        raters = Raters(ctx, redis_server.url, dsn, args.workers, args.batch)
        raters.go()
        prod = ctx.Process(target=producer_process, args=(redis_server.url, customers, args.rate, start_at, args.duration))
        prod.start()
        prod.join()
        await wait_drained(redis, entries_before + int(args.rate * args.duration), 60)
        lags, _ = raters.stop()  # every event of the run counts: the raters were up before it
        out["offered_rate"] = args.rate
        out["lag_events"] = len(lags)
        out["lag_p50_ms"] = round(pct(lags, 50) * 1000, 1)
        out["lag_p99_ms"] = round(pct(lags, 99) * 1000, 1)
        out["lag_max_ms"] = round(max(lags) * 1000, 1)
        out["lag_mean_ms"] = round(statistics.fmean(lags) * 1000, 1)

        # 3. Raw ceilings, same machine, same run.
        out["pg_copy_rows_per_s"] = round(await copy_ceiling(dsn, args.ceiling_rows, 3000))
        out["redis_evalsha_per_s"] = round(await evalsha_ceiling(redis, customers, args.ceiling_evals, 1000))
        out["redis_evalsha_raw_per_s"] = round(await evalsha_raw_ceiling(
            redis_server.port, customers, args.ceiling_evals, 1000, await settled_marks(redis, customers)))
    finally:
        await pool.close()
        await redis.aclose()
        await drop_database(admin, dsn)
        redis_server.stop()
    return out


def report(r: dict) -> str:
    c = r["cpu_us_per_event"]
    return "\n".join([
        f"rater benchmark ({r['cpus']} CPUs, {r['workers']} rater process(es), batch {r['batch']})",
        f"  connections         Redis {r['redis_url']}   PostgreSQL {r['dsn']}",
        f"  throughput          {r['throughput_eps']:>9,} events/s   ({r['events']:,} events drained, "
        f"{r['ledger_lines']:,} ledger lines; {r['throughput_after_first_batch_eps']:,}/s after the first batch)",
        f"  CPU per event       {c['total']} µs: rater processes {c['raters']}, their PostgreSQL backends "
        f"{c['postgres']}, Redis {c['redis']}   (machine {r['machine_busy_pct']} % busy during the drain)",
        f"  lag at {r['offered_rate']:,}/s      p50 {r['lag_p50_ms']} ms   p99 {r['lag_p99_ms']} ms   "
        f"max {r['lag_max_ms']} ms   ({r['lag_events']:,} events, open loop)",
        f"  ceiling PG COPY     {r['pg_copy_rows_per_s']:>9,} rows/s     (ledger-shaped rows by the rater's text COPY, 3,000 per transaction)",
        f"  ceiling Redis       {r['redis_evalsha_raw_per_s']:>9,} events/s   (settle.lua, {EVENTS_PER_CALL} events of one "
        f"customer per EVALSHA as in a rating batch, 1,000 events per pipeline, hiredis-packed)",
        f"    via settlement    {r['redis_evalsha_per_s']:>9,} events/s   (the same, as rater.settlement sends them)",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="backlog drained for throughput")
    ap.add_argument("--customers", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1, help="rater processes in the consumer group")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="events per poll at most (tollgate-rater's default)")
    ap.add_argument("--rate", type=float, default=5000, help="offered events/s for the lag run")
    ap.add_argument("--duration", type=float, default=20, help="seconds of the lag run")
    ap.add_argument("--ceiling-rows", type=int, default=300_000)
    ap.add_argument("--ceiling-evals", type=int, default=100_000)
    ap.add_argument("--unix", action="store_true", help="unix sockets to Redis and PostgreSQL, not loopback TCP")
    ap.add_argument("--alerts", action="store_true", help="the plan watches for every alert the rater raises")
    ap.add_argument("--grants", action="store_true", help="give each prepaid and hybrid customer two credit grants")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    print(orjson.dumps(result).decode() if a.json else report(result))
