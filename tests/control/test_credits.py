"""Credits against real PostgreSQL and Redis: adjustments, credit grants and their expiry,
auto-recharge requests."""
import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest

import lua
from control.credits import adjustments, auto_recharge, grants as credit_grants
from control.accounts import wallets
from control.credits.worker import tick
from control.errors import Conflict, InvalidInput
from tests.control.conftest import uid
from tollgate.keys import PROJECTION_MARKER, CustomerKeys


def _in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


async def _wallet(redis, customer_id: str) -> int:
    return int(await redis.get(CustomerKeys(customer_id).wallet) or 0)


async def _rebuilt_wallet(pg, customer_id: str) -> int:
    """What `redis rebuild` would write: wallet transactions less what rating took."""
    return await pg.fetchval(
        "SELECT (SELECT coalesce(sum(amount_micros), 0) FROM wallet_transactions WHERE customer_id = $1)"
        " - (SELECT coalesce(sum(wallet_micros), 0) FROM processed_events WHERE customer_id = $1)", customer_id)


async def _remaining(pg, *grant_ids: str) -> list[int]:
    rows = {r["id"]: r["remaining_micros"] for r in await pg.fetch(
        "SELECT id, remaining_micros FROM credit_grants WHERE id = ANY($1::text[])", list(grant_ids))}
    return [rows[g] for g in grant_ids]


# --------------------------------------------------------------------------- adjustments


async def test_adjustment_is_idempotent_and_conflicts_on_other_content(pg, redis, customer_id):
    aid = uid("adj")
    first = await adjustments.adjust(pg, redis, customer_id, "4.25", "goodwill: outage 12 Nov", adjustment_id=aid)
    again = await adjustments.adjust(pg, redis, customer_id, "4.25", "goodwill: outage 12 Nov", adjustment_id=aid)
    assert (first["applied"], first["balance"], first["amount"]) == (True, "4.25", "4.25")
    assert (again["applied"], again["balance"]) == (False, "4.25")
    for amount, reason in (("4.26", "goodwill: outage 12 Nov"), ("4.25", "another reason"), ("-4.25", "goodwill: outage 12 Nov")):
        with pytest.raises(Conflict) as err:
            await adjustments.adjust(pg, redis, customer_id, amount, reason, adjustment_id=aid)
        assert err.value.field == "id"
    results = await asyncio.gather(*(adjustments.adjust(pg, redis, customer_id, "-1", "fee", adjustment_id=aid + "d")
                                     for _ in range(5)))
    assert sum(r["applied"] for r in results) == 1
    assert await _wallet(redis, customer_id) == 3_250_000 == await _rebuilt_wallet(pg, customer_id)
    listed = await adjustments.list_adjustments(pg, customer_id)
    assert [(a["amount"], a["reason"]) for a in listed] == [("4.25", "goodwill: outage 12 Nov"), ("-1.00", "fee")]


async def test_debit_below_zero_needs_allow_negative(pg, redis, customer_id):
    await wallets.topup(pg, redis, customer_id, "2.00")
    with pytest.raises(Conflict) as err:
        await adjustments.adjust(pg, redis, customer_id, "-2.000001", "chargeback")
    assert err.value.field == "amount"
    assert await _wallet(redis, customer_id) == 2_000_000
    assert await pg.fetchval("SELECT count(*) FROM wallet_transactions WHERE customer_id = $1 AND kind = 'adjustment'",
                             customer_id) == 0
    r = await adjustments.adjust(pg, redis, customer_id, "-3", "chargeback", allow_negative=True)
    assert (r["applied"], r["balance"], r["amount"]) == (True, "-1.00", "-3.00")
    assert await _rebuilt_wallet(pg, customer_id) == -1_000_000


@pytest.mark.parametrize(("amount", "reason", "extra", "field"), [
    ("0", "x", {}, "amount"), ("-0", "x", {}, "amount"), ("--1", "x", {}, "amount"), (1.5, "x", {}, "amount"),
    ("1", "", {}, "reason"), ("1", None, {}, "reason"), ("1", "x", {"adjustment_id": "a b"}, "id"),
    ("1", "x", {"allow_negative": "yes"}, "allow_negative"),
])
async def test_adjustment_bad_input_names_the_field(pg, redis, customer_id, amount, reason, extra, field):
    with pytest.raises(InvalidInput) as err:
        await adjustments.adjust(pg, redis, customer_id, amount, reason, **extra)
    assert err.value.field == field


# --------------------------------------------------------------------------- grants


