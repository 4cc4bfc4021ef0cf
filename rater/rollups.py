"""Usage rollups: per customer, UTC hour, metric, dimension set, API key and outcome, the units
measured, the amount charged and what they cost the provider (ledger cost_micros), written in the
rating transaction so the read API (usage, margin) never scans the ledger.

One statement per (sub-)batch: the batch is aggregated here first (events of one customer, hour,
metric, dimension set and key add up into one row), then appended to usage_rollup_deltas by one
text COPY. A compactor (run_compactor, in the rater process) folds the deltas into usage_rollups
(per hour) and usage_rollups_daily (per UTC day) about once a second: one statement, a DELETE ...
RETURNING feeding an INSERT ... ON CONFLICT DO UPDATE into each, rows sorted by key, under an
advisory lock (one compactor at a time: no two upserts lock the same rows in different orders).
Reads sum a rollup table and the deltas (control.read.usage).

Why not upsert usage_rollups in the rating transaction: the benchmark's batches (2,000 events over
300 customers, rated in sub-batches by lock group) aggregate to ~0.7 rollup rows per event, and an
upsert costs PostgreSQL several times an appended row. Measured with bench_rater (2 raters, a busy
shared box, BENCHMARKS.md): the upsert cost ~30 % of the events/s; the deltas and their compaction
~+19 µs of CPU per event (rater +10, PostgreSQL +9.5) on ~87. Compaction aggregates a second of
deltas at once (~0.01 rollup rows per event at 20,000 events/s).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

import asyncpg
import orjson

from rater.ledger import LEDGER_COLUMNS
from tollgate.rating.pricing.engine import plan_pricing

log = logging.getLogger(__name__)

MAX_DIMENSIONS = 8
MAX_VALUE = 64
_NO_DIMS = "{}"
# Properties that are measures, not dimensions: one value per event would make one rollup row per
# event (an MCP tool call's duration_ms; to bill or sum it, report it as a measurement too).
NOT_DIMENSIONS = frozenset({"duration_ms"})


def hour_of(ts: object, default: float) -> str:
    """The UTC hour an event happened in, as PostgreSQL timestamptz text ('2026-11-21 10:00:00+00')."""
    if isinstance(ts, str):
        # Fast path: the enforcer's RFC 3339 UTC ("2026-11-21T10:00:00.123Z").
        if len(ts) >= 20 and ts[10] == "T" and ts[4] == "-" and (ts[-1] == "Z" or ts.endswith("+00:00")):
            return f"{ts[:10]} {ts[11:13]}:00:00+00"
        try:
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            dt = None
        if dt is not None:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:00:00+00")
    elif isinstance(ts, (int, float)) and not isinstance(ts, bool):
        default = ts / 1000 if ts > 1e11 else ts
    return datetime.fromtimestamp(default, timezone.utc).strftime("%Y-%m-%d %H:00:00+00")


def dims_of(properties: object) -> str:
    """The canonical JSON text of an event's dimensions (sorted names, string values)."""
    if not isinstance(properties, dict) or not properties:
        return _NO_DIMS
    out: dict[str, str] = {}
    for name in sorted(n for n in properties if n not in NOT_DIMENSIONS)[:MAX_DIMENSIONS]:
        v = properties[name]
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        elif not isinstance(v, str):
            continue
        if isinstance(name, str) and name:
            out[name] = v[:MAX_VALUE]
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS).decode() if out else _NO_DIMS


_AMOUNT = LEDGER_COLUMNS.index("amount_micros")
_COST = LEDGER_COLUMNS.index("cost_micros")
_KIND, _CHARGE, _METRIC = (LEDGER_COLUMNS.index(c) for c in ("kind", "charge_id", "metric"))


