"""Reads shared by the services: a plan or customer by id, or a clear error naming the field."""
from __future__ import annotations

import asyncpg

from control.errors import NotFound
from tollgate.keys import ID_PATTERN
from tollgate.plans import Plan, plan_from_row


def known_id(value: object) -> bool:
    """Ids are validated on the way in, so anything else cannot exist (and never reaches SQL)."""
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


async def require_plan(conn: asyncpg.Connection, plan_id: str, field: str = "plan_id",
                       *, lock: bool = False, missing: type = NotFound) -> Plan:
    """`lock` takes a share lock so a concurrent `plans apply` waits until we have projected."""
    sql = "SELECT document FROM plans WHERE id = $1" + (" FOR SHARE" if lock else "")
    row = await conn.fetchrow(sql, plan_id) if known_id(plan_id) else None
    if row is None:
        raise missing(field, f"no plan {plan_id!r}")
    return plan_from_row(row)


async def require_customer(conn: asyncpg.Connection, customer_id: str, field: str = "customer_id",
                           *, missing: type = NotFound) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM customers WHERE id = $1", customer_id) if known_id(customer_id) else None
    if row is None:
        raise missing(field, f"no customer {customer_id!r}")
    return row
