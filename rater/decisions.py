"""Counting the enforcer's decisions (table decision_counts, migration 0018): per customer, hour,
decision, reason and deciding level, one upsert per batch, in the transaction that records the
batch's placed holds. At least once (a redelivered batch counts again): these are operator
figures for the console, not money."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone

_REASON_MAX = 64


def _hour(ts: object, now: datetime) -> datetime:
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
            return dt.replace(minute=0, second=0, microsecond=0)
        except ValueError:
            pass
    return now.replace(minute=0, second=0, microsecond=0)


def _text(v: object, default: str) -> str:
    return v[:_REASON_MAX] if isinstance(v, str) and v else default


async def record_counts(conn, decisions: Iterable[tuple[str, dict]]) -> None:
    """(customer id, decision event body) pairs: their counts added, one statement."""
    now = datetime.now(timezone.utc)
    counts = Counter((cid, _hour(b.get("timestamp"), now), b.get("decision", "ALLOW"),
                      _text(b.get("reason"), "ok"), _text(b.get("level"), "")) for cid, b in decisions
                     if b.get("decision", "ALLOW") in ("ALLOW", "DENY"))
    if not counts:
        return
    keys = list(counts)
    await conn.execute(
        "INSERT INTO decision_counts AS d (customer_id, hour, decision, reason, level, count)"
        " SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int8[])"
        " ON CONFLICT (customer_id, hour, decision, reason, level) DO UPDATE SET count = d.count + excluded.count",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys], [k[4] for k in keys],
        [counts[k] for k in keys])