def aggregate(events: Iterable, lines: Sequence[tuple], now: float) -> list[tuple]:
    """Rollup rows (customer, hour, metric, dims, key_id, outcome, quantity, amount, cost, events),
    sorted by key.

    `events`: the rated usage events (rater.pipeline.Event); `lines`: their ledger lines
    (rater.ledger.LEDGER_COLUMNS order). Quantities come from the measurements, amounts and costs
    from the lines; a line without a metric (discount, tax) counts under its kind. `outcome`: the
    composite charge whose price covers the metric in that event (its own outcome metric, or a
    metric metered under it), '' otherwise; a metric metered under two outcomes of one event
    counts under the first.

    ~3 µs per event (2,000 benchmark events over 300 customers): hours and dimension sets are
    memoised per call by their raw text, as a batch repeats a few of each."""
    events = list(events)
    # event id -> its plan's composite charge ids, for plans that have any (an outcome's own line
    # is a usage line of its composite charge)
    composites = {}
    for e in events:
        ids = plan_pricing(e.customer.plan).composite_ids
        if ids:
            composites[e.id] = ids
    amounts: dict[str, dict[str, list]] = {}  # event id -> metric -> [amount, cost, outcome]
    for ln in lines:
        per = amounts.get(ln[0])
        if per is None:
            per = amounts[ln[0]] = {}
        m = ln[_METRIC] or ln[_KIND]
        got = per.get(m)
        kind = ln[_KIND]
        outcome = ln[_CHARGE] if kind == "metered" or (
            composites and kind == "usage" and ln[_CHARGE] in composites.get(ln[0], ())) else ""
        if got is None:
            per[m] = [ln[_AMOUNT], ln[_COST], outcome]
        else:
            got[0] += ln[_AMOUNT]
            got[1] += ln[_COST]
            if not got[2]:
                got[2] = outcome
    hours: dict[object, str] = {}
    dim_sets: dict[bytes, str] = {}
    dumps = orjson.dumps
    acc: dict[tuple, list[int]] = {}
    no_amounts: dict[str, list] = {}
    no_line = (0, 0, "")
    for e in events:
        body = e.body
        key_id = body.get("key_id")
        if type(key_id) is not str:
            key_id = ""
        ts = body.get("timestamp") or body.get("received_at")
        hk = ts[:13] if type(ts) is str and len(ts) >= 20 and (ts[-1] == "Z" or ts.endswith("+00:00")) else ts
        hour = hours.get(hk)
        if hour is None:
            hour = hours[hk] = hour_of(ts, now)
        props = body.get("properties")
        if props:
            raw = dumps(props)
            dims = dim_sets.get(raw)
            if dims is None:
                dims = dim_sets[raw] = dims_of(props)
        else:
            dims = _NO_DIMS
        cid = e.customer.id
        per = amounts.get(e.id, no_amounts)
        ms = e.measurements
        for metric, q in ms.items():
            a, c, outcome = per.get(metric, no_line)
            k = (cid, hour, metric, dims, key_id, outcome)
            row = acc.get(k)
            if row is None:
                acc[k] = [q, a, c, 1]
            else:
                row[0] += q
                row[1] += a
                row[2] += c
                row[3] += 1
        if not per.keys() <= ms.keys():  # lines without a measurement of their own (discount, tax)
            for metric, (a, c, _) in per.items():
                if metric not in ms:
                    k = (cid, hour, metric, dims, key_id, "")
                    row = acc.get(k)
                    if row is None:
                        acc[k] = [0, a, c, 1]
                    else:
                        row[1] += a
                        row[2] += c
                        row[3] += 1
    return [(*k, *v) for k, v in sorted(acc.items())]


DELTA_COLUMNS = ("customer_id", "hour", "metric", "dims", "key_id", "outcome", "quantity", "amount_micros",
                 "cost_micros", "events")
_SPECIAL = b"\t\n\r\\\x00"


def _delta_text(rows: Sequence[tuple]) -> bytes | None:
    """The COPY text payload of delta rows, or None if a value would need escaping (a tab or a
    backslash in a metric, key or dimension; then the caller sends them by binary COPY)."""
    try:
        data = ("\n".join(["\t".join((c, h, m, d, k, o, str(q), str(a), str(x), str(n)))
                            for c, h, m, d, k, o, q, a, x, n in rows]) + "\n").encode()
    except (TypeError, UnicodeEncodeError):
        return None
    if len(data) - len(data.translate(None, _SPECIAL)) != 10 * len(rows):  # 9 tabs and a newline per row
        return None
    return data


