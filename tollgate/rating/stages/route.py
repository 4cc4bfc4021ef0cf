"""Stage 6, route: where the step's total is collected.

prepaid: all to the wallet (the enforcer's hold already reserved it; the balance may still go
negative, it is not refused after the fact). postpaid: all to the invoice. hybrid: the wallet
first, up to what is available, the remainder to the invoice.

A negative total (a volume tier repricing earlier units) is a credit: to the wallet in prepaid,
to the invoice in postpaid. In hybrid it undoes what the period's earlier charges were routed
to: first the invoice, down to nothing due (a credit never turns invoiced usage into prepaid
money), then back to the wallet, at most what the wallet paid in the period (the wallet never
pays more than the period's charges, and is never credited money it did not pay). For that the
caller passes the period-to-date `invoice_due_micros` and `wallet_paid_micros` (the rater reads
them only for a hybrid credit: rater.pipeline); without them the credit goes to the invoice.
"""
from __future__ import annotations

from tollgate.rating.stages.context import RatingContext


def split(mode: str, total_micros: int, wallet_available_micros: int, *, wallet_paid_micros: int | None = None,
          invoice_due_micros: int | None = None) -> tuple[int, int]:
    """(to wallet, to invoice); they add up to total_micros."""
    if mode == "prepaid":
        return total_micros, 0
    if mode == "postpaid":
        return 0, total_micros
    if mode == "hybrid":
        if total_micros < 0 and wallet_paid_micros is not None and invoice_due_micros is not None:
            to_invoice = max(total_micros, -max(0, invoice_due_micros))
            to_wallet = max(total_micros - to_invoice, -max(0, wallet_paid_micros))
            return to_wallet, total_micros - to_wallet
        wallet = min(max(0, wallet_available_micros), max(0, total_micros))
        return wallet, total_micros - wallet
    raise ValueError(f"unknown billing mode {mode!r}")


def run(ctx: RatingContext) -> RatingContext:
    ctx.wallet_micros, ctx.invoice_micros = split(ctx.effective_billing_mode, ctx.total_micros,
                                                  ctx.wallet_available_micros,
                                                  wallet_paid_micros=ctx.wallet_paid_micros,
                                                  invoice_due_micros=ctx.invoice_due_micros)
    return ctx
