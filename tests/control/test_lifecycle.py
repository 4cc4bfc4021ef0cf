"""Customer lifecycle (control.accounts.lifecycle) on real PostgreSQL and Redis: every change versioned,
audited and projected; a stale version changes nothing."""
from __future__ import annotations

import time

import pytest

from control.accounts import api_keys, customers, lifecycle, plans
from control.accounts.audit import list_audit
from control.errors import Conflict, InvalidInput
from control.lookup import require_plan
from control.projection.rebuild import rebuild_locked
from tests.control.conftest import plan_text, uid
from tollgate.keys import CustomerKeys, api_key_record
from tollgate.periods import next_period, period_of
from tollgate.rating.negotiated import parse_prices

ACTOR = "admin:0123abcd"


async def cfg(redis, cid: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(CustomerKeys(cid).cfg)).items()}


async def other_plan(pg, redis, replace: dict | None = None) -> str:
    pid = uid("plan")
    await plans.apply_plan(pg, redis, plan_text(pid, {"requests_per_minute: 60": "requests_per_minute: 90",
                                                      **(replace or {})}))
    return pid


async def test_update_is_versioned_audited_and_projected(pg, redis, customer_id):
    c = await customers.get_customer(pg, redis, customer_id)
    assert (c["version"], c["status"], c["pending_plan_change"], c["prices"]) == (1, "active", None, [])

    c = await lifecycle.update_customer(pg, redis, customer_id, {"billing_mode": "postpaid", "spend_cap": "50"},
                                        version=1, actor=ACTOR)
    assert (c["version"], c["billing_mode"], c["spend_cap"]) == (2, "postpaid", "50.00")
    live = await cfg(redis, customer_id)
    # the customer's own cap, scaled by every tier's multiplier like the plan's
    assert (live["mode"], live["cap.free"], live["cap.build"], live["cap.scale"]) == (
        "postpaid", "50000000", "100000000", "500000000")

    # Another operator still holding version 1: refused, nothing changed.
    with pytest.raises(lifecycle.PreconditionFailed) as e:
        await lifecycle.update_customer(pg, redis, customer_id, {"spend_cap": "999"}, version=1, actor="admin:other")
    assert (e.value.status, e.value.field) == (412, "version")
    with pytest.raises(lifecycle.PreconditionRequired) as e:
        await lifecycle.update_customer(pg, redis, customer_id, {"spend_cap": "999"}, version=None, actor=ACTOR)
    assert e.value.status == 428
    assert (await cfg(redis, customer_id))["cap.free"] == "50000000"

    c = await lifecycle.update_customer(pg, redis, customer_id, {"spend_cap": None}, version=2, actor=ACTOR)
    assert c["spend_cap"] is None and (await cfg(redis, customer_id))["cap.free"] == "200000000"  # the plan's again

    log = await list_audit(pg, customer_id)
    assert [(a["action"], a["version"], a["actor"]) for a in log] == [("update", 3, ACTOR), ("update", 2, ACTOR)]
    assert (log[1]["before"]["billing_mode"], log[1]["after"]["billing_mode"]) == ("prepaid", "postpaid")
    assert (log[1]["before"]["spend_cap"], log[1]["after"]["spend_cap"]) == (None, "50.00")
    assert log[0]["period"] == period_of(time.time())


@pytest.mark.parametrize("changes,field", [
    ({"billing_mode": "barter"}, "billing_mode"), ({"spend_cap": "-1"}, "spend_cap"), ({"colour": "red"}, "colour"),
    ({}, "body"), ({"prices": [{"charge_id": "nope", "unit_price": "1"}]}, "prices[0].charge_id"),
    ({"prices": [{"charge_id": "input_tokens"}]}, "prices[0].unit_price"),
    ({"prices": [{"charge_id": "platform_subscription", "unit_price": "1"}]}, "prices[0].charge_id"),
    ({"prices": [{"charge_id": "input_tokens", "unit_price": "1"}] * 2}, "prices[1].match"),
])
async def test_bad_updates_name_the_field(pg, redis, customer_id, changes, field):
    with pytest.raises(InvalidInput) as e:
        await lifecycle.update_customer(pg, redis, customer_id, changes, version=1, actor=ACTOR)
    assert e.value.field == field
    assert (await customers.get_customer(pg, redis, customer_id))["version"] == 1


async def test_suspend_and_reactivate(pg, redis, customer_id):
    c = await lifecycle.set_status(pg, redis, customer_id, "suspend", version=1, actor=ACTOR)
    assert (c["status"], (await cfg(redis, customer_id))["status"]) == ("suspended", "suspended")
    with pytest.raises(Conflict) as e:
        await lifecycle.set_status(pg, redis, customer_id, "suspend", version=2, actor=ACTOR)
    assert e.value.field == "status"
    # the status survives a Redis loss: the rebuild projects it
    await redis.delete(CustomerKeys(customer_id).cfg)
    async with pg.acquire() as conn:
        await rebuild_locked(redis, conn)
    assert (await cfg(redis, customer_id))["status"] == "suspended"
    c = await lifecycle.set_status(pg, redis, customer_id, "reactivate", version=2, actor=ACTOR)
    assert (c["status"], (await cfg(redis, customer_id))["status"]) == ("active", "active")
    assert [a["action"] for a in await list_audit(pg, customer_id)] == ["reactivate", "suspend"]