async def append(conn: asyncpg.Connection, rows: Sequence[tuple]) -> None:
    """Append aggregated rows to usage_rollup_deltas: one text COPY (the ledger's fast path)."""
    if not rows:
        return
    data = _delta_text(rows)
    if data is not None:
        await conn.copy_to_table("usage_rollup_deltas", source=memoryview(data), columns=DELTA_COLUMNS, format="text")
    else:
        await conn.copy_records_to_table("usage_rollup_deltas", columns=DELTA_COLUMNS, records=[
            (c, datetime.fromisoformat(h[:19] + "+00:00"), *rest) for c, h, *rest in rows])


async def write(conn: asyncpg.Connection, events: Sequence, rows: Sequence, lines: Sequence[tuple]) -> None:
    """The rollups of a rating transaction: its usage events that were rated (`rows`: their
    processed_events records; an event dead-lettered meanwhile has none) and their ledger lines."""
    rated = {r.event_id for r in rows if r.kind == "usage"}
    if rated:
        await append(conn, aggregate([e for e in events if e.id in rated], lines, time.time()))


# ----------------------------------------------------------------------------- compaction

COMPACT_INTERVAL_S = 1.0
_COMPACT_LOCK = 0x70_11_A6_C0  # one compactor at a time: two would upsert the same rows in any order
_UPSERT = """
INSERT INTO {table} AS u (customer_id, {bucket}, metric, dims, key_id, outcome, quantity, amount_micros, cost_micros,
                          events)
SELECT customer_id, {expr}, metric, dims, key_id, outcome, sum(q), sum(a), sum(x), sum(n)
FROM g GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (customer_id, {bucket}, metric, dims, key_id, outcome) DO UPDATE
SET quantity = u.quantity + EXCLUDED.quantity, amount_micros = u.amount_micros + EXCLUDED.amount_micros,
    cost_micros = u.cost_micros + EXCLUDED.cost_micros, events = u.events + EXCLUDED.events"""
# `g`: the deltas summed by their text key first, so the jsonb cast runs once per series and hour,
# not once per delta; both upserts then group by the jsonb value (two texts of one dimension set
# would otherwise be two rows of one conflict key in one statement, which PostgreSQL refuses).
_COMPACT = ("WITH moved AS (DELETE FROM usage_rollup_deltas RETURNING *),"
            " g AS (SELECT customer_id, hour, metric, dims::jsonb AS dims, key_id, outcome, q, a, x, n FROM ("
            "SELECT customer_id, hour, metric, dims, key_id, outcome, sum(quantity) AS q, sum(amount_micros) AS a,"
            " sum(cost_micros) AS x, sum(events) AS n FROM moved GROUP BY 1, 2, 3, 4, 5, 6) x),"
            " hourly AS (" + _UPSERT.format(table="usage_rollups", bucket="hour", expr="hour") + " RETURNING 1)"
            + _UPSERT.format(table="usage_rollups_daily", bucket="day", expr="(hour AT TIME ZONE 'UTC')::date")
            + " RETURNING (SELECT count(*) FROM hourly)")


async def compact(conn: asyncpg.Connection) -> int:
    """Fold every committed delta into usage_rollups and usage_rollups_daily, atomically (a read
    sees either the deltas or their sums, never both); rows of transactions still open stay for
    the next run. Returns the hourly rollup rows written, or -1 if another compactor is running."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _COMPACT_LOCK):
            return -1
        written = await conn.fetch(_COMPACT)
    return written[0][0] if written else 0


async def run_compactor(pool: asyncpg.Pool, stop, interval_s: float = COMPACT_INTERVAL_S) -> None:
    """Compact every interval_s until `stop` (an asyncio.Event) is set; errors are logged and retried."""
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                await compact(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("rollup compaction failed (retried): %r", e)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass
