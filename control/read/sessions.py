"""A customer's agent sessions (rater.sessions): open and closed, what they measured and what
they were billed; one session with the events it was made of and its ledger lines (its billable
event's, and those of events rated alone after it closed). Index reads only: agent_sessions by
(customer, first_ts), agent_session_events by its key, ledger_lines by (customer, session_id)."""
from __future__ import annotations

import asyncpg
import orjson

from control.errors import InvalidInput, NotFound
from control.lookup import known_id, require_customer
from tollgate.money import format_micros
from tollgate.rating.sessions import billable_id

STATUSES = ("open", "closed")
MAX_EVENTS = 1000  # events and ledger lines listed with one session at most (then `truncated`)


def _iso(ts) -> str | None:
    return None if ts is None else ts.isoformat()


def _summary(r) -> dict:
    closed = r["status"] == "closed"
    return {"session_id": r["session_id"], "status": r["status"], "key_id": r["key_id"],
            "first_ts": _iso(r["first_ts"]), "last_ts": _iso(r["last_ts"]),
            "idle_at": None if closed else _iso(r["idle_at"]), "period": r["period"],
            "dimensions": orjson.loads(r["dimensions"]), "measurements": orjson.loads(r["measurements"]),
            "event_count": r["event_count"],
            # the billable session's charge; null while open (billed at the close)
            "amount": format_micros(r["amount_micros"]) if closed else None,
            "cost": format_micros(r["cost_micros"]) if closed else None,  # what it cost the provider
            "billable_event_id": billable_id(r["customer_id"], r["session_id"]) if closed else None,
            "close_reason": r["close_reason"], "closed_at": _iso(r["closed_at"])}


async def list_sessions(db: asyncpg.Pool, customer_id: str, *, status: str | None = None,
                        after: str | None = None, limit: int = 100) -> dict:
    """Newest first (by first event time); page with `after` = the last session_id of a page."""
    if status is not None and status not in STATUSES:
        raise InvalidInput("status", f"one of {', '.join(STATUSES)}")
    if after is not None and not known_id(after):
        raise InvalidInput("after", "a session id")
    async with db.acquire() as conn:
        await require_customer(conn, customer_id, "id")
        rows = await conn.fetch(
            """SELECT * FROM agent_sessions s WHERE customer_id = $1 AND ($2::text IS NULL OR status = $2)
                 AND ($3::text IS NULL OR (first_ts, session_id) < (
                     SELECT first_ts, session_id FROM agent_sessions WHERE customer_id = $1 AND session_id = $3))
               ORDER BY first_ts DESC, session_id DESC LIMIT $4""",
            customer_id, status, after, limit)
    found = [_summary(r) for r in rows]
    return {"sessions": found, "next_after": found[-1]["session_id"] if len(found) == limit else None}


async def get_session(db: asyncpg.Pool, customer_id: str, session_id: str) -> dict:
    if not known_id(session_id):
        raise NotFound("session_id", f"no session {session_id!r}")
    async with db.acquire() as conn:
        await require_customer(conn, customer_id, "id")
        row = await conn.fetchrow("SELECT * FROM agent_sessions WHERE customer_id = $1 AND session_id = $2",
                                  customer_id, session_id)
        lines = await conn.fetch(
            "SELECT * FROM ledger_lines WHERE customer_id = $1 AND session_id = $2 ORDER BY event_id, line_no LIMIT $3",
            customer_id, session_id, MAX_EVENTS + 1)
        if row is None and not lines:
            raise NotFound("session_id", f"no session {session_id!r}")
        events = await conn.fetch(
            "SELECT * FROM agent_session_events WHERE customer_id = $1 AND session_id = $2 ORDER BY ts, event_id"
            " LIMIT $3", customer_id, session_id, MAX_EVENTS + 1)
    # A session_id on a plan without sessions is attribution only: its lines, and no session row.
    out = _summary(row) if row is not None else {"session_id": session_id, "status": "not_aggregated"}
    out["events"] = [{"event_id": r["event_id"], "event_type": r["event_type"], "ts": _iso(r["ts"]),
                      "measurements": orjson.loads(r["measurements"]), "handled": r["handled"]}
                     for r in events[:MAX_EVENTS]]
    out["ledger_lines"] = [
        {"event_id": r["event_id"], "line_no": r["line_no"], "kind": r["kind"], "charge_id": r["charge_id"],
         "metric": r["metric"], "dimension_key": r["dimension_key"], "quantity": r["quantity"],
         "unit_price": None if r["unit_price"] is None else str(r["unit_price"]),
         "amount": format_micros(r["amount_micros"]), "period": r["period"]} for r in lines[:MAX_EVENTS]]
    out["ledger_total"] = format_micros(sum(r["amount_micros"] for r in lines[:MAX_EVENTS]))
    out["truncated"] = len(events) > MAX_EVENTS or len(lines) > MAX_EVENTS
    return out