async def test_debits_take_promotional_credit_before_purchased_then_top_ups(pg, redis, customer_id):
    await wallets.topup(pg, redis, customer_id, "3.00")
    bought = await credit_grants.create_grant(pg, redis, customer_id, "10", kind="purchased")
    promo_late = await credit_grants.create_grant(pg, redis, customer_id, "1", expires_at=_in(7200))
    promo = await credit_grants.create_grant(pg, redis, customer_id, "5", expires_at=_in(3600))
    assert (bought["priority"], promo["priority"], promo["balance"]) == (50, 10, "19.00")
    ids = (promo["id"], promo_late["id"], bought["id"])

    await adjustments.adjust(pg, redis, customer_id, "-5.5", "correction")  # promo (earliest expiry) then the next
    assert await _remaining(pg, *ids) == [0, 500_000, 10_000_000]
    await adjustments.adjust(pg, redis, customer_id, "-2.5", "correction")
    assert await _remaining(pg, *ids) == [0, 0, 8_000_000]
    w = await wallets.show_wallet(pg, redis, customer_id)
    assert w["balance"] == "11.00"
    assert [(g["id"], g["remaining"]) for g in w["credit_grants"]] == [(bought["id"], "8.00")]
    listed = await credit_grants.list_grants(pg, customer_id)
    assert [g["status"] for g in listed] == ["used", "used", "active"]


async def test_grant_is_idempotent(pg, redis, customer_id):
    gid, exp = uid("gr"), _in(600)
    a = await credit_grants.create_grant(pg, redis, customer_id, "7", grant_id=gid, expires_at=exp, note="launch")
    b = await credit_grants.create_grant(pg, redis, customer_id, "7", grant_id=gid, expires_at=exp)
    assert (a["credited"], b["credited"], b["balance"]) == (True, False, "7.00")
    with pytest.raises(Conflict):
        await credit_grants.create_grant(pg, redis, customer_id, "8", grant_id=gid, expires_at=exp)
    with pytest.raises(Conflict):
        await credit_grants.create_grant(pg, redis, customer_id, "7", grant_id=gid, expires_at=_in(900))
    rows = await pg.fetch("SELECT kind, amount_micros, grant_id FROM wallet_transactions WHERE customer_id = $1", customer_id)
    assert [tuple(r) for r in rows] == [("grant", 7_000_000, gid)]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"kind": "free"}, "kind"), ({"priority": 101}, "priority"), ({"priority": "1"}, "priority"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"), ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ({"expires_at": "tomorrow"}, "expires_at"), ({"expires_at": "9999-12-31T23:59:59-01:00"}, "expires_at"),
    ({"grant_id": "x y"}, "id"),
])
async def test_grant_bad_input_names_the_field(pg, redis, customer_id, kwargs, field):
    with pytest.raises(InvalidInput) as err:
        await credit_grants.create_grant(pg, redis, customer_id, "1", **kwargs)
    assert err.value.field == field
    assert await _wallet(redis, customer_id) == 0


async def test_expiry_removes_exactly_what_is_left_through_the_ledger(pg, redis, customer_id):
    await wallets.topup(pg, redis, customer_id, "1.00")
    g = await credit_grants.create_grant(pg, redis, customer_id, "5", expires_at=_in(0.6))
    keep = await credit_grants.create_grant(pg, redis, customer_id, "2", expires_at=_in(3600))
    await adjustments.adjust(pg, redis, customer_id, "-1.75", "usage correction")  # from g: 3.25 left
    assert await credit_grants.expire_due(pg, redis) == []  # not due yet
    await asyncio.sleep(0.7)
    # A crash after the Redis debit lost the commit: the next run records it and debits nothing more.
    k = CustomerKeys(customer_id)
    await redis.register_script(lua.load("wallet_change").source)(
        keys=[k.wallet, k.topup(credit_grants.expiry_tx_id(g["id"]))], args=[-3_250_000, 60, ""])
    done = await credit_grants.expire_due(pg, redis)
    assert [(d["id"], d["expired_amount"], d["status"], d["remaining"]) for d in done] == [(g["id"], "3.25", "expired", "0.00")]
    assert await credit_grants.expire_due(pg, redis) == []  # once
    assert await credit_grants.expire_grant(pg, redis, g["id"]) is None
    line = await pg.fetchrow("SELECT * FROM wallet_transactions WHERE grant_id = $1 AND kind = 'expiry'", g["id"])
    assert (line["amount_micros"], line["id"]) == (-3_250_000, f"expiry:{g['id']}")
    assert await _wallet(redis, customer_id) == 3_000_000 == await _rebuilt_wallet(pg, customer_id)  # 1 + 2 left
    assert await _remaining(pg, keep["id"]) == [2_000_000]


async def test_expired_credit_is_not_spent(pg, redis, customer_id):
    g = await credit_grants.create_grant(pg, redis, customer_id, "5", expires_at=_in(0.3))
    await wallets.topup(pg, redis, customer_id, "5")
    await asyncio.sleep(0.4)
    await adjustments.adjust(pg, redis, customer_id, "-1", "after the grant's time")  # paid by the top-up
    await credit_grants.expire_due(pg, redis)
    assert await _wallet(redis, customer_id) == 4_000_000 == await _rebuilt_wallet(pg, customer_id)
    assert (await credit_grants.list_grants(pg, customer_id))[0]["expired_amount"] == "5.00" == g["amount"]


