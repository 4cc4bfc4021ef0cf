"""Invoices for reading: list a customer's, get one with its lines, and a line's sources down to
the correlation ids (what the period close wrote: rater.periods; views in tollgate.invoices)."""
from __future__ import annotations

import asyncpg

from control.errors import InvalidInput, NotFound
from control.lookup import known_id, require_customer
from tollgate import invoices
from tollgate.money import format_micros
from tollgate.periods import is_period

MAX_SOURCES = 1000


async def list_invoices(db: asyncpg.Pool, customer_id: str, *, after: str | None = None, limit: int = 100) -> list[dict]:
    """The customer's invoices, newest period first; `after`: the last period of the previous page."""
    if after is not None and not is_period(after):
        raise InvalidInput("after", "must be a period YYYYMM")
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            "SELECT * FROM invoices WHERE customer_id = $1 AND ($2::text IS NULL OR period < $2)"
            " ORDER BY period DESC LIMIT $3", customer_id, after, limit)
    return [{**invoices.summary(r), "currency": r["currency"], "status": r["status"],
             "closed_at": r["closed_at"].isoformat()} for r in rows]


async def get_invoice(db: asyncpg.Pool, invoice_id: str, customer_id: str | None = None) -> dict:
    """One invoice and its lines; `customer_id`: only if it is that customer's (customer access)."""
    inv = None
    if known_id(invoice_id):
        async with db.acquire() as conn:
            inv = await invoices.invoice(conn, invoice_id)
    if inv is None or (customer_id is not None and inv["customer_id"] != customer_id):
        raise NotFound("invoice_id", f"no invoice {invoice_id!r}")
    return inv


async def line_sources(db: asyncpg.Pool, invoice_id: str, line_no: int, *, after_event: str | None = None,
                       after_line: int = -1, limit: int = 100, customer_id: str | None = None) -> dict:
    """The ledger lines an invoice line sums (event, line, correlation id, quantity, amount), paged."""
    if not 1 <= limit <= MAX_SOURCES:
        raise InvalidInput("limit", f"must be 1..{MAX_SOURCES}")
    await get_invoice(db, invoice_id, customer_id)
    async with db.acquire() as conn:
        rows = await invoices.line_sources(conn, invoice_id, line_no, limit,
                                           None if after_event is None else (after_event, after_line))
    if rows is None:
        raise NotFound("line_no", f"invoice {invoice_id!r} has no line {line_no}")
    out = [{"event_id": r["event_id"], "line_no": r["line_no"], "correlation_id": r["correlation_id"],
            "quantity": r["quantity"], "amount": format_micros(r["amount_micros"])} for r in rows]
    nxt = {"after_event": out[-1]["event_id"], "after_line": out[-1]["line_no"]} if len(out) == limit else None
    return {"invoice_id": invoice_id, "line_no": line_no, "sources": out, "next": nxt}
