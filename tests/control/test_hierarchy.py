"""The billing hierarchy end to end: teams, apps and agents, keys with a path and limits made through
the real admin API (in process, on the session's PostgreSQL and Redis), decided by the real
enforcer (a subprocess on the same Redis), settled by the rater's pipeline from the events the
enforcer put on the bus, expired by the sweeper, rebuilt from PostgreSQL into an empty Redis."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import pytest_asyncio

from control.accounts import customers, plans
from control.projection.rebuild import rebuild
from rater.holds import sweep_expired
from rater.pipeline import Pipeline
from tests.control.conftest import TOKEN
from tests.tenants import plan_doc, stream_events, uid
from tollgate.keys import EVENTS_STREAM, CustomerKeys
from tollgate.periods import period_of

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest_asyncio.fixture
async def http():
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest_asyncio.fixture
async def tenant(pg, redis):
    """A postpaid customer (plan: $0.01 per request, generous per-key limits, no cap of its own but a
    customer cap far away) and a helper making its teams, apps and keys through the admin API."""
    doc = plan_doc("0.01")
    doc["billing_mode"] = "postpaid"
    await plans.apply_plan(pg, redis, doc)
    c = await customers.create_customer(pg, redis, name="Acme", plan_id=doc["id"], spend_cap="1000")
    return c["id"]


async def post(client, path: str, body: dict | None = None, expect: int = 201) -> dict:
    r = await client.post(path, json=body, headers=AUTH) if body is not None else await client.post(path, headers=AUTH)
    assert r.status_code == expect, r.text
    return r.json()


async def team(client, cid: str, **limits) -> str:
    return (await post(client, f"/admin/customers/{cid}/teams", {"name": "Research", "limits": limits}))["id"]


async def app(client, cid: str, team_id: str, kind: str = "app", **limits) -> str:
    body = {"team_id": team_id, "name": "Bot", "kind": kind, "limits": limits}
    return (await post(client, f"/admin/customers/{cid}/apps", body))["id"]


async def key(client, cid: str, app_id: str | None = None, **limits) -> tuple[str, str]:
    body: dict = {}
    if app_id:
        body["app_id"] = app_id
    if limits:
        body["limits"] = limits
    k = await post(client, f"/admin/customers/{cid}/keys", body)
    return k["id"], k["api_key"]


async def check(http, enforcer, api_key: str, **extra) -> httpx.Response:
    body = {"api_key": api_key, "request_id": uid("req"), "estimate": {"requests": 1}, **extra}
    return await http.post(f"{enforcer.url}/v1/check", json=body)


REPORTED: list[str] = []  # usage events reported by the test running (rate_all waits for them)
RATED: set[str] = set()  # hold ids of the decisions and ids of the usage events rate_all has rated


async def report(http, enforcer, api_key: str, hold_id: str) -> None:
    event_id = uid("evt")
    r = await http.post(f"{enforcer.url}/v1/usage", json={
        "event_id": event_id, "api_key": api_key, "hold_id": hold_id, "event_type": "llm.completion",
        "measurements": [{"metric": "requests", "value": 1}]})
    assert r.status_code == 202, r.text
    REPORTED.append(event_id)


async def rate_all(pg, redis, customer_id: str, holds: tuple[str, ...] = ()) -> None:
    """The rater's pipeline over the events the enforcer published for the customer (decisions and
    usage), once each; first waiting for the usage reported (a 202 may have gone to the spool, the
    bus gets it a moment later) and for the decisions that placed `holds` (published after the answer)."""
    deadline = time.monotonic() + 10
    while True:
        entries = await redis.xrange(EVENTS_STREAM)
        events = [(i, orjson.loads(f[b"event"])) for i, f in entries]
        seen = RATED | {e.get("hold_id") for _, e in events if e["kind"] == "decision"} | {e["id"] for _, e in events}
        if set(holds) | set(REPORTED) <= seen or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    REPORTED.clear()
    mine = [(i, e) for i, e in events if e.get("customer_id") == customer_id]
    RATED.update(e.get("hold_id") if e["kind"] == "decision" else e["id"] for _, e in mine)
    if mine:
        await redis.xdel(EVENTS_STREAM, *(i for i, _ in mine))
        await Pipeline(pg, redis, cache_ttl_s=0).process_raw([orjson.dumps(e) for _, e in mine])


def denied(r: httpx.Response, reason: str, level: str) -> dict:
    assert r.status_code == 429, r.text
    body = r.json()
    assert (body["decision"], body["reason"], body.get("level")) == ("DENY", reason, level), body
    assert r.headers["x-tollgate-level"] == level
    return body


# ------------------------------------------------------------------------------- budgets


async def test_team_budget_denies_with_level_team_while_the_customer_cap_is_far(client, pg, redis, enforcer, http, tenant):
    t = await team(client, tenant, spend_cap="0.05")
    a = await app(client, tenant, t)
    k1, key1 = await key(client, tenant, a)
    _, key2 = await key(client, tenant, await app(client, tenant, t))  # another app of the same team

    for api_key in (key1, key2, key1):  # three requests used and reported: 0.03 spent, settled
        r = await check(http, enforcer, api_key)
        assert r.status_code == 200, r.text
        await report(http, enforcer, api_key, r.json()["hold_id"])
    await rate_all(pg, redis, tenant)
    period = period_of(time.time())
    k = CustomerKeys(tenant)
    assert await redis.get(k.level_spend(f"team:{t}", period)) == b"30000"
    assert await redis.get(k.level_spend(f"key:{k1}", period)) == b"20000"
    lines = await pg.fetch("SELECT DISTINCT key_id, team_id, app_id FROM ledger_lines WHERE customer_id = $1", tenant)
    assert {(r["key_id"], r["team_id"]) for r in lines} >= {(k1, t)} and all(r["app_id"] for r in lines)

    held = [await check(http, enforcer, key2) for _ in range(2)]  # 0.03 spent + 0.02 held = the team's 0.05
    assert [r.status_code for r in held] == [200, 200]
    body = denied(await check(http, enforcer, key1), "spend_cap", "team")
    assert "retry-after" not in (await check(http, enforcer, key1)).headers  # money, not time
    assert body["remaining"]["spend_cap"] == "0.00"  # the tightest cap: the team's
    # the customer's cap (1000) is far: a key without an app is not concerned
    _, loose = await key(client, tenant)
    assert (await check(http, enforcer, loose)).status_code == 200


async def test_key_limits_override_the_plans_and_add_a_cap(client, enforcer, http, tenant):
    _, slow = await key(client, tenant, requests_per_minute=2)
    assert [(await check(http, enforcer, slow)).status_code for _ in range(2)] == [200, 200]
    r = await check(http, enforcer, slow)
    denied(r, "rate_limited_requests", "key")
    assert r.headers["x-ratelimit-limit"] == "2" and int(r.headers["retry-after"]) >= 1

    _, capped = await key(client, tenant, spend_cap="0.02")
    assert [(await check(http, enforcer, capped)).status_code for _ in range(2)] == [200, 200]
    denied(await check(http, enforcer, capped), "spend_cap", "key")


async def test_app_and_customer_rate_limits_name_their_level(client, enforcer, http, tenant):
    t = await team(client, tenant)
    a = await app(client, tenant, t, requests_per_minute=3)
    _, key1 = await key(client, tenant, a)
    _, key2 = await key(client, tenant, a)
    assert [(await check(http, enforcer, k)).status_code for k in (key1, key2, key1)] == [200, 200, 200]
    r = denied(await check(http, enforcer, key2), "rate_limited_requests", "app")  # the app's bucket is shared
    assert r["retry_after_ms"] > 0
    _, other = await key(client, tenant, await app(client, tenant, t))
    assert (await check(http, enforcer, other)).status_code == 200  # another app of the team: its own budget

    r = await client.put(f"/admin/customers/{tenant}/limits", json={"limits": {"requests_per_minute": 5}}, headers=AUTH)
    assert r.status_code == 200, r.text
    _, fresh = await key(client, tenant)
    assert (await check(http, enforcer, fresh)).status_code == 200  # the customer's bucket starts now: 1 of 5
    statuses = [(await check(http, enforcer, fresh)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 200]
    denied(await check(http, enforcer, fresh), "rate_limited_requests", "customer")


# ---------------------------------------------------------------------------- concurrency


async def test_agent_max_in_flight_frees_a_slot_on_settlement_and_on_expiry(client, pg, redis, enforcer, http, tenant):
    t = await team(client, tenant)
    agent = await app(client, tenant, t, kind="agent", max_in_flight=2)
    _, k1 = await key(client, tenant, agent)
    _, k2 = await key(client, tenant, agent)
    first, second = await check(http, enforcer, k1), await check(http, enforcer, k2)
    assert (first.status_code, second.status_code) == (200, 200)
    r = await check(http, enforcer, k1)
    body = denied(r, "concurrency_limited", "agent")
    assert r.headers["retry-after"] == "1" and body["retry_after_ms"] == 1000

    await report(http, enforcer, k1, first.json()["hold_id"])  # the usage settles the first hold
    await rate_all(pg, redis, tenant)
    assert await redis.hget(CustomerKeys(tenant).inflight, f"app:{agent}") == b"1"
    third = await check(http, enforcer, k2)
    assert third.status_code == 200, third.text
    denied(await check(http, enforcer, k1), "concurrency_limited", "agent")

    tree = (await client.get(f"/admin/customers/{tenant}/tree", headers=AUTH)).json()
    assert tree["teams"][0]["apps"][0]["in_flight"] == 2

    await rate_all(pg, redis, tenant, (second.json()["hold_id"], third.json()["hold_id"]))  # the open holds in PostgreSQL
    expired = await sweep_expired(redis, pg, now_ms=int(time.time() * 1000) + 3_600_000)
    assert {e.hold_id for e in expired} >= {second.json()["hold_id"], third.json()["hold_id"]}
    assert await redis.hget(CustomerKeys(tenant).inflight, f"app:{agent}") is None  # none left, field gone
    assert [(await check(http, enforcer, k)).status_code for k in (k1, k2)] == [200, 200]
    denied(await check(http, enforcer, k1), "concurrency_limited", "agent")


async def test_key_max_in_flight(client, enforcer, http, tenant):
    _, k = await key(client, tenant, max_in_flight=1)
    assert (await check(http, enforcer, k)).status_code == 200
    denied(await check(http, enforcer, k), "concurrency_limited", "key")


# ---------------------------------------------------------------------------- Margin Guard


@pytest.mark.parametrize("level", ["key", "agent", "team", "customer", "session"])
async def test_a_guard_flag_denies_margin_guard_with_its_level(client, redis, enforcer, http, tenant, level):
    t = await team(client, tenant)
    agent = await app(client, tenant, t, kind="agent")
    kid, k = await key(client, tenant, agent)
    _, bystander = await key(client, tenant)  # no app: only the customer's flag concerns it
    field = {"key": f"key:{kid}", "agent": f"app:{agent}", "team": f"team:{t}", "customer": "customer",
             "session": "session:ses_1"}[level]
    assert (await check(http, enforcer, k, session_id="ses_1")).status_code == 200
    await redis.hset(CustomerKeys(tenant).guard, field, "rule_margin_80")
    r = await check(http, enforcer, k, session_id="ses_1")
    body = denied(r, "margin_guard", level)
    assert "retry-after" not in r.headers and body["retry_after_ms"] == 0  # waiting does not cure it
    assert (await check(http, enforcer, bystander)).status_code == (429 if level == "customer" else 200)
    if level == "session":  # another session of the same key goes on
        assert (await check(http, enforcer, k, session_id="ses_2")).status_code == 200
    await redis.hdel(CustomerKeys(tenant).guard, field)  # reset (by the rater or an operator)
    assert (await check(http, enforcer, k, session_id="ses_1")).status_code == 200


# ------------------------------------------------------------------------------- rebuild


async def test_rebuild_from_an_empty_redis_restores_level_spend_limits_and_in_flight(client, pg, redis, enforcer, http, tenant):
    t = await team(client, tenant, spend_cap="0.04")
    agent = await app(client, tenant, t, kind="agent", max_in_flight=3)
    kid, k = await key(client, tenant, agent)
    for _ in range(2):  # 0.02 spent
        r = await check(http, enforcer, k)
        await report(http, enforcer, k, r.json()["hold_id"])
    open_hold = await check(http, enforcer, k)  # held, never reported
    assert open_hold.status_code == 200
    await rate_all(pg, redis, tenant, (open_hold.json()["hold_id"],))
    ck = CustomerKeys(tenant)
    before = {f: await redis.hget(ck.inflight, f) for f in (f"app:{agent}", f"held:team:{t}")}
    assert before == {f"app:{agent}": b"1", f"held:team:{t}": b"10000"}

    await redis.flushall()
    async with pg.acquire() as conn:
        counts = await rebuild(redis, conn)
    assert counts["level_spend_keys"] >= 3
    period = period_of(time.time())
    assert await redis.get(ck.level_spend(f"team:{t}", period)) == b"20000"
    assert await redis.get(ck.level_spend(f"key:{kid}", period)) == b"20000"
    assert {f: await redis.hget(ck.inflight, f) for f in before} == before
    assert await redis.hget(ck.limits, f"team:{t}") == b"::40000:"  # rpm:tpm:cap:max in flight
    hold = await redis.hget(ck.holds, open_hold.json()["hold_id"])
    assert hold.decode().endswith(f":{kid}:app:{agent} team:{t}")

    # the budget still holds: 0.02 spent + 0.01 held leaves room for one more
    assert (await check(http, enforcer, k)).status_code == 200
    denied(await check(http, enforcer, k), "spend_cap", "team")


# ---------------------------------------------------------------------------------- tree


async def test_tree_shows_each_level_with_its_limits_and_spend(client, pg, redis, enforcer, http, tenant):
    t = await team(client, tenant, spend_cap="5")
    a = await app(client, tenant, t, requests_per_minute=100)
    agent = await app(client, tenant, t, kind="agent", max_in_flight=4)
    k1, key1 = await key(client, tenant, a)
    k2, key2 = await key(client, tenant, agent, tokens_per_minute=1000)
    k3, key3 = await key(client, tenant)
    for api_key, n in ((key1, 2), (key2, 1), (key3, 3)):
        for _ in range(n):
            r = await check(http, enforcer, api_key)
            await report(http, enforcer, api_key, r.json()["hold_id"])
    await rate_all(pg, redis, tenant)

    tree = (await client.get(f"/admin/customers/{tenant}/tree", headers=AUTH)).json()
    assert (tree["spend"], tree["spend_cap"], tree["limits"]) == ("0.06", "1000.00", {})
    [tm] = tree["teams"]
    assert (tm["id"], tm["spend"], tm["limits"], tm["in_flight"]) == (t, "0.03", {"spend_cap": "5.00"}, None)
    apps = {x["id"]: x for x in tm["apps"]}
    assert (apps[a]["kind"], apps[a]["spend"], apps[a]["limits"]) == ("app", "0.02", {"requests_per_minute": 100})
    assert (apps[agent]["kind"], apps[agent]["spend"], apps[agent]["in_flight"]) == ("agent", "0.01", None)
    assert [(x["id"], x["spend"]) for x in apps[a]["keys"]] == [(k1, "0.02")]
    assert apps[agent]["keys"][0]["limits"] == {"tokens_per_minute": 1000}
    assert [(x["id"], x["spend"]) for x in tree["keys"]] == [(k3, "0.03")]

    usage = (await client.get(f"/admin/customers/{tenant}/usage", params={"group_by": "team,app", "metric": "requests"},
                              headers=AUTH)).json()
    by_path: dict = {}
    for row in usage["rows"]:
        by_path[(row["team_id"], row["app_id"])] = by_path.get((row["team_id"], row["app_id"]), 0) + row["quantity"]
    assert by_path == {(t, a): 2, (t, agent): 1, (None, None): 3}

    mine = await client.get("/v1/customer/tree", headers={"authorization": f"Bearer {key3}"})
    assert mine.status_code == 200 and mine.json() == tree
    assert (await client.get("/v1/customer/tree", headers={"authorization": "Bearer nope"})).status_code == 401

    teams = (await client.get(f"/admin/customers/{tenant}/teams", headers=AUTH)).json()["teams"]
    assert [x["id"] for x in teams] == [t]
    agents = (await client.get(f"/admin/customers/{tenant}/apps", params={"team_id": t}, headers=AUTH)).json()["apps"]
    assert {x["id"] for x in agents} == {a, agent}
    r = await client.patch(f"/admin/teams/{t}", json={"limits": {"spend_cap": "0.01"}}, headers=AUTH)
    assert r.status_code == 200 and r.json()["limits"] == {"spend_cap": "0.01"}
    denied(await check(http, enforcer, key1), "spend_cap", "team")  # the next check sees it
    r = await client.patch(f"/admin/teams/{t}", json={"limits": {}}, headers=AUTH)
    assert r.status_code == 200
    assert (await check(http, enforcer, key1)).status_code == 200
    r = await client.patch(f"/admin/keys/{k3}", json={"limits": {"max_in_flight": 1}}, headers=AUTH)
    assert r.json()["limits"] == {"max_in_flight": 1}


# ----------------------------------------------------------------------------- bad input


async def test_bad_input_is_a_4xx_naming_the_field(client, pg, redis, enforcer, http, tenant):
    other = (await customers.create_customer(pg, redis, name="Other",
                                             plan_id=(await pg.fetchval("SELECT plan_id FROM customers WHERE id = $1",
                                                                        tenant))))["id"]
    theirs = await team(client, other)
    their_app = await app(client, other, theirs)
    mine = await team(client, tenant)

    async def refused(method: str, path: str, body, field: str, status: int = 422) -> None:
        r = await client.request(method, path, content=orjson.dumps(body), headers={**AUTH, "content-type": "application/json"})
        assert (r.status_code, r.json().get("field")) == (status, field), r.text

    await refused("POST", f"/admin/customers/{tenant}/apps", {"team_id": theirs, "name": "x"}, "team_id")
    await refused("POST", f"/admin/customers/{tenant}/keys", {"app_id": their_app}, "app_id")
    await refused("POST", f"/admin/customers/{tenant}/apps", {"team_id": mine, "name": "x", "kind": "robot"}, "kind")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "limits": {"requests_per_minute": 1.5}},
                  "limits.requests_per_minute")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "limits": {"rpm": 1}}, "limits.rpm")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "limits": {"spend_cap": 1.5}},
                  "limits.spend_cap")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "limits": {"spend_cap": "-1"}},
                  "limits.spend_cap")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "limits": {"max_in_flight": 0}},
                  "limits.max_in_flight")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "limits": []}, "limits")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": ""}, "name")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "id": "bad id"}, "id")
    await refused("POST", f"/admin/customers/{tenant}/teams", {"name": "x", "id": mine}, "id", 409)
    await refused("PUT", f"/admin/customers/{tenant}/limits", {"limits": {"spend_cap": "5"}}, "limits.spend_cap")
    await refused("PATCH", f"/admin/keys/key_nope", {"limits": {}}, "key_id", 404)
    await refused("PATCH", f"/admin/teams/{mine}", {"customer_id": other}, "customer_id")
    await refused("POST", f"/admin/customers/cus_nope/teams", {"name": "x"}, "customer_id", 404)

    _, k = await key(client, tenant)
    r = await check(http, enforcer, k, session_id="has space")
    assert (r.status_code, r.json()["field"]) == (400, "session_id")
    r = await http.post(f"{enforcer.url}/v1/usage", json={
        "event_id": uid("evt"), "api_key": k, "session_id": 7, "measurements": [{"metric": "requests", "value": 1}]})
    assert (r.status_code, r.json()["field"]) == (400, "session_id")


async def test_usage_carries_the_session_id_top_level(client, redis, enforcer, http, tenant):
    _, k = await key(client, tenant)
    r = await http.post(f"{enforcer.url}/v1/usage", json={
        "event_id": uid("evt"), "api_key": k, "session_id": "ses_42", "measurements": [{"metric": "requests", "value": 1}]})
    assert r.status_code == 202
    mine = [e for e in await stream_events(redis, "usage") if e["customer_id"] == tenant]
    assert mine and all(e["session_id"] == "ses_42" for e in mine)  # at least once: a spooled copy may follow


# ----------------------------------------------------------------------------------- CLI


async def test_cli_teams_apps_keys_and_tree(pg_dsn, redis_server, redis, tenant):
    tollgate = str(Path(sys.executable).parent / "tollgate")
    env = {**os.environ, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url}

    def cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([tollgate, *args], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        return p

    t = json.loads(cli("teams", "create", "--customer", tenant, "--name", "Ops", "--spend-cap", "500", "--json").stdout)
    assert t["limits"] == {"spend_cap": "500.00"}
    a = json.loads(cli("apps", "create", "--customer", tenant, "--team", t["id"], "--kind", "agent", "--name", "Bot",
                       "--max-in-flight", "4", "--json").stdout)
    assert (a["kind"], a["limits"]) == ("agent", {"max_in_flight": 4})
    assert await redis.hget(CustomerKeys(tenant).limits, f"app:{a['id']}") == b":::4"
    out = cli("keys", "create", "--customer", tenant, "--app", a["id"], "--rpm", "10").stdout
    assert f"(app {a['id']})" in out and "tg_live_" in out
    cli("teams", "update", t["id"], "--no-limits")
    assert await redis.hget(CustomerKeys(tenant).limits, f"team:{t['id']}") is None
    tree = cli("customers", "tree", tenant).stdout
    assert f"agent {a['id']} Bot: spend 0.00" in tree and "requests_per_minute 10" in tree
    err = cli("apps", "create", "--customer", tenant, "--team", "team_nope", "--name", "x", expect=2).stderr
    assert "team_id" in err
    err = cli("teams", "create", "--customer", tenant, "--name", "x", "--rpm", "-1", expect=2).stderr
    assert "limits.requests_per_minute" in err
