"""Stage 6, route: where the step's total is collected.

prepaid: all to the wallet (the enforcer's hold already reserved it; the balance may still go
negative, it is not refused after the fact). postpaid: all to the invoice. hybrid: the wallet
first, up to what is available, the remainder to the invoice. A negative total (a volume tier
repricing earlier units) is a credit: to the wallet in prepaid, to the invoice otherwise, so a
hybrid credit never turns invoiced usage into prepaid money.
"""
from __future__ import annotations

from tollgate.rating.stages.context import RatingContext


def split(mode: str, total_micros: int, wallet_available_micros: int) -> tuple[int, int]:
    """(to wallet, to invoice); they add up to total_micros."""
    if mode == "prepaid":
        return total_micros, 0
    if mode == "postpaid":
        return 0, total_micros
    if mode == "hybrid":
        wallet = min(max(0, wallet_available_micros), max(0, total_micros))
        return wallet, total_micros - wallet
    raise ValueError(f"unknown billing mode {mode!r}")


def run(ctx: RatingContext) -> RatingContext:
    ctx.wallet_micros, ctx.invoice_micros = split(ctx.effective_billing_mode, ctx.total_micros,
                                                  ctx.wallet_available_micros)
    return ctx
