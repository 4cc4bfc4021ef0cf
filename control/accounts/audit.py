"""The audit trail of customer changes: who (which token), when, what, before and after.

Written by control.accounts.lifecycle inside the change's own transaction: a change without its audit row
cannot commit, and a rolled-back change leaves none. Read with GET /admin/customers/{id}/audit
or `tollgate customers audit`.
"""
from __future__ import annotations

import getpass
import hashlib

import asyncpg
import orjson

from control.errors import InvalidInput
from control.fields import iso
from control.lookup import require_customer

MAX_PAGE = 1000


def token_actor(token: str) -> str:
    """A stable name for an admin token that does not reveal it: the first 8 hex of its sha256."""
    return "admin:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def cli_actor() -> str:
    """The CLI talks to PostgreSQL directly, with no token: the operating-system user."""
    try:
        return "cli:" + getpass.getuser()
    except Exception:  # no user name in this environment (a container without /etc/passwd entry)
        return "cli:unknown"


async def record(conn: asyncpg.Connection, customer_id: str, actor: str, action: str, version: int, period: str,
                 before: dict, after: dict, *, repriced: bool = False) -> None:
    await conn.execute(
        """INSERT INTO customer_audit (customer_id, actor, action, version, period, repriced, before, after)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)""",
        customer_id, actor, action, version, period, repriced, orjson.dumps(before).decode(), orjson.dumps(after).decode(),
    )


async def list_audit(db: asyncpg.Pool, customer_id: str, *, before_id: int | None = None, limit: int = 100) -> list[dict]:
    """Newest first; page with `before_id` = the last id seen."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            """SELECT * FROM customer_audit WHERE customer_id = $1 AND ($2::bigint IS NULL OR id < $2)
               ORDER BY id DESC LIMIT $3""", customer_id, before_id, limit)
    return [view(r) for r in rows]


def view(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "customer_id": row["customer_id"], "at": iso(row["at"]), "actor": row["actor"],
            "action": row["action"], "version": row["version"], "period": row["period"],
            "before": orjson.loads(row["before"]), "after": orjson.loads(row["after"])}
