"""A change of a prepaid wallet outside rating (credit grants, adjustments, grant expiries): one
`wallet_transactions` row and one run of lua/wallet_change.lua, inside the caller's PostgreSQL
transaction, as a top-up is (control.accounts.wallets): a committed row means the change happened, and the
script's marker (by transaction id) stops a retry from changing the balance twice, even when the
commit was lost after the script ran. `redis rebuild` sums the same rows, so the rebuilt wallet
includes every such change.
"""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

import lua
from control.accounts.wallets import MARKER_TTL_S
from tollgate.keys import CustomerKeys


class Refused(Exception):
    """The script refused a debit below its floor: nothing changed, the balance is `balance`."""

    def __init__(self, balance: int):
        super().__init__(f"balance {balance}")
        self.balance = balance


@dataclass(frozen=True, slots=True)
class Change:
    new: bool  # the row is new in PostgreSQL (False: a retry of a committed change)
    changed: bool  # the script changed the balance now (False: a retry, or a commit lost after it ran)
    balance: int  # the balance after, micros
    row: asyncpg.Record  # the wallet_transactions row (the earlier one for a retry)


async def record_change(conn: asyncpg.Connection, redis: Redis, customer_id: str, tx_id: str, kind: str,
                        micros: int, *, note: str | None = None, grant_id: str | None = None,
                        floor: int | None = None) -> Change:
    """Record and apply `micros` (signed). `floor`: refuse (Refused, nothing written) a debit that
    would leave less. A retry (the id committed before) changes nothing: the caller compares
    `row` with what it was asked."""
    row = await conn.fetchrow(
        """INSERT INTO wallet_transactions (id, customer_id, kind, amount_micros, note, grant_id)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING *""",
        tx_id, customer_id, kind, micros, note, grant_id)
    keys = CustomerKeys(customer_id)
    if row is None:
        prior = await conn.fetchrow("SELECT * FROM wallet_transactions WHERE id = $1", tx_id)
        return Change(False, False, int(await redis.get(keys.wallet) or 0), prior)
    # the marker shares the top-ups' key space: wallet_transactions ids are one namespace
    changed, balance = await redis.register_script(lua.load("wallet_change").source)(
        keys=[keys.wallet, keys.topup(tx_id)], args=[micros, MARKER_TTL_S, "" if floor is None else floor])
    if int(changed) < 0:
        raise Refused(int(balance))
    return Change(True, bool(changed), int(balance), row)
