"""Raising an alert: one row in `alerts` (rater/migrations/0008_alerts.sql), written inside the
raiser's own transaction, so an alert exists exactly when what crossed its threshold committed.
Delivery (webhooks, bus events) is the control plane's; `pg_notify` wakes it at the commit.

Kinds (the `type` of the delivered event): `spend.threshold` (threshold: percent of the cap),
`budget.threshold` (threshold: `<level>:<id>:<percent>` of a team/app/agent/key budget),
`wallet.balance_low` (threshold: the amount), `tier.promoted` (threshold: the new tier),
`commit.at_risk`, `usage.spike`, `wallet.recharge_requested`.
"""
from __future__ import annotations

import secrets
from typing import Any

import orjson

NOTIFY_CHANNEL = "tg_alerts"

_INSERT = """
INSERT INTO alerts (id, customer_id, kind, threshold, period, payload, source_event_id)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (customer_id, kind, threshold, period) DO NOTHING
RETURNING id
"""


def new_alert_id() -> str:
    return "alt_" + secrets.token_hex(10)


async def raise_alert(conn, customer_id: str, kind: str, threshold: str, period: str,
                      payload: dict[str, Any], source_event_id: str | None = None) -> str | None:
    """The new alert's id, or None if this (customer, kind, threshold, period) already fired."""
    alert_id = await conn.fetchval(_INSERT, new_alert_id(), customer_id, kind, threshold, period,
                                   orjson.dumps(payload).decode(), source_event_id)
    if alert_id is not None:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, alert_id)
    return alert_id


async def raise_many(conn, rows: list[tuple[str, str, str, str, dict[str, Any], str | None]]) -> list[str]:
    """Several (customer_id, kind, threshold, period, payload, source_event_id) in one statement:
    the ids of those that are new (the rater raises a batch's alerts at once)."""
    if not rows:
        return []
    ids = [new_alert_id() for _ in rows]
    new = await conn.fetch(
        "INSERT INTO alerts (id, customer_id, kind, threshold, period, payload, source_event_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::text[])"
        " ON CONFLICT (customer_id, kind, threshold, period) DO NOTHING RETURNING id",
        ids, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
        [orjson.dumps(r[4]).decode() for r in rows], [r[5] for r in rows])
    out = [r["id"] for r in new]
    if out:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, ",".join(out)[:7900])
    return out
