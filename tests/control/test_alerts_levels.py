"""Budget alerts of the billing hierarchy's levels (team, app/agent, key), raised by the rater
(rater.alerts through rater.pipeline) on real PostgreSQL and Redis: each percent of a level's budget
once per level and period, redelivery raising nothing new, the level and its path in the payload
and in the signed webhook (the control plane's real delivery worker and a real receiver); a
customer without level budgets gets only its own spend alerts, which name the level `customer`."""
from __future__ import annotations

import pytest_asyncio

from control.accounts import api_keys, customers, hierarchy, plans
from control.alerts import manage as svc
from rater.pipeline import Pipeline
from tests.control.test_alerts_delivery import until, worker
from tests.control.webhook_receiver import Receiver
from tests.rater.conftest import PERIOD, raw, usage
from tests.tenants import plan_doc
from tollgate import alert_rules, limits


@pytest_asyncio.fixture
async def tenant(pg, redis):
    """A postpaid customer at 1.00 a request, its cap `cap`, with alerts at 50 and 100 % only."""
    async def make(cap: str = "1000") -> str:
        doc = plan_doc("1.00")
        doc["billing_mode"] = "postpaid"
        await plans.apply_plan(pg, redis, doc)
        c = (await customers.create_customer(pg, redis, name="Acme", plan_id=doc["id"], spend_cap=cap))["id"]
        await svc.set_settings(pg, c, {"spend_cap_percents": [50, 100]})
        return c
    return make


async def tree(pg, redis, c: str, *, team: dict | None = None, app: dict | None = None, key: dict | None = None,
               kind: str = "app") -> tuple[str, str, str]:
    t = (await hierarchy.create_team(pg, redis, c, name="Research", limits=team))["id"]
    a = (await hierarchy.create_app(pg, redis, c, team_id=t, name="Bot", kind=kind, limits=app))["id"]
    k = (await api_keys.create_api_key(pg, redis, c, app_id=a, limits=key))["id"]
    return t, a, k


def requests(c: str, key_id: str, n: int) -> dict:
    return usage(c, 0, 0, key_id=key_id, extra=[{"metric": "requests", "value": n}])


async def delivered(pg, endpoint_id: str, n: int) -> bool:
    return [d["status"] for d in await svc.list_deliveries(pg, endpoint_id=endpoint_id)] == ["delivered"] * n


async def alerts(pg, c: str) -> list[dict]:
    return sorted(await svc.list_alerts(pg, customer_id=c), key=lambda a: (a["type"], a["threshold"]))


async def test_a_team_budget_raises_once_per_percent_and_redelivery_nothing_new(pg, redis, settings, tenant):
    c = await tenant()
    t, a, k = await tree(pg, redis, c, team={"spend_cap": "10.00"})
    _, _, other = await tree(pg, redis, c)  # another team, no budget: its spend is not the first team's
    p = Pipeline(pg, redis, cache_ttl_s=0)
    batches = [[requests(c, k, 4)], [requests(c, other, 9), requests(c, k, 1)], [requests(c, k, 3)],
               [requests(c, k, 2)]]
    with Receiver() as rx:
        ep = await svc.create_endpoint(pg, url=rx.url, customer_id=c, kinds=["budget.threshold"])
        rx.secret = ep["secret"]
        async with worker(pg, settings):
            for b in batches:  # the team: 4.00, 5.00 (50 %), 8.00, 10.00 (100 %)
                await p.process_raw(raw(b))
            for b in batches:  # redelivered to this rater and to a restarted one (which remembers nothing)
                await p.process_raw(raw(b))
                await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw(b))
            await until(lambda: delivered(pg, ep["id"], 2), what="two webhooks")
        got = sorted(rx.received, key=lambda r: r.body["threshold"])
    fired = await alerts(pg, c)
    assert [(x["type"], x["threshold"], x["period"], x["source_event_id"]) for x in fired] == [
        ("budget.threshold", f"team:{t}:100", PERIOD, batches[3][0]["id"]),
        ("budget.threshold", f"team:{t}:50", PERIOD, batches[1][1]["id"])]
    assert fired[1]["data"] == {"level": "team", "id": t, "path": {"team_id": t}, "percent": 50, "spend": "5.00",
                                "budget": "10.00"}
    assert fired[0]["data"]["spend"] == "10.00"
    assert len(got) == 2 and all(r.signed for r in got)  # the webhook body carries the level, its id, the budget
    assert [(r.body["type"], r.body["data"]["level"], r.body["data"]["id"], r.body["data"]["budget"],
             r.body["data"]["percent"]) for r in got] == [
        ("budget.threshold", "team", t, "10.00", 100), ("budget.threshold", "team", t, "10.00", 50)]