# --------------------------------------------------------------------------- auto-recharge


async def _recharge_alerts(pg, customer_id: str) -> list:
    return await pg.fetch("SELECT * FROM alerts WHERE customer_id = $1 AND kind = 'wallet.recharge_requested'"
                          " ORDER BY raised_at", customer_id)


async def test_recharge_request_raised_once_until_the_balance_recovers(pg, redis, customer_id):
    """check() polls every customer of the (session-wide) database: count this one's alerts."""
    await wallets.topup(pg, redis, customer_id, "10")
    s = await auto_recharge.put_settings(pg, customer_id, "5", "20")
    assert (s["enabled"], s["threshold"], s["amount"], s["armed"]) == (True, "5.00", "20.00", True)

    await auto_recharge.check(pg, redis)
    assert await _recharge_alerts(pg, customer_id) == []
    await adjustments.adjust(pg, redis, customer_id, "-6", "spent")  # 4 < 5
    await auto_recharge.check(pg, redis)
    await auto_recharge.check(pg, redis)  # once while it stays low
    await tick(pg, redis)
    [a] = await _recharge_alerts(pg, customer_id)
    payload = orjson.loads(a["payload"])
    topup_id = payload["topup_id"]
    assert (a["threshold"], a["period"]) == ("5.00", "recharge-1")
    assert {k: payload[k] for k in ("balance", "threshold", "amount", "currency", "request")} == \
        {"balance": "4.00", "threshold": "5.00", "amount": "20.00", "currency": "USD", "request": 1}
    assert payload["topup"] == {"method": "POST", "path": f"/admin/customers/{customer_id}/wallet/topups",
                                "body": {"id": topup_id, "amount": "20.00"}}

    # The payment system tops up with the suggested id (twice: its retry credits once): armed again.
    for _ in range(2):
        await wallets.topup(pg, redis, customer_id, payload["amount"], topup_id=topup_id)
    await auto_recharge.check(pg, redis)
    assert len(await _recharge_alerts(pg, customer_id)) == 1
    assert (await auto_recharge.get_settings(pg, customer_id))["armed"] is True
    await adjustments.adjust(pg, redis, customer_id, "-20", "spent")  # 4 again
    await auto_recharge.check(pg, redis)
    await auto_recharge.check(pg, redis)
    assert [a["period"] for a in await _recharge_alerts(pg, customer_id)] == ["recharge-1", "recharge-2"]
    assert (await auto_recharge.get_settings(pg, customer_id))["requests"] == 2


async def test_two_pollers_at_once_raise_one_request(pg, redis, customer_id):
    await auto_recharge.put_settings(pg, customer_id, "5", "20")  # wallet 0: below
    await asyncio.gather(*(auto_recharge.check(pg, redis) for _ in range(4)))
    assert [a["period"] for a in await _recharge_alerts(pg, customer_id)] == ["recharge-1"]


async def test_recharge_waits_for_a_complete_projection_and_skips_disabled(pg, redis, customer_id):
    await auto_recharge.put_settings(pg, customer_id, "5", "20")
    await redis.delete(PROJECTION_MARKER)
    await auto_recharge.check(pg, redis)  # no marker: an empty Redis is not a low balance
    assert await _recharge_alerts(pg, customer_id) == []
    await redis.set(PROJECTION_MARKER, "test")
    await auto_recharge.put_settings(pg, customer_id, "5", "20", enabled=False)
    await auto_recharge.check(pg, redis)
    assert await _recharge_alerts(pg, customer_id) == []
    await auto_recharge.put_settings(pg, customer_id, "5", "20", enabled=True)
    await auto_recharge.check(pg, redis)
    assert len(await _recharge_alerts(pg, customer_id)) == 1


async def test_recharge_settings_validation(pg, redis, customer_id):
    assert (await auto_recharge.get_settings(pg, customer_id))["threshold"] is None
    for args, field in ((("0", "1"), "threshold"), (("1", "-1"), "amount"), (("1", "1", "yes"), "enabled")):
        with pytest.raises(InvalidInput) as err:
            await auto_recharge.put_settings(pg, customer_id, *args)
        assert err.value.field == field


async def test_redis_rebuild_restores_grants_adjustments_and_expiries(pg, redis, customer_id):
    from control.projection.rebuild import rebuild_locked

    await wallets.topup(pg, redis, customer_id, "2")
    await credit_grants.create_grant(pg, redis, customer_id, "3", expires_at=_in(0.2))
    await adjustments.adjust(pg, redis, customer_id, "-1.25", "fee")
    await asyncio.sleep(0.3)
    await credit_grants.expire_due(pg, redis)
    before = await _wallet(redis, customer_id)
    assert before == 2_000_000  # 2 + 3 - 1.25 (from the grant) - 1.75 (what was left of it)
    await redis.flushall()
    async with pg.acquire() as conn:
        await rebuild_locked(redis, conn)
    assert await _wallet(redis, customer_id) == before
