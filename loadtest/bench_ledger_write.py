"""The rating transaction's PostgreSQL writes, alone: CPU per event and per row of the choices
in rater/ledger.py and migration 0006, each beside what it replaced, in one run.

    .venv/bin/python loadtest/bench_ledger_write.py            # the figures in BENCHMARKS.md

1. Ledger indexes: the PostgreSQL backend's CPU per event (2-3 ledger lines with random event and
   request ids, 1,000-line COPYs each in its own transaction) into a table with the indexes of
   migration 0002 (btree key on (event_id, line_no), btree on correlation_id, btree on
   (customer_id, period)) and with those of 0006 (no key; hash on event_id and correlation_id,
   the same (customer_id, period) btree).
2. COPY format: client and backend CPU per ledger row, asyncpg's binary copy_records_to_table
   against rater.ledger.copy_lines (text format, payload built in Python), into an unindexed table.

A fresh database on the local server (TOLLGATE_BENCH_PG_DSN, else the embedded pgserver), dropped
at the end. Each variant runs --reps times, interleaved; the medians are printed.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench_rater import _proc_cpu_s, drop_database, make_database  # noqa: E402
from rater import ledger  # noqa: E402
from rater.ledger import LEDGER_COLUMNS  # noqa: E402

TABLE = """CREATE TABLE {name} (event_id text NOT NULL, line_no smallint NOT NULL, correlation_id text,
    customer_id text NOT NULL, plan_id text NOT NULL, period text NOT NULL, kind text NOT NULL,
    charge_id text NOT NULL, metric text, dimension_key text NOT NULL DEFAULT 'default',
    quantity bigint NOT NULL, unit_price numeric, amount_micros bigint NOT NULL, cost_micros bigint NOT NULL DEFAULT 0,
    key_id text, team_id text, app_id text,
    created_at timestamptz NOT NULL DEFAULT now(), session_id text)"""
INDEXES = {
    "0002: btree key + btree correlation_id + btree (customer, period)": [
        "ALTER TABLE {name} ADD PRIMARY KEY (event_id, line_no)",
        "CREATE INDEX ON {name} (customer_id, period)", "CREATE INDEX ON {name} (correlation_id)"],
    "0006: hash event_id + hash correlation_id + btree (customer, period)": [
        "CREATE INDEX ON {name} (customer_id, period)", "CREATE INDEX ON {name} USING hash (event_id)",
        "CREATE INDEX ON {name} USING hash (correlation_id)"],
}


def ledger_rows(events: int, seed: int) -> tuple[list[tuple], int]:
    """Benchmark-shaped ledger lines (2 or 3 per event, as bench_rater's events make) and the
    number of events."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(events):
        e = uuid.UUID(int=rnd.getrandbits(128)).hex
        for n in range(3 if rnd.random() < 0.3 else 2):
            rows.append((f"evt_{e}", n, f"req_{e}", f"cus_bench_{rnd.randrange(300):05d}", "bench", "202611", "usage",
                         ("input_tokens", "output_tokens", "cache_read_tokens")[n], None, "default",
                         rnd.randrange(10, 20000), Decimal("0.000003") if n != 1 else Decimal("0.000015"),
                         rnd.randrange(100, 100000), 0, f"key_bench_{rnd.randrange(300):05d}", None, None, None))
    return rows, events


async def timed_copies(conn, pid: int, table: str, rows: list[tuple], copy) -> tuple[float, float]:
    """(client CPU s, backend CPU s) of COPYing `rows` 1,000 at a time, a transaction each."""
    await conn.execute(f"TRUNCATE {table}")
    client, backend = time.process_time(), _proc_cpu_s(pid)
    for k in range(0, len(rows), 1000):
        async with conn.transaction():
            await copy(conn, table, rows[k:k + 1000])
    return time.process_time() - client, _proc_cpu_s(pid) - backend


async def binary_copy(conn, table: str, rows) -> None:
    await conn.copy_records_to_table(table, records=rows, columns=LEDGER_COLUMNS)


async def text_copy(conn, table: str, rows) -> None:
    await ledger.copy_lines(conn, rows, table=table)


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        admin, dsn = await make_database(Path(tmp), unix=False)
        conn = await asyncpg.connect(dsn)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            rows, events = ledger_rows(args.events, seed=7)
            for i, stmts in enumerate(INDEXES.values()):
                await conn.execute(TABLE.format(name=f"idx{i}"))
                for s in stmts:
                    await conn.execute(s.format(name=f"idx{i}"))
            await conn.execute(TABLE.format(name="plain"))

            by_index: dict[str, list[float]] = {k: [] for k in INDEXES}
            by_format: dict[str, list[tuple[float, float]]] = {"binary (copy_records_to_table)": [],
                                                               "text (rater.ledger.copy_lines)": []}
            for _ in range(args.reps):
                for i, name in enumerate(INDEXES):
                    by_index[name].append((await timed_copies(conn, pid, f"idx{i}", rows, text_copy))[1])
                for name, copy in zip(by_format, (binary_copy, text_copy)):
                    by_format[name].append(await timed_copies(conn, pid, "plain", rows, copy))
        finally:
            await conn.close()
            await drop_database(admin, dsn)

    print(f"ledger writes: {events:,} events, {len(rows):,} lines, {args.reps} runs each (medians)")
    print("1. PostgreSQL CPU per event, ledger COPY (text) by index set:")
    med = {k: statistics.median(v) / events * 1e6 for k, v in by_index.items()}
    for k, v in med.items():
        print(f"   {v:6.1f} µs  {k}")
    old, new = med.values()
    print(f"   ratio 0006 / 0002: {_ratio(new, old)}")
    print("2. CPU per ledger row, unindexed table, by COPY format:")
    fmt = {k: (statistics.median([c for c, _ in v]) / len(rows) * 1e6, statistics.median([b for _, b in v]) / len(rows) * 1e6)
           for k, v in by_format.items()}
    for k, (c, b) in fmt.items():
        print(f"   client {c:5.2f} µs  backend {b:5.2f} µs  {k}")
    (cb, bb), (ct, bt) = fmt.values()
    print(f"   ratio text / binary: client {_ratio(ct, cb)}, backend {_ratio(bt, bb)}")


def _ratio(a: float, b: float) -> str:
    """a / b; "n/a" when b read 0 (CPU times tick every 10 ms: a tiny run can read nothing)."""
    return f"{a / b:.2f}" if b else "n/a"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
