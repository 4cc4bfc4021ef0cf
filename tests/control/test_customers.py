import re

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from control.accounts import api_keys, customers, wallets
from control.errors import Conflict, InvalidInput, NotFound
from tests.control.conftest import uid
from tollgate.keys import CustomerKeys
from tollgate.local_services import free_port


async def test_create_with_defaults(pg, redis, plan_id):
    c = await customers.create_customer(pg, redis, name="  Acme Corp ", plan_id=plan_id)
    assert re.fullmatch(r"cus_[0-9a-f]{16}", c["id"])
    assert (c["name"], c["plan_id"], c["billing_mode"], c["tier"], c["spend_cap"]) == (
        "Acme Corp", plan_id, "prepaid", "free", None)
    row = await pg.fetchrow("SELECT * FROM customers WHERE id = $1", c["id"])
    assert (row["billing_mode"], row["tier"], row["spend_cap_micros"]) == ("prepaid", "free", None)
    assert await redis.hget(CustomerKeys(c["id"]).cfg, "plan") == plan_id.encode()


async def test_create_with_overrides(pg, redis, plan_id):
    cid = uid("cust")
    c = await customers.create_customer(pg, redis, name="Beta", plan_id=plan_id, customer_id=cid,
                                        billing_mode="postpaid", spend_cap="50.5")
    assert (c["id"], c["billing_mode"], c["spend_cap"]) == (cid, "postpaid", "50.50")
    assert await pg.fetchval("SELECT spend_cap_micros FROM customers WHERE id = $1", cid) == 50_500_000
    cfg = CustomerKeys(cid).cfg
    assert await redis.hget(cfg, "mode") == b"postpaid"
    assert await redis.hget(cfg, "cap.free") == b"50500000"
    assert await redis.hget(cfg, "cap.build") == b"101000000"  # the tier multiplier applies to an override too


@pytest.mark.parametrize(("kwargs", "field", "error"), [
    ({"plan_id": "no_such_plan"}, "plan_id", InvalidInput),
    ({"plan_id": "bad plan id"}, "plan_id", InvalidInput),
    ({"customer_id": "has space"}, "id", InvalidInput),
    ({"customer_id": "x" * 65}, "id", InvalidInput),
    ({"name": ""}, "name", InvalidInput),
    ({"name": None}, "name", InvalidInput),
    ({"billing_mode": "monthly"}, "billing_mode", InvalidInput),
    ({"spend_cap": 12.5}, "spend_cap", InvalidInput),
    ({"spend_cap": "-1"}, "spend_cap", InvalidInput),
    ({"spend_cap": "1.0000001"}, "spend_cap", InvalidInput),
    ({"spend_cap": "lots"}, "spend_cap", InvalidInput),
])
async def test_bad_input_names_the_field(pg, redis, plan_id, kwargs, field, error):
    cid = uid("cust")
    args = {"name": "Acme", "plan_id": plan_id, "customer_id": cid, **kwargs}
    with pytest.raises(error) as err:
        await customers.create_customer(pg, redis, **args)
    assert err.value.field == field and err.value.status == 422
    assert await pg.fetchval("SELECT count(*) FROM customers WHERE id = $1", cid) == 0


async def test_duplicate_id_conflicts(pg, redis, plan_id):
    cid = uid("cust")
    await customers.create_customer(pg, redis, name="A", plan_id=plan_id, customer_id=cid)
    with pytest.raises(Conflict) as err:
        await customers.create_customer(pg, redis, name="B", plan_id=plan_id, customer_id=cid)
    assert err.value.field == "id" and err.value.status == 409


async def test_not_created_when_redis_is_unreachable(pg, plan_id):
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    cid = uid("cust")
    with pytest.raises(redis.exceptions.ConnectionError):
        await customers.create_customer(pg, dead, name="A", plan_id=plan_id, customer_id=cid)
    await dead.aclose()
    assert await pg.fetchval("SELECT count(*) FROM customers WHERE id = $1", cid) == 0


async def test_get_shows_keys_and_wallet_from_both_stores(pg, redis, customer_id):
    await api_keys.create_api_key(pg, redis, customer_id)
    k = await api_keys.create_api_key(pg, redis, customer_id)
    await api_keys.revoke_api_key(pg, redis, k["id"])
    await wallets.topup(pg, redis, customer_id, "10.00")
    await redis.decrby(CustomerKeys(customer_id).wallet, 250_000)  # as settle.lua debits usage
    await redis.set(CustomerKeys(customer_id).held, 1_000_000)  # an open hold

    c = await customers.get_customer(pg, redis, customer_id)
    assert c["api_keys"] == {"active": 1, "total": 2}
    assert c["wallet"] == {"currency": "USD", "balance": "9.75", "held": "1.00", "available": "8.75",
                           "topups_total": "10.00", "topups": 1}


async def test_get_unknown_customer(pg, redis):
    with pytest.raises(NotFound) as err:
        await customers.get_customer(pg, redis, "cus_nobody")
    assert err.value.field == "customer_id"


async def test_list_pages_by_id(pg, redis, plan_id):
    made = sorted([(await customers.create_customer(pg, redis, name=f"C{i}", plan_id=plan_id))["id"] for i in range(3)])
    page1 = await customers.list_customers(pg, plan_id=plan_id, limit=2)
    page2 = await customers.list_customers(pg, plan_id=plan_id, after=page1[-1]["id"], limit=2)
    assert [c["id"] for c in page1 + page2] == made
    with pytest.raises(InvalidInput) as err:
        await customers.list_customers(pg, limit=0)
    assert err.value.field == "limit"


def test_effective_tier_never_demotes():
    from tollgate.plans import load_plan_text
    from tests.control.conftest import SAMPLE_PLAN

    plan = load_plan_text(SAMPLE_PLAN.read_text())
    assert customers.effective_tier(plan, "free", None) == "free"
    assert customers.effective_tier(plan, "free", "scale") == "scale"
    assert customers.effective_tier(plan, "build", "free") == "build"
    assert customers.effective_tier(plan, "gone", "also_gone") == "free"