async def test_archive_revokes_keys_hides_and_freezes(pg, redis, plan_id, customer_id):
    key = await api_keys.create_api_key(pg, redis, customer_id)
    c = await lifecycle.set_status(pg, redis, customer_id, "archive", version=1, actor=ACTOR)
    assert c["status"] == "archived" and c["api_keys"] == {"active": 0, "total": 1}
    key_hash = await pg.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", key["id"])
    assert await redis.hget(api_key_record(key_hash), "status") == b"revoked"  # the enforcer answers 401
    listed = [x["id"] for x in await customers.list_customers(pg, plan_id=plan_id)]
    assert customer_id not in listed
    assert customer_id in [x["id"] for x in await customers.list_customers(pg, plan_id=plan_id, status="archived")]
    with pytest.raises(Conflict):
        await lifecycle.set_status(pg, redis, customer_id, "reactivate", version=2, actor=ACTOR)
    with pytest.raises(Conflict):
        await api_keys.create_api_key(pg, redis, customer_id)


async def test_plan_change_now_projects_the_new_plan(pg, redis, plan_id, customer_id):
    key = await api_keys.create_api_key(pg, redis, customer_id)
    key_hash = await pg.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", key["id"])
    new = await other_plan(pg, redis, {'minimum_commit: "25.00"': 'minimum_commit: "0"'})
    # the current plan has a commit: the default is the period's end, so `now` is asked for
    c = await lifecycle.change_plan(pg, redis, customer_id, new, effective="now", version=1, actor=ACTOR)
    assert (c["plan_id"], c["pending_plan_change"], c["version"]) == (new, None, 2)
    live = await cfg(redis, customer_id)
    assert (live["plan"], live["rpm.free"]) == (new, "90")
    assert await redis.hget(api_key_record(key_hash), "plan_id") == new.encode()
    (entry,) = await list_audit(pg, customer_id)
    assert (entry["action"], entry["before"]["plan_id"], entry["after"]["plan_id"]) == ("plan_change", plan_id, new)
    assert await pg.fetchval("SELECT repriced FROM customer_audit WHERE customer_id = $1", customer_id)


async def test_plan_change_at_period_end_is_pending_and_can_be_cancelled(pg, redis, plan_id, customer_id):
    new = await other_plan(pg, redis)
    c = await lifecycle.change_plan(pg, redis, customer_id, new, version=1, actor=ACTOR)  # a commit: period_end
    nxt = next_period(period_of(time.time()))
    assert (c["plan_id"], c["pending_plan_change"]) == (plan_id, {"plan_id": new, "from_period": nxt})
    assert (await cfg(redis, customer_id))["plan"] == plan_id  # limits switch at the close, not now
    c = await lifecycle.change_plan(pg, redis, customer_id, plan_id, version=2, actor=ACTOR)  # back: cancels
    assert (c["plan_id"], c["pending_plan_change"], c["version"]) == (plan_id, None, 3)
    with pytest.raises(Conflict):
        await lifecycle.change_plan(pg, redis, customer_id, plan_id, version=3, actor=ACTOR)


async def test_plan_change_that_cannot_apply_now(pg, redis, customer_id):
    anchored = await other_plan(pg, redis, {"anchor_day: 1 ": "anchor_day: 15 "})
    with pytest.raises(InvalidInput) as e:
        await lifecycle.change_plan(pg, redis, customer_id, anchored, effective="now", version=1, actor=ACTOR)
    assert e.value.field == "plan_id" and "day 15" in str(e.value)
    # usage this period under a charge the new plan lacks: only at the period's end
    await pg.execute("INSERT INTO rating_cumulatives (customer_id, period, charge_id, dimension_key, quantity)"
                     " VALUES ($1, $2, 'gone', 'default', 5)", customer_id, period_of(time.time()))
    new = await other_plan(pg, redis)
    with pytest.raises(Conflict) as e:
        await lifecycle.change_plan(pg, redis, customer_id, new, effective="now", version=1, actor=ACTOR)
    assert e.value.field == "plan_id" and "gone/default" in str(e.value)
    c = await lifecycle.change_plan(pg, redis, customer_id, new, effective="period_end", version=1, actor=ACTOR)
    assert c["pending_plan_change"]["plan_id"] == new


async def test_negotiated_prices_are_stored_and_guarded(pg, redis, customer_id):
    prices = [{"charge_id": "input_tokens", "match": {"model": "gpt-x"}, "unit_price": "0.000001"}]
    c = await lifecycle.update_customer(pg, redis, customer_id, {"prices": prices}, version=1, actor=ACTOR)
    assert c["prices"] == prices
    key = parse_prices(await plan_of(pg, c["plan_id"]), prices)[0].key
    # usage under the negotiated price this period: it cannot be removed before the period ends
    await pg.execute("INSERT INTO rating_cumulatives (customer_id, period, charge_id, dimension_key, quantity)"
                     " VALUES ($1, $2, 'input_tokens', $3, 5)", customer_id, period_of(time.time()), key)
    with pytest.raises(Conflict) as e:
        await lifecycle.update_customer(pg, redis, customer_id, {"prices": []}, version=2, actor=ACTOR)
    assert e.value.field == "prices"
    c = await lifecycle.update_customer(pg, redis, customer_id, {"prices": [{**prices[0], "unit_price": "0.000002"}]},
                                        version=2, actor=ACTOR)  # a new price for the same match: fine
    assert c["version"] == 3


async def plan_of(pg, plan_id: str):
    async with pg.acquire() as conn:
        return await require_plan(conn, plan_id)
