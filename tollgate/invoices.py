"""Invoices as stored by the period close (rater.periods): their views, and each line's sources.

Shared by the rater (`tollgate periods invoice`, the close's summary) and the control plane's read
API (list, get, sources, and the preview, which describes its lines the way the close does).
"""
from __future__ import annotations

from tollgate.money import format_micros


def describe(kind: str, charge_id: str, metric: str | None = None, dim: str | None = None,
             other_period: str | None = None) -> str:
    """An invoice line's description, from what it sums (`other_period`: where units carried in
    came from, or carried out go)."""
    what = {"usage": "usage", "metered": "metered (not billed)", "percentage": "percentage",
            "flat": "recurring fee", "minimum": "minimum true-up", "discount": "discounts", "tax": "tax",
            "rollover": "included units carried in, credit for usage rated before",
            "carried_in": "included units carried in" + (f" from {other_period}" if other_period else ""),
            "carried_out": "unused included units carried" + (f" to {other_period}" if other_period else " out"),
            }.get(kind, kind)
    name = charge_id if not metric or metric == charge_id else f"{charge_id} ({metric})"
    return f"{name}: {what}" + ("" if not dim or dim == "default" else f" [{dim}]")


def summary(row) -> dict:
    """An invoices row, money as decimal strings."""
    return {"invoice_id": row["id"], "customer_id": row["customer_id"], "period": row["period"],
            "subtotal": format_micros(row["subtotal_micros"]), "discount": format_micros(row["discount_micros"]),
            "tax": format_micros(row["tax_micros"]), "total": format_micros(row["total_micros"]),
            "prepaid": format_micros(row["prepaid_micros"]), "amount_due": format_micros(row["amount_due_micros"])}


async def invoice(conn, invoice_id: str) -> dict | None:
    """An invoice with its lines; None if there is no such invoice."""
    row = await conn.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    if row is None:
        return None
    lines = await conn.fetch("SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY line_no", invoice_id)
    return {**summary(row), "currency": row["currency"], "billing_mode": row["billing_mode"],
            "status": row["status"], "closed_at": row["closed_at"].isoformat(),
            "lines": [{"line_no": r["line_no"], "kind": r["kind"], "description": r["description"],
                       "charge_id": r["charge_id"], "metric": r["metric"], "dimension_key": r["dimension_key"],
                       "quantity": str(r["quantity"]), "amount": format_micros(r["amount_micros"]),
                       "ledger_lines": r["ledger_lines"]} for r in lines]}


async def line_sources(conn, invoice_id: str, line_no: int, limit: int | None = None,
                       after: tuple[str, int] | None = None) -> list[dict] | None:
    """The ledger lines an invoice line sums, each with its event and correlation_id, in
    (event_id, line_no) order, after `after` (paging); None if there is no such invoice line.
    A line that sums no ledger lines (recurring fee, prepaid) has none."""
    inv = await conn.fetchrow(
        """SELECT i.customer_id, i.period, l.charge_id, l.metric, l.dimension_key, l.ledger_kinds
           FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id WHERE i.id = $1 AND l.line_no = $2""",
        invoice_id, line_no)
    if inv is None:
        return None
    if not inv["ledger_kinds"]:
        return []
    ev, ln = after or ("", -1)
    rows = await conn.fetch(
        """SELECT event_id, line_no, correlation_id, quantity, amount_micros FROM ledger_lines
           WHERE customer_id = $1 AND period = $2 AND kind = ANY($3::text[]) AND charge_id = $4
             AND metric IS NOT DISTINCT FROM $5 AND dimension_key = $6 AND (event_id, line_no) > ($7, $8)
           ORDER BY event_id, line_no""" + ("" if limit is None else f" LIMIT {int(limit)}"),
        inv["customer_id"], inv["period"], list(inv["ledger_kinds"]), inv["charge_id"], inv["metric"],
        inv["dimension_key"], ev, ln)
    return [dict(r) for r in rows]
