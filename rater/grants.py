"""Credit grants in the rating transaction: what the wallet paid for the events of a transaction is
taken from their customers' live grants (promotional before purchased, see tollgate.credit_grants),
one statement per transaction, committed with the events' processed_events rows, so a replayed
event spends no grant twice. Customers whose wallet paid nothing (postpaid) cost nothing here.
"""
from __future__ import annotations

from collections.abc import Iterable

from rater.ledger import Processed
from tollgate.credit_grants import spend


async def spend_grants(conn, rows: Iterable[Processed]) -> None:
    """Inside the transaction that inserts `rows`: each customer's net wallet payment."""
    paid: dict[str, int] = {}
    for p in rows:
        if p.wallet_micros:
            paid[p.customer_id] = paid.get(p.customer_id, 0) + p.wallet_micros
    await spend(conn, paid)
