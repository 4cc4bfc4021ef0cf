"""Which credit grant paid: the spending order of a customer's grants, shared by the rater (what
the wallet paid for rated events) and the control plane (debit adjustments).

The Redis wallet is one number; PostgreSQL tracks what is left of each grant (credit_grants,
rater/migrations/0010_credits.sql). What the wallet pays is taken from the customer's live grants
(active, something left, not past expires_at) by priority (lowest number first: promotional
before purchased), then the earliest expiry (none = last), then the oldest; what the grants do
not cover comes from the rest of the wallet (top-ups and credit adjustments, spent last).

Callers hold the customer's rating lock group (tollgate.locks): the rater's lanes hold it around
the rating transaction, the control plane takes it for a transaction (`lock_customer`), so the
running sums below are never computed against a row another writer is changing.
"""
from __future__ import annotations

from collections.abc import Mapping

from tollgate.locks import LOCK_NAMESPACE, lock_group

# One statement for every customer of the call: the running sum of each customer's live grants
# in spending order says what lies before each grant; a grant takes what is left of the amount
# after those, at most its remainder.
_SPEND = """
WITH live AS (
    SELECT g.id, s.amount, g.remaining_micros AS remaining,
           sum(g.remaining_micros) OVER (PARTITION BY g.customer_id
               ORDER BY g.priority, g.expires_at NULLS LAST, g.created_at, g.id
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)::bigint - g.remaining_micros AS before
    FROM unnest($1::text[], $2::bigint[]) AS s(customer_id, amount)
    JOIN credit_grants g ON g.customer_id = s.customer_id
    WHERE g.customer_id = ANY($1::text[])  -- the index condition: only these customers' grants are read
      AND g.status = 'active' AND g.remaining_micros > 0 AND (g.expires_at IS NULL OR g.expires_at > now())
), taken AS (
    SELECT id, least(remaining, amount - before) AS t FROM live WHERE before < amount
)
UPDATE credit_grants g SET remaining_micros = g.remaining_micros - taken.t,
                           status = CASE WHEN g.remaining_micros = taken.t THEN 'used' ELSE g.status END
FROM taken WHERE g.id = taken.id
"""


async def spend(conn, amounts: Mapping[str, int]) -> None:
    """Take each customer's amount (micros the wallet paid) from its live grants, in one
    statement. Amounts <= 0 (nothing paid, or a credit back to the wallet) touch no grant: a
    credit goes to the rest of the wallet."""
    ids = [c for c, a in amounts.items() if a > 0]
    if ids:
        await conn.execute(_SPEND, ids, [amounts[c] for c in ids])


async def lock_customer(conn, customer_id: str) -> None:
    """The customer's rating lock group, for the current transaction (the control plane's writes
    of grants): waits for a rating lane that holds it to settle."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, lock_group(customer_id))
