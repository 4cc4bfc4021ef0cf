"""Alerts raised by the rater (rater.alerts through rater.pipeline) on real PostgreSQL and Redis:
each threshold fires once per period, a redelivered batch raises nothing twice, a crash between
settlement and the raise is repaired by the redelivery, and commit-at-risk and usage spikes; plus
the pure rules (tollgate.alert_rules) and the plan section's validation."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import pytest_asyncio

from control.alerts import manage as svc
from control.accounts import customers, plans, wallets
from rater.alerts import _PACE
from rater.pipeline import Pipeline
from tests.rater.conftest import raw, usage
from tests.tenants import uid
from tollgate import alert_rules
from tollgate.periods import period_of
from tollgate.plans import PlanError, load_plan_text

PLAN = """
id: {pid}
billing_mode: {mode}
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000, monthly_spend_cap: "1.00"}}
billing_period: {{anchor_day: {anchor}}}
tiers:
  - {{name: free, threshold: "0", multiplier: 1}}
  - {{name: build, threshold: "0.50", multiplier: 1}}
charges:
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.0001"}}
  - {{id: output_tokens, model: per_unit, metric: output_tokens, unit_price: "0"}}
minimum_commit: "{commit}"
{alerts}
"""


@pytest_asyncio.fixture
async def customer(pg, redis):
    async def make(mode: str = "prepaid", *, wallet: str = "0", anchor: int = 1, commit: str = "0", alerts: str = "",
                   overrides: dict | None = None) -> str:
        text = PLAN.format(pid=uid("plan"), mode=mode, anchor=anchor, commit=commit, alerts=alerts)
        applied = await plans.apply_plan(pg, redis, text)
        c = (await customers.create_customer(pg, redis, name="T", plan_id=applied["id"]))["id"]
        if wallet != "0":
            await wallets.topup(pg, redis, c, wallet)
        if overrides is not None:
            await svc.set_settings(pg, c, overrides)
        return c
    return make


async def fired(pg, c: str) -> list[tuple]:
    rows = await pg.fetch("SELECT kind, threshold, source_event_id FROM alerts WHERE customer_id = $1"
                          " ORDER BY raised_at, kind, threshold", c)
    return sorted((r["kind"], r["threshold"], r["source_event_id"]) for r in rows)


def ev(c: str, tokens: int) -> dict:
    return usage(c, tokens, 0)


async def test_each_threshold_fires_once_per_period_and_redelivery_adds_nothing(pg, redis, customer):
    c = await customer("prepaid", wallet="1.20", overrides={"balance_below": "0.50"})
    p = Pipeline(pg, redis, cache_ttl_s=0)
    # spend 0.30, 0.55 (50 %, promoted to build), 0.85 (80 %, balance 0.35 < 0.50), 1.05 (100 %)
    batches = [[ev(c, 3000)], [ev(c, 2500)], [ev(c, 3000)], [ev(c, 1000), ev(c, 1000)]]
    for b in batches:
        await p.process_raw(raw(b))
    ids = [[e["id"] for e in b] for b in batches]
    want = sorted([("spend.threshold", "50", ids[1][0]), ("tier.promoted", "build", ids[1][0]),
                   ("spend.threshold", "80", ids[2][0]), ("wallet.balance_low", "0.50", ids[2][0]),
                   ("spend.threshold", "100", ids[3][1])])
    assert await fired(pg, c) == want
    for b in batches:  # redelivered to this rater and to a restarted one (which remembers nothing)
        await p.process_raw(raw(b))
        await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw(b))
    assert await fired(pg, c) == want
    a = {r["type"]: r for r in await svc.list_alerts(pg, customer_id=c)}
    assert a["spend.threshold"]["period"] == period_of(time.time())
    assert a["wallet.balance_low"]["data"] == {"balance": "0.35", "below": "0.50"}
    assert a["tier.promoted"]["data"] == {"from": "free", "to": "build"}


async def test_a_crash_between_settlement_and_the_raise_is_repaired_by_the_redelivery(pg, redis, customer):
    c = await customer("postpaid")
    batch = [ev(c, 6000)]  # 0.60: 50 % of the cap, and promoted to build

    async def crash(*a, **k):
        raise RuntimeError("the rater died right after settling")

    crashed = Pipeline(pg, redis, cache_ttl_s=0)
    crashed.alerts.raise_after_settlement = crash
    with pytest.raises(RuntimeError):
        await crashed.process_raw(raw(batch))
    assert await fired(pg, c) == []
    await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw(batch))  # the bus redelivers the batch
    assert await fired(pg, c) == [("spend.threshold", "50", batch[0]["id"]), ("tier.promoted", "build", batch[0]["id"])]


async def test_settings_turn_alerts_off_and_the_plan_gives_defaults(pg, redis, customer):
    c = await customer("postpaid", alerts="alerts: {spend_cap_percents: [90], tier_promoted: false}")
    off = await customer("postpaid", overrides={"spend_cap_percents": [], "tier_promoted": False})
    p = Pipeline(pg, redis, cache_ttl_s=0)
    await p.process_raw(raw([ev(c, 9500), ev(off, 9500)]))
    assert [k[:2] for k in await fired(pg, c)] == [("spend.threshold", "90")]
    assert await fired(pg, off) == []


async def test_commit_at_risk_late_in_the_period(pg, redis, customer):
    """Anchor day = tomorrow's day: the current period ends within a day, so it is nearly over,
    and 0.10 spent projects far below a 100.00 commit."""
    tomorrow = datetime.fromtimestamp(time.time() + 86400, timezone.utc).day
    if tomorrow > 28:
        pytest.skip("anchor days stop at 28")
    c = await customer("postpaid", anchor=tomorrow, commit="100.00")
    rich = await customer("postpaid", anchor=tomorrow, commit="0.05")
    await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw([ev(c, 1000), ev(rich, 1000)]))
    [a] = await svc.list_alerts(pg, customer_id=c)
    assert (a["type"], a["threshold"], a["period"]) == ("commit.at_risk", "100.00", period_of(time.time(), tomorrow))
    assert a["data"]["spend"] == "0.10" and Decimal(a["data"]["projected"]) < 1
    assert await fired(pg, rich) == []


async def test_usage_spike_fires_once_in_the_hour(pg, redis, customer):
    c = await customer("postpaid", overrides={"usage_spike": {"factor": 3, "min_amount": "0.01"}})
    hour = int(time.time() // 3600)
    # history: 0.01 spent in the previous hour (trailing average 0.01)
    await pg.execute("INSERT INTO alert_pace (customer_id, hour, hour_micros) VALUES ($1, $2, 10000)", c, hour - 1)
    p = Pipeline(pg, redis, cache_ttl_s=0)
    await p.process_raw(raw([ev(c, 200)]))  # 0.02 this hour: not 3x
    assert await fired(pg, c) == []
    e = ev(c, 150)  # 0.035: over 0.03
    await p.process_raw(raw([e]))
    await p.process_raw(raw([ev(c, 500)]))
    [a] = await svc.list_alerts(pg, customer_id=c)
    label = datetime.fromtimestamp(hour * 3600, timezone.utc).strftime("%Y-%m-%dT%H")
    assert (a["type"], a["threshold"], a["source_event_id"]) == ("usage.spike", label, e["id"])
    assert a["data"] == {"hour": label, "hour_spend": "0.035", "trailing_average": "0.01", "factor": "3"}
    row = await pg.fetchrow("SELECT * FROM alert_pace WHERE customer_id = $1", c)
    assert (row["hour"], row["hour_micros"], row["hours"]) == (hour, 85000, 1)


async def test_the_pace_upsert_matches_roll_pace(pg):
    c = uid("pace")
    state = None
    for hour, add in ((100, 5000), (100, 7000), (101, 3000), (105, 9000), (105, 1), (130, 42)):
        await pg.execute(_PACE, [c], [hour], [add])
        state = (hour, add, 0, 0) if state is None else alert_rules.roll_pace(*state, hour, add)
        row = await pg.fetchrow("SELECT hour, hour_micros, avg_micros, hours FROM alert_pace WHERE customer_id = $1", c)
        assert (row[0], row[1], row[3]) == state[:2] + (state[3],)
        assert abs(row[2] - state[2]) <= Decimal("0.001")


def test_rules():
    s = alert_rules.parse_settings({"spend_cap_percents": [100, 50], "balance_below": "2"})
    assert s.spend_cap_percents == (50, 100)
    assert [r[2] for r in alert_rules.spend_rows("c", s, "202612", 500_000, 1_000_000, None)] == ["50"]
    assert alert_rules.spend_rows("c", s, "202612", 5, None, None) == []
    assert alert_rules.balance_rows("c", s, "p", "postpaid", 0, None) == []
    assert alert_rules.balance_rows("c", s, "p", "hybrid", 1_999_999, None)[0][2] == "2.00"
    start, end = datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc)
    mid = datetime(2026, 12, 16, 12, tzinfo=timezone.utc).timestamp()  # half over
    assert alert_rules.commit_rows("c", s, "202612", 49_000_000, 100_000_000, start, end, mid, None)
    assert not alert_rules.commit_rows("c", s, "202612", 51_000_000, 100_000_000, start, end, mid, None)
    early = datetime(2026, 12, 10, tzinfo=timezone.utc).timestamp()
    assert not alert_rules.commit_rows("c", s, "202612", 0, 100_000_000, start, end, early, None)
    assert alert_rules.trailing_average(Decimal(10000) / 12, 1) == pytest.approx(Decimal(10000))


@pytest.mark.parametrize("section, field", [
    ("alerts: [1]", "alerts"),
    ("alerts: {spend_cap_percents: [50, 0]}", "alerts.spend_cap_percents[1]"),
    ("alerts: {balance_below: 1.5}", "alerts.balance_below"),
    ("alerts: {balance_below: \"-1\"}", "alerts.balance_below"),
    ("alerts: {usage_spike: {factor: \"0.5\"}}", "alerts.usage_spike.factor"),
    ("alerts: {usage_spike: {factor: 2, min_amount: x}}", "alerts.usage_spike.min_amount"),
    ("alerts: {commit_at_risk: {after_percent: 0}}", "alerts.commit_at_risk.after_percent"),
    ("alerts: {tier_promoted: 1}", "alerts.tier_promoted"),
    ("alerts: {spike: 1}", "alerts.spike"),
])
def test_the_plan_section_is_validated_naming_the_field(section, field):
    text = PLAN.format(pid="p1", mode="prepaid", anchor=1, commit="0", alerts=section)
    with pytest.raises(PlanError) as e:
        load_plan_text(text)
    assert e.value.field == field


def test_a_plan_without_the_section_has_the_defaults():
    plan = load_plan_text(PLAN.format(pid="p1", mode="prepaid", anchor=1, commit="0", alerts=""))
    assert plan.alerts.to_json() == {"spend_cap_percents": [50, 80, 100], "balance_below": None, "tier_promoted": True,
                                     "commit_at_risk": {"after_percent": 50}, "usage_spike": None}


async def test_the_control_plane_sweep_judges_customers_without_events(pg, redis, customer):
    """Nothing rated at all, the period nearly over: the sweep (control.alerts.sweep) raises the
    same commit.at_risk the rater would, once."""
    from control.alerts.sweep import CommitSweep  # noqa: PLC0415

    tomorrow = datetime.fromtimestamp(time.time() + 86400, timezone.utc).day
    if tomorrow > 28:
        pytest.skip("anchor days stop at 28")
    idle = await customer("postpaid", anchor=tomorrow, commit="100.00")
    off = await customer("postpaid", anchor=tomorrow, commit="100.00", overrides={"commit_at_risk": None})
    later = datetime.fromtimestamp(time.time() + 2 * 86400, timezone.utc).day  # over 1 day left: < 97 % elapsed
    if later > 28:
        pytest.skip("anchor days stop at 28")
    early = await customer("postpaid", anchor=later, commit="100.00", overrides={"commit_at_risk": {"after_percent": 99}})
    sweep = CommitSweep()
    ids = await sweep.run(pg, redis)
    assert [(k, t) for k, t, _ in await fired(pg, idle)] == [("commit.at_risk", "100.00")]
    assert await fired(pg, off) == [] and await fired(pg, early) == []
    [a] = await svc.list_alerts(pg, customer_id=idle)
    assert a["id"] in ids and a["data"]["spend"] == "0.00" and a["source_event_id"] is None
    assert not set(await sweep.run(pg, redis)) & set(ids)  # once
    assert not set(await CommitSweep().run(pg, redis)) & set(ids)  # a restarted sweep too
