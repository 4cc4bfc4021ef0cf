"""Dead letters for reading: the rater writes them (rater.dead_letters); its CLI and the control
plane's read API list them the same way."""
from __future__ import annotations

REASONS = ("unknown_customer", "unknown_metric", "invalid_value", "invalid_event", "rating_error")
STATUSES = ("open", "replayed", "discarded")


async def list_open(conn, *, reason: str | None = None, customer_id: str | None = None,
                    after_id: int = 0, limit: int = 100, status: str = "open") -> list[dict]:
    rows = await conn.fetch(
        """SELECT id, event_id, customer_id, reason, detail, status, attempts, created_at, replayed_at, raw
           FROM dead_letters
           WHERE status = $1 AND ($2::text IS NULL OR reason = $2) AND ($3::text IS NULL OR customer_id = $3)
             AND id > $4
           ORDER BY id LIMIT $5""",
        status, reason, customer_id, after_id, limit,
    )
    return [
        {**{k: r[k] for k in ("id", "event_id", "customer_id", "reason", "detail", "status", "attempts")},
         "created_at": r["created_at"].isoformat(),
         "replayed_at": r["replayed_at"].isoformat() if r["replayed_at"] else None,
         "raw": bytes(r["raw"]).decode("utf-8", "replace")}
        for r in rows
    ]
