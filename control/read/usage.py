"""Usage reads: per customer or per API key, by metric and by any dimension, bucketed by hour or
day (UTC), over any range, from the rollups the rater writes in its rating transaction
(usage_rollups and the deltas not yet folded into them, rater/rollups.py): never the ledger.

One customer's range of hours is one index range scan (the rollups' key leads with customer and
hour); a key's usage is the same scan filtered on the key; grouping by a dimension reads it out of
each row's `dims` object. Day buckets read usage_rollups_daily (the same sums per UTC day, written by
the same compaction): 90 days by model is ~90 rows per series, not 2,160.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import asyncpg

from control.errors import InvalidInput, NotFound
from control.lookup import known_id, require_customer
from tollgate.money import format_micros

BUCKETS = ("hour", "day")
MAX_GROUPS = 4  # dimensions grouped by at once
MAX_RANGE = {"hour": timedelta(days=93), "day": timedelta(days=3 * 366)}
DEFAULT_RANGE = timedelta(days=30)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def parse_time(value: str | None, field: str) -> datetime | None:
    """ISO 8601 date ('2026-11-01', midnight UTC) or date-time (UTC when it has no offset)."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        # A '+' of an offset arrives as a space when the query string was not percent-encoded.
        t = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        raise InvalidInput(field, "must be an ISO 8601 date (2026-11-01) or date-time (2026-11-01T10:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


PATH_GROUPS = ("key", "team", "app")  # the billing hierarchy: the event's API key, its team, its app or agent


def parse_group_by(value: str | None) -> list[str]:
    """Comma-separated dimension names (model, tool, ...) and/or `key`, `team`, `app` (the event's
    API key and its path in the billing hierarchy)."""
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if len(names) > MAX_GROUPS:
        raise InvalidInput("group_by", f"at most {MAX_GROUPS} names")
    for n in names:
        if not _NAME.match(n):
            raise InvalidInput("group_by", f"{n[:70]!r} is not a dimension name (letters, digits, '_', '-', '.')")
    if len(set(names)) != len(names):
        raise InvalidInput("group_by", "a name repeats")
    return names


def _range(start: datetime | None, end: datetime | None, bucket: str) -> tuple[datetime, datetime]:
    """[from, to) aligned outward to whole buckets; default the last 30 days up to now."""
    if bucket not in BUCKETS:
        raise InvalidInput("bucket", f"must be one of {', '.join(BUCKETS)}")
    end = end or datetime.now(timezone.utc)
    start = start or end - DEFAULT_RANGE
    unit = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    floor = (lambda t: t.replace(minute=0, second=0, microsecond=0)) if bucket == "hour" else \
        (lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0))
    start = floor(start.astimezone(timezone.utc))
    end_utc = end.astimezone(timezone.utc)
    end = floor(end_utc) + (unit if floor(end_utc) != end_utc else timedelta(0))
    if end <= start:
        raise InvalidInput("to", "must be after from")
    if end - start > MAX_RANGE[bucket]:
        raise InvalidInput("from", f"a range of {bucket} buckets spans at most {MAX_RANGE[bucket].days} days")
    return start, end


