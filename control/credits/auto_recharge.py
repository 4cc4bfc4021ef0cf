"""Low-balance auto-recharge: per-customer settings (a threshold and an amount); when the wallet's
balance is below the threshold, a `wallet.recharge_requested` alert (tollgate.alerts: delivered
as a webhook and a bus event) asks the provider's payment system to charge the customer and top
the wallet up. We charge no cards: the payload says what to top up and with which top-up id, so
the payment system's top-up is idempotent (POST /admin/customers/{id}/wallet/topups with it).

Once until the balance recovers: a request clears `armed`; the balance back at or above the
threshold (the top-up, or any other credit) arms it again. Each request has its own number
(`requests`), the alert's period is `recharge-<n>`: the alerts table's uniqueness makes it fire
once, and two control processes polling at once raise it once (the UPDATE ... WHERE armed).

Where it is evaluated: here, in the control process, polling every second (control.service),
not in the rater. The poll costs one query and one pipelined GET per 1,000 enabled customers a
second, whatever the event rate, and adds nothing to the rating transaction; it also sees every
way a balance falls (rating, debit adjustments, grant expiries), which the rater alone does not.
The price is up to a second of delay, against a payment that takes seconds anyway. The balance
compared is the wallet (holds are estimates, not money spent). Nothing is evaluated while Redis
has no complete projection (a lost Redis reads as empty wallets: that is not a low balance).
"""
from __future__ import annotations

import hashlib

import asyncpg
from redis.asyncio import Redis

from control.errors import InvalidInput
from control.fields import iso, money_micros
from control.lookup import require_customer
from tollgate.alerts import raise_many
from tollgate.keys import PROJECTION_MARKER, CustomerKeys
from tollgate.money import format_micros

KIND = "wallet.recharge_requested"
CHUNK = 1000  # customers per Redis round trip


def _view(r: asyncpg.Record | None, customer_id: str) -> dict:
    if r is None:
        return {"customer_id": customer_id, "enabled": False, "threshold": None, "amount": None,
                "armed": None, "requests": 0, "updated_at": None}
    return {"customer_id": customer_id, "enabled": r["enabled"], "threshold": format_micros(r["threshold_micros"]),
            "amount": format_micros(r["amount_micros"]), "armed": r["armed"], "requests": r["requests"],
            "updated_at": iso(r["updated_at"])}


async def get_settings(db: asyncpg.Pool, customer_id: str) -> dict:
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        row = await conn.fetchrow("SELECT * FROM wallet_auto_recharge WHERE customer_id = $1", customer_id)
    return _view(row, customer_id)


async def put_settings(db: asyncpg.Pool, customer_id: str, threshold: object, amount: object,
                       enabled: object = None) -> dict:
    """Set (replace) the settings. The request state (armed, the count) is kept."""
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidInput("enabled", "must be true or false")
    threshold_micros = money_micros(threshold, "threshold", positive=True)
    amount_micros = money_micros(amount, "amount", positive=True)
    async with db.acquire() as conn, conn.transaction():
        c = await require_customer(conn, customer_id)
        if c["billing_mode"] == "postpaid":
            raise InvalidInput("customer_id", "auto-recharge needs a prepaid or hybrid customer (this one is postpaid)")
        row = await conn.fetchrow(
            """INSERT INTO wallet_auto_recharge (customer_id, enabled, threshold_micros, amount_micros)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (customer_id) DO UPDATE SET enabled = $2, threshold_micros = $3, amount_micros = $4,
                   updated_at = now()
               RETURNING *""", customer_id, True if enabled is None else enabled, threshold_micros, amount_micros)
    return _view(row, customer_id)


def recharge_topup_id(customer_id: str, n: int) -> str:
    """The top-up id a request suggests: the same for a redelivered alert, another for the next."""
    return "rch_" + hashlib.sha256(f"{customer_id}\x00{n}".encode()).hexdigest()[:24]


async def _balances(redis: Redis, customer_ids: list[str]) -> dict[str, int] | None:
    """Wallets of these customers, or None if Redis has no complete projection around the read (the
    marker's generation the same before and after: no loss and no rebuild in between)."""
    before = await redis.get(PROJECTION_MARKER)
    if before is None:
        return None
    out: dict[str, int] = {}
    for i in range(0, len(customer_ids), CHUNK):
        part = customer_ids[i:i + CHUNK]
        async with redis.pipeline(transaction=False) as p:  # a cluster pipeline splits it by node
            for c in part:
                p.get(CustomerKeys(c).wallet)
            values = await p.execute()
        out.update((c, int(v or 0)) for c, v in zip(part, values))
    return out if await redis.get(PROJECTION_MARKER) == before else None


async def check(db: asyncpg.Pool, redis: Redis) -> list[str]:
    """One poll: raise the requests that are due, arm again those whose balance recovered. The ids
    of the alerts raised."""
    rows = await db.fetch(
        """SELECT a.customer_id, a.threshold_micros, a.armed FROM wallet_auto_recharge a
           JOIN customers c ON c.id = a.customer_id
           WHERE a.enabled AND c.billing_mode <> 'postpaid' AND c.status <> 'archived'""")
    if not rows:
        return []
    balances = await _balances(redis, [r["customer_id"] for r in rows])
    if balances is None:
        return []
    low = [r["customer_id"] for r in rows if r["armed"] and balances[r["customer_id"]] < r["threshold_micros"]]
    recovered = [r["customer_id"] for r in rows if not r["armed"] and balances[r["customer_id"]] >= r["threshold_micros"]]
    raised: list[str] = []
    async with db.acquire() as conn, conn.transaction():
        if recovered:
            await conn.execute("UPDATE wallet_auto_recharge SET armed = true WHERE customer_id = ANY($1::text[])"
                               " AND NOT armed", recovered)
        if low:
            due = await conn.fetch(
                """UPDATE wallet_auto_recharge a SET armed = false, requests = requests + 1
                   FROM customers c JOIN plans p ON p.id = c.plan_id
                   WHERE a.customer_id = ANY($1::text[]) AND a.armed AND a.enabled AND c.id = a.customer_id
                   RETURNING a.customer_id, a.threshold_micros, a.amount_micros, a.requests,
                             upper(coalesce(p.document->>'currency', 'USD')) AS currency""", low)
            raised = await raise_many(conn, [_alert(r, balances[r["customer_id"]]) for r in due])
    return raised


def _alert(r: asyncpg.Record, balance: int) -> tuple:
    cid, n = r["customer_id"], r["requests"]
    topup_id = recharge_topup_id(cid, n)
    amount = format_micros(r["amount_micros"])
    payload = {"customer_id": cid, "balance": format_micros(balance), "threshold": format_micros(r["threshold_micros"]),
               "amount": amount, "currency": r["currency"], "request": n, "topup_id": topup_id,
               "topup": {"method": "POST", "path": f"/admin/customers/{cid}/wallet/topups",
                         "body": {"id": topup_id, "amount": amount}}}
    return (cid, KIND, format_micros(r["threshold_micros"]), f"recharge-{n}", payload, None)

