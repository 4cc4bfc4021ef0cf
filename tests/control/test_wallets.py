import asyncio

import pytest

import lua
from control.accounts import wallets
from control.errors import Conflict, InvalidInput, NotFound
from tests.control.conftest import uid
from tollgate.keys import CustomerKeys


async def test_topup_is_idempotent_in_postgres_and_redis(pg, redis, customer_id):
    tid = uid("top")
    first = await wallets.topup(pg, redis, customer_id, "10.00", topup_id=tid, note="card 4242")
    again = await wallets.topup(pg, redis, customer_id, "10.00", topup_id=tid)
    assert (first["credited"], first["balance"], first["amount"]) == (True, "10.00", "10.00")
    assert (again["credited"], again["balance"]) == (False, "10.00")

    rows = await pg.fetch("SELECT * FROM wallet_transactions WHERE id = $1", tid)
    assert len(rows) == 1 and rows[0]["amount_micros"] == 10_000_000 and rows[0]["note"] == "card 4242"
    keys = CustomerKeys(customer_id)
    assert await redis.get(keys.wallet) == b"10000000"
    assert await redis.ttl(keys.topup(tid)) > 30 * 24 * 3600


async def test_concurrent_retries_credit_once(pg, redis, customer_id):
    tid = uid("top")
    results = await asyncio.gather(*(wallets.topup(pg, redis, customer_id, "3.50", topup_id=tid) for _ in range(6)))
    assert sum(r["credited"] for r in results) == 1
    assert await redis.get(CustomerKeys(customer_id).wallet) == b"3500000"
    assert await pg.fetchval("SELECT count(*) FROM wallet_transactions WHERE customer_id = $1", customer_id) == 1


async def test_credit_that_lost_its_commit_is_not_repeated(pg, redis, customer_id):
    """Redis was credited but the PostgreSQL commit was lost: the retry records it, credits nothing."""
    tid = uid("top")
    keys = CustomerKeys(customer_id)
    await redis.register_script(lua.load("topup").source)(keys=[keys.wallet, keys.topup(tid)], args=[2_000_000, 3600])
    r = await wallets.topup(pg, redis, customer_id, "2", topup_id=tid)
    assert (r["credited"], r["balance"]) == (False, "2.00")
    assert await pg.fetchval("SELECT amount_micros FROM wallet_transactions WHERE id = $1", tid) == 2_000_000


async def test_generated_ids_add_up_exactly(pg, redis, customer_id):
    a = await wallets.topup(pg, redis, customer_id, "0.000001")
    b = await wallets.topup(pg, redis, customer_id, 5)
    assert a["id"] != b["id"] and a["id"].startswith("top_")
    assert b["balance"] == "5.000001"
    w = await wallets.show_wallet(pg, redis, customer_id)
    assert (w["balance"], w["topups_total"], w["topups"], w["available"]) == ("5.000001", "5.000001", 2, "5.000001")


async def test_reusing_an_id_for_something_else_conflicts(pg, redis, customer_id, plan_id):
    tid = uid("top")
    await wallets.topup(pg, redis, customer_id, "1.00", topup_id=tid)
    with pytest.raises(Conflict) as err:
        await wallets.topup(pg, redis, customer_id, "2.00", topup_id=tid)
    assert err.value.field == "id"
    assert await redis.get(CustomerKeys(customer_id).wallet) == b"1000000"


@pytest.mark.parametrize(("amount", "topup_id"), [
    ("0", None), ("-5", None), ("ten", None), (1.5, None), ("1.0000001", None), (None, None), ("", None),
    ("1000000000.01", None), ("NaN", None), ("1.00", "has space"),
])
async def test_bad_input_names_the_field(pg, redis, customer_id, amount, topup_id):
    with pytest.raises(InvalidInput) as err:
        await wallets.topup(pg, redis, customer_id, amount, topup_id=topup_id)
    assert err.value.field == ("id" if topup_id else "amount")
    assert await redis.get(CustomerKeys(customer_id).wallet) is None


async def test_unknown_customer(pg, redis):
    with pytest.raises(NotFound) as err:
        await wallets.topup(pg, redis, "cus_nobody", "1.00")
    assert err.value.field == "customer_id"
    assert await redis.get(CustomerKeys("cus_nobody").wallet) is None
    with pytest.raises(NotFound):
        await wallets.show_wallet(pg, redis, "cus_nobody")