async def customer_usage(db: asyncpg.Pool, customer_id: str, *, start: datetime | None = None,
                         end: datetime | None = None, bucket: str = "day", group_by: list[str] | None = None,
                         metric: str | None = None, key_id: str | None = None) -> dict:
    """Usage rows (bucket, metric, grouped dimensions: quantity, amount, events) and totals per metric."""
    if metric is not None and not _NAME.match(metric):
        raise InvalidInput("metric", "not a metric name")
    start, end = _range(start, end, bucket)
    group_by = group_by or []
    dims = [g for g in group_by if g not in PATH_GROUPS]
    path = [g for g in PATH_GROUPS if g in group_by]
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await _query(conn, customer_id, start, end, bucket, dims, path, metric, key_id)
    out_rows, totals, stamps = [], {}, {}
    for r in rows:
        q, a, n = r["quantity"], r["amount_micros"], r["events"]
        b = r["b"]
        stamp = stamps.get(b)
        if stamp is None:  # a bucket repeats once per series
            stamp = stamps[b] = (b if bucket == "hour" else datetime(b.year, b.month, b.day, tzinfo=timezone.utc)).isoformat()
        row = {"bucket": stamp, "metric": r["metric"], "quantity": q,
               "amount": format_micros(a), "events": n}
        if dims:
            row["dimensions"] = {d: r[f"g{i}"] for i, d in enumerate(dims)}
        for g in path:
            row[f"{g}_id"] = r[f"{g}_id"] or None
        out_rows.append(row)
        t = totals.setdefault(r["metric"], [0, 0, 0])
        t[0] += q
        t[1] += a
        t[2] += n
    return {"customer_id": customer_id, **({"key_id": key_id} if key_id else {}),
            "from": start.isoformat(), "to": end.isoformat(), "bucket": bucket, "group_by": group_by,
            "rows": out_rows,
            "totals": [{"metric": m, "quantity": t[0], "amount": format_micros(t[1]), "events": t[2]}
                       for m, t in sorted(totals.items())]}


async def _query(conn, customer_id: str, start: datetime, end: datetime, bucket: str, dims: list[str],
                 path: list[str], metric: str | None, key_id: str | None) -> list[asyncpg.Record]:
    """One statement (one snapshot) over a rollup table (hours, or days: usage_rollups_daily) and
    the deltas not compacted yet: the compactor moves rows from one to the other atomically, so
    nothing counts twice or not at all. The range is whole buckets (_range). Rollups keep the key;
    its team and app come from its path (fixed when the key was made), joined after the sums."""
    day = bucket == "day"
    args: list = [customer_id, start.date() if day else start, end.date() if day else end]
    cols = ["b", "metric"]
    for i, d in enumerate(dims):
        args.append(d)
        cols.append(f"dims ->> ${len(args)} AS g{i}")
    path_cols = {"key": "r.key_id AS key_id", "team": "a.team_id AS team_id", "app": "k.app_id AS app_id"}
    cols += [path_cols[g] for g in path]
    where = ["customer_id = $1"]
    if metric is not None:
        args.append(metric)
        where.append(f"metric = ${len(args)}")
    if key_id is not None:
        args.append(key_id)
        where.append(f"key_id = ${len(args)}")
    cond = " AND ".join(where)
    rollup = (f"SELECT day AS b, metric, dims, key_id, quantity, amount_micros, events FROM usage_rollups_daily"
              f" WHERE {cond} AND day >= $2 AND day < $3") if day else \
             (f"SELECT hour AS b, metric, dims, key_id, quantity, amount_micros, events FROM usage_rollups"
              f" WHERE {cond} AND hour >= $2 AND hour < $3")
    b = "(hour AT TIME ZONE 'UTC')::date" if day else "hour"
    deltas = (f"SELECT {b} AS b, metric, dims::jsonb, key_id, quantity, amount_micros, events FROM usage_rollup_deltas"
              f" WHERE {cond} AND {b} >= $2 AND {b} < $3")
    group = ", ".join(str(i + 1) for i in range(len(cols)))
    sql = (f"SELECT {', '.join(cols)}, sum(quantity)::int8 AS quantity, sum(amount_micros)::int8 AS amount_micros,"
           f" sum(events)::int8 AS events FROM ({rollup} UNION ALL {deltas}) r"
           + (" LEFT JOIN api_keys k ON k.id = r.key_id LEFT JOIN apps a ON a.id = k.app_id"
              if "team" in path or "app" in path else "")
           + f" GROUP BY {group} ORDER BY {group}")
    return await conn.fetch(sql, *args)


async def key_usage(db: asyncpg.Pool, key_id: str, **options) -> dict:
    """One API key's usage: its customer's rollups, only the key's rows."""
    row = None
    if known_id(key_id):
        async with db.acquire() as conn:
            row = await conn.fetchrow("SELECT customer_id FROM api_keys WHERE id = $1", key_id)
    if row is None:
        raise NotFound("key_id", f"no API key {key_id!r}")
    return await customer_usage(db, row["customer_id"], key_id=key_id, **options)
