"""Trips recorded once per rule, subject and period, with an alert; projected as guard-hash
fields; reset by an operator over the admin API (real PostgreSQL and Redis); restored by a rebuild
of an emptied Redis."""
from control.projection.rebuild import rebuild
from tests.control.conftest import TOKEN
from tollgate import guard_trips
from tollgate.guard_trips import Trip
from tollgate.keys import CustomerKeys

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _fields(redis, customer_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(CustomerKeys(customer_id).guard)).items()}


async def _trip(pg, redis, *trips: Trip) -> tuple[list[str], list[Trip]]:
    async with pg.acquire() as conn, conn.transaction():
        new, active = await guard_trips.record(conn, list(trips))
    await guard_trips.set_fields(redis, active)
    return new, active


async def test_trip_once_with_alert_and_field(pg, redis, customer_id):
    t = Trip(customer_id, "loop", "session:s1", "202612", "deny", {"cost": "2.10"}, "evt_1")
    new, active = await _trip(pg, redis, t, Trip(customer_id, "thin", "customer", "202612", "alert", {}))
    assert len(new) == 2 and active == [t]
    assert await _fields(redis, customer_id) == {"session:s1": "loop"}
    alerts = await pg.fetch("SELECT threshold, payload->>'action' AS action FROM alerts WHERE customer_id = $1"
                            " AND kind = 'margin_guard.tripped' ORDER BY threshold", customer_id)
    assert [(a["threshold"], a["action"]) for a in alerts] == [("loop:session:s1", "deny"), ("thin:customer", "alert")]
    # proposed again (a redelivered batch): nothing new, but the field is still due (a crash may have lost it)
    await redis.delete(CustomerKeys(customer_id).guard)
    new, active = await _trip(pg, redis, t)
    assert new == [] and active == [t]
    assert (await _fields(redis, customer_id))["session:s1"] == "loop"
    assert await pg.fetchval("SELECT count(*) FROM alerts WHERE customer_id = $1", customer_id) == 2


async def test_operator_reset_over_the_api(client, pg, redis, customer_id):
    t1 = Trip(customer_id, "loop", "app:agent7", "202612", "deny", {})
    t2 = Trip(customer_id, "loop2", "app:agent7", "202612", "deny", {})
    await _trip(pg, redis, t1, t2)
    base = f"/admin/customers/{customer_id}/margin-guard"
    r = await client.get(base, headers=AUTH)
    assert r.status_code == 200 and r.json()["source"] == "plan" and len(r.json()["trips"]) == 2
    one = next(x for x in r.json()["trips"] if x["rule_id"] == "loop")
    r = await client.post(f"{base}/reset", json={"trip_id": one["id"]}, headers=AUTH)
    assert r.status_code == 200 and [x["id"] for x in r.json()["reset"]] == [one["id"]]
    assert r.json()["reset"][0]["reset_by"].startswith("admin:")
    # the other rule still holds the same subject: the field stays
    assert (await _fields(redis, customer_id))["app:agent7"] == "loop2"
    r = await client.post(f"{base}/reset", json={"subject": "app:agent7"}, headers=AUTH)
    assert len(r.json()["reset"]) == 1
    assert await _fields(redis, customer_id) == {}
    # reset for the period: proposing it again trips nothing
    new, active = await _trip(pg, redis, t1)
    assert new == [] and active == [] and await _fields(redis, customer_id) == {}
    r = await client.get(base + "?active=true", headers=AUTH)
    assert r.json()["trips"] == []


async def test_rules_per_customer_and_bad_input(client, customer_id):
    base = f"/admin/customers/{customer_id}/margin-guard"
    rules = [{"id": "loop", "when": "session_cost", "percent_of_outcome": 80, "outcome": "contract_reviewed", "stop": "agent"}]
    r = await client.put(base, json={"rules": rules}, headers=AUTH)
    assert r.status_code == 200 and r.json()["source"] == "customer"
    assert r.json()["rules"][0] == {**rules[0], "percent_of_outcome": "80", "action": "deny"}
    for body, field in [({"rules": [{"id": "x", "when": "session_cost", "percent_of_outcome": 1, "outcome": "nope"}]},
                         "rules[0].outcome"),
                        ({"rules": "all"}, "rules"), ({}, "rules"), ({"rules": [], "x": 1}, "x")]:
        r = await client.put(base, json=body, headers=AUTH)
        assert (r.status_code, r.json().get("field")) == (422, field), r.text
    for body, field in [({"trip_id": "x"}, "trip_id"), ({"subject": "galaxy:1"}, "subject")]:
        r = await client.post(f"{base}/reset", json=body, headers=AUTH)
        assert (r.status_code, r.json().get("field")) == (422, field), r.text
    r = await client.delete(base, headers=AUTH)
    assert r.json()["source"] == "plan" and r.json()["rules"] == []
    r = await client.get("/admin/customers/nobody/margin-guard", headers=AUTH)
    assert r.status_code == 404


async def test_rebuild_restores_active_deny_fields(pg, redis, customer_id):
    await _trip(pg, redis, Trip(customer_id, "loop", "key:k1", "202612", "deny", {}),
                Trip(customer_id, "thin", "customer", "202612", "alert", {}))
    await redis.flushdb()
    async with pg.acquire() as conn:
        counts = await rebuild(redis, conn)
    assert counts["guard_fields"] >= 1
    assert await _fields(redis, customer_id) == {"key:k1": "loop"}
