"""Usage from the rollups the rater writes in its rating transaction: by metric, by dimension, by
key, per hour or day; amounts add up to the ledger exactly."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from control.accounts import api_keys
from tests.rater.conftest import raw, usage
from tests.read.conftest import ADMIN
from tollgate.money import to_micros

DAY = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)


def _ts(hours: float) -> str:
    return (DAY + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def test_usage_by_model_per_day_and_hour_adds_up_to_the_ledger(pg, redis, client, pipeline, plan_for,
                                                                      make_customer):
    c = await make_customer(plan_for())
    evs = [usage(c, 1000, 100, ts=_ts(1.5), model="big"), usage(c, 2000, 200, ts=_ts(1.7), model="small"),
           usage(c, 3000, 300, ts=_ts(26), model="big", key_id="key_2"),
           usage(c, 5, 5, ts=_ts(26.1), properties={}, key_id="key_2")]
    res = await pipeline.process_raw(raw(evs))
    assert res.rated == 4
    await pipeline.process_raw(raw(evs[:2]))  # a redelivery adds nothing to the rollups either

    q = {"from": DAY.date().isoformat(), "to": (DAY + timedelta(days=2)).date().isoformat()}
    r = await client.get(f"/admin/customers/{c}/usage", params={**q, "group_by": "model", "metric": "input_tokens"},
                         headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(x["bucket"][:10], x["dimensions"]["model"], x["quantity"], x["events"]) for x in body["rows"]] == [
        (DAY.date().isoformat(), "big", 1000, 1), (DAY.date().isoformat(), "small", 2000, 1),
        ((DAY + timedelta(days=1)).date().isoformat(), "big", 3000, 1),
        ((DAY + timedelta(days=1)).date().isoformat(), None, 5, 1)]

    r = await client.get(f"/admin/customers/{c}/usage", params={**q, "bucket": "hour"}, headers=ADMIN)
    body = r.json()
    hours = sorted({x["bucket"] for x in body["rows"]})
    assert hours == [(DAY + timedelta(hours=h)).isoformat() for h in (1, 26)]
    ledger = await pg.fetchval("SELECT sum(amount_micros)::int8 FROM ledger_lines WHERE customer_id = $1", c)
    assert sum(to_micros(t["amount"]) for t in body["totals"]) == ledger
    assert {t["metric"]: t["quantity"] for t in body["totals"]} == {"input_tokens": 6005, "output_tokens": 605}
    assert all(isinstance(t["amount"], str) for t in body["totals"])


async def test_key_usage_and_grouping_by_key(pg, redis, client, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for())
    key = await api_keys.create_api_key(pg, redis, c)
    evs = [usage(c, 10, 1, ts=_ts(2), key_id=key["id"]), usage(c, 20, 2, ts=_ts(3), key_id="key_other")]
    assert (await pipeline.process_raw(raw(evs))).rated == 2
    q = {"from": DAY.isoformat(), "to": (DAY + timedelta(days=1)).isoformat(), "metric": "input_tokens"}
    r = await client.get(f"/admin/keys/{key['id']}/usage", params=q, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [x["quantity"] for x in r.json()["rows"]] == [10]
    r = await client.get(f"/admin/customers/{c}/usage", params={**q, "group_by": "key"}, headers=ADMIN)
    assert sorted((x["key_id"], x["quantity"]) for x in r.json()["rows"]) == sorted([(key["id"], 10), ("key_other", 20)])


async def test_bad_usage_queries_are_4xx_naming_the_field(client, customer_id):
    for params, field in [({"bucket": "week"}, "bucket"), ({"from": "yesterday"}, "from"),
                          ({"from": "2026-01-01", "to": "2025-01-01"}, "to"),
                          ({"bucket": "hour", "from": "2020-01-01", "to": "2026-01-01"}, "from"),
                          ({"group_by": "a,b,c,d,e"}, "group_by"), ({"group_by": "mo del"}, "group_by"),
                          ({"metric": "x" * 100}, "metric")]:
        r = await client.get(f"/admin/customers/{customer_id}/usage", params=params, headers=ADMIN)
        assert r.status_code == 422 and r.json()["field"] == field, (params, r.text)
    r = await client.get("/admin/customers/nope/usage", headers=ADMIN)
    assert r.status_code == 404
    r = await client.get("/admin/keys/nope/usage", headers=ADMIN)
    assert r.status_code == 404


async def test_compaction_moves_deltas_into_rollups_and_reads_stay_exact(pg, redis, client, pipeline, plan_for,
                                                                         make_customer):
    from rater import rollups  # noqa: PLC0415

    c = await make_customer(plan_for())
    q = {"from": DAY.date().isoformat(), "to": (DAY + timedelta(days=1)).date().isoformat(), "group_by": "model,key"}

    async def read(bucket: str = "day") -> list:
        r = await client.get(f"/admin/customers/{c}/usage", params={**q, "bucket": bucket}, headers=ADMIN)
        return [(x["metric"], x["dimensions"]["model"], x["key_id"], x["quantity"], x["amount"], x["events"])
                for x in r.json()["rows"]]

    await pipeline.process_raw(raw([usage(c, 100, 10, ts=_ts(5), model="tab\there\\"), usage(c, 1, 1, ts=_ts(5))]))
    before, hourly = await read(), await read("hour")
    async with pg.acquire() as conn:
        assert await rollups.compact(conn) >= 4
    assert await pg.fetchval("SELECT count(*) FROM usage_rollup_deltas WHERE customer_id = $1", c) == 0
    assert (await read(), await read("hour")) == (before, hourly) == (hourly, before)
    assert ("input_tokens", "tab\there\\", "key_1", 100, "0.00031", 1) in before  # escaped through COPY
    await pipeline.process_raw(raw([usage(c, 100, 10, ts=_ts(5), model="tab\there\\")]))  # half in deltas
    after = await read()
    assert ("input_tokens", "tab\there\\", "key_1", 200) in [x[:4] for x in after]
    async with pg.acquire() as conn:
        await rollups.compact(conn)
    assert await read() == after