async def test_a_key_budget_and_an_agent_budget_name_their_level_and_path(pg, redis, tenant):
    c = await tenant()
    t, a, k = await tree(pg, redis, c, key={"spend_cap": "10.00"})
    t2, ag, k2 = await tree(pg, redis, c, app={"spend_cap": "4.00"}, kind="agent")
    loose = (await api_keys.create_api_key(pg, redis, c, limits={"spend_cap": "2.00"}))["id"]  # no app
    p = Pipeline(pg, redis, cache_ttl_s=0)
    batches = [[requests(c, k, 5), requests(c, k2, 2), requests(c, loose, 2)], [requests(c, k, 5)]]
    for b in batches:
        await p.process_raw(raw(b))
        await p.process_raw(raw(b))
    fired = [(x["threshold"], x["data"]) for x in await alerts(pg, c)]
    budget = {"percent": 50, "spend": "5.00", "budget": "10.00"}
    assert fired == sorted([
        (f"key:{k}:50", {"level": "key", "id": k, "path": {"team_id": t, "app_id": a, "key_id": k}, **budget}),
        (f"key:{k}:100", {"level": "key", "id": k, "path": {"team_id": t, "app_id": a, "key_id": k},
                          **budget, "percent": 100, "spend": "10.00"}),
        (f"agent:{ag}:50", {"level": "agent", "id": ag, "path": {"team_id": t2, "app_id": ag}, "percent": 50,
                            "spend": "2.00", "budget": "4.00"}),
        (f"key:{loose}:50", {"level": "key", "id": loose, "path": {"key_id": loose}, "percent": 50,
                             "spend": "2.00", "budget": "2.00"}),
        (f"key:{loose}:100", {"level": "key", "id": loose, "path": {"key_id": loose}, "percent": 100,
                              "spend": "2.00", "budget": "2.00"}),
    ])


async def test_a_customer_without_level_budgets_gets_only_its_own(pg, redis, tenant):
    c = await tenant(cap="10.00")
    _, _, k = await tree(pg, redis, c)  # a path, no budget at any level
    p = Pipeline(pg, redis, cache_ttl_s=0)
    first = requests(c, k, 6)
    await p.process_raw(raw([first]))
    await p.process_raw(raw([first]))
    [a] = await alerts(pg, c)
    assert (a["type"], a["threshold"], a["source_event_id"]) == ("spend.threshold", "50", first["id"])
    assert a["data"] == {"level": "customer", "percent": 50, "spend": "6.00", "cap": "10.00"}


async def test_a_budget_set_later_is_judged_by_the_spend_so_far(pg, redis, tenant):
    """The budget is read from the limits check.lua enforces: one given to a team mid-period counts
    the team's spend of the whole period (kept by settlement whether or not it had a budget)."""
    c = await tenant()
    t, _, k = await tree(pg, redis, c)
    p = Pipeline(pg, redis, cache_ttl_s=0)
    await p.process_raw(raw([requests(c, k, 6)]))
    assert await alerts(pg, c) == []
    await hierarchy.update_team(pg, redis, t, {"limits": {"spend_cap": "10.00"}})
    e = requests(c, k, 1)
    await p.process_raw(raw([e]))
    [a] = await alerts(pg, c)
    assert (a["threshold"], a["source_event_id"], a["data"]["spend"]) == (f"team:{t}:50", e["id"], "7.00")


def test_budget_rows_by_level():
    s = alert_rules.parse_settings({"spend_cap_percents": [80, 50, 100]})
    rows = alert_rules.budget_rows("c", s, "202612", "agent", "ag1", {"team_id": "t1", "app_id": "ag1"},
                                   7_999_999, 10_000_000, "evt_1")
    assert [(r[1], r[2]) for r in rows] == [("budget.threshold", "agent:ag1:50")]  # 79.99999 % is not 80
    assert [r[2] for r in alert_rules.budget_rows("c", s, "p", "team", "t1", {}, 8_000_000, 10_000_000, None)] == [
        "team:t1:50", "team:t1:80"]
    assert alert_rules.budget_rows("c", s, "p", "team", "t1", {}, 5, None, None) == []
    assert alert_rules.budget_rows("c", s, "p", "team", "t1", {}, 5, 0, None) == []
    assert limits.encoded_cap(b"::10000000:") == 10_000_000 and limits.encoded_cap(b"60:::4") is None
    assert limits.encoded_cap(None) is None
