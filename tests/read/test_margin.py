"""Margin over HTTP: price, cost, margin and margin % of a period's usage, from the rollups the
rater writes (compacted and not), by day, metric, model, outcome; equal to the ledger's sums."""
from __future__ import annotations

from control.accounts import cost_catalogs
from rater import rollups
from tests.rater.conftest import PERIOD, TS, raw
from tests.read.conftest import ADMIN
from tests.tenants import uid
from tollgate.money import to_micros

PLAN = """
id: {pid}
billing_mode: postpaid
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}
cost_catalog: {cat}
charges:
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.000004"}}
  - id: contract_reviewed
    model: composite
    outcome: contract_reviewed
    unit_price: "2.50"
    metered: [input_tokens]
discounts: [{{type: percent, value: "10"}}]
tax: {{percent: "20"}}
costs:
  contract_reviewed: "0.50"
"""
CATALOG = """
id: {cat}
costs:
  input_tokens: {{unit_cost: "0.000003", costs_by: {{dimension: model, costs: {{mini: "0.000001"}}}}}}
"""


def event(cid: str, model: str, **m: int) -> dict:
    return {"kind": "usage", "id": uid("evt"), "customer_id": cid, "key_id": "key_1", "correlation_id": uid("req"),
            "event_type": "llm.completion", "timestamp": TS, "properties": {"model": model},
            "measurements": [{"metric": k, "value": v} for k, v in m.items()]}


async def test_margin_by_outcome_metric_model_and_day(pg, client, pipeline, make_customer):
    cat = uid("cat")
    await cost_catalogs.apply_catalog(pg, CATALOG.format(cat=cat))
    cid = await make_customer(PLAN.format(pid=uid("plan"), cat=cat))
    evs = [event(cid, "big", contract_reviewed=1, input_tokens=100_000),  # 2.50 covers 0.30 of tokens + 0.50
           event(cid, "big", input_tokens=1_000_000),  # 4.00 billed, 3.00 cost
           event(cid, "mini", input_tokens=1_000_000)]  # 4.00 billed, 1.00 cost
    assert (await pipeline.process_raw(raw(evs[:2]))).rated == 2
    async with pg.acquire() as conn:
        await rollups.compact(conn)  # one part compacted, one still in the deltas: both are read
    assert (await pipeline.process_raw(raw(evs[2:]))).rated == 1

    r = await client.get(f"/admin/customers/{cid}/margin", params={"period": PERIOD}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    # price: 10.50 less the 10 % discount = 9.45 (tax is not revenue); cost 0.50 + 0.30 + 3.00 + 1.00
    assert body["total"] == {"price": "9.45", "cost": "4.80", "margin": "4.65", "margin_percent": "49.21"}
    assert body["rows"] == [] and body["period"] == PERIOD
    ledger = await pg.fetchrow("SELECT sum(amount_micros) FILTER (WHERE kind <> 'tax')::int8 AS price,"
                               " sum(cost_micros)::int8 AS cost FROM ledger_lines WHERE customer_id = $1", cid)
    assert (to_micros(body["total"]["price"]), to_micros(body["total"]["cost"])) == (ledger["price"], ledger["cost"])

    r = await client.get(f"/admin/customers/{cid}/margin", params={"period": PERIOD, "by": "outcome"}, headers=ADMIN)
    rows = {x["outcome"]: (x["price"], x["cost"], x["margin_percent"]) for x in r.json()["rows"]}
    # the outcome: its price against its own cost and the tokens metered under it; outside (null):
    # the tokens billed alone, and the discount (it has no outcome)
    assert rows == {None: ("6.95", "4.00", "42.45"), "contract_reviewed": ("2.50", "0.80", "68.00")}

    r = await client.get(f"/admin/customers/{cid}/margin", params={"period": PERIOD, "by": "metric,model"},
                         headers=ADMIN)
    rows = {(x["metric"], x["model"]): (x["quantity"], x["price"], x["cost"]) for x in r.json()["rows"]}
    assert rows[("input_tokens", "big")] == (1_100_000, "4.00", "3.30")
    assert rows[("input_tokens", "mini")] == (1_000_000, "4.00", "1.00")
    assert rows[("contract_reviewed", "big")] == (1, "2.50", "0.50")
    assert rows[("discount", "big")][1:] == ("-0.65", "0.00") and rows[("tax", "mini")][1:] == ("0.00", "0.00")

    r = await client.get(f"/admin/customers/{cid}/margin", params={"by": "day"}, headers=ADMIN)
    assert [(x["day"], x["margin"]) for x in r.json()["rows"]] == [(TS[:10], "4.65")]


async def test_margin_input_errors_name_the_field(client, pg, make_customer, plan_for):
    cid = await make_customer(plan_for())
    for params, field in (({"period": "2026-13"}, "period"), ({"by": "a,b,c,d,e"}, "by"), ({"by": "x y"}, "by"),
                          ({"by": "day,day"}, "by")):
        r = await client.get(f"/admin/customers/{cid}/margin", params=params, headers=ADMIN)
        assert r.status_code == 422 and r.json()["field"] == field, (params, r.text)
    r = await client.get("/admin/customers/cus_nobody/margin", headers=ADMIN)
    assert r.status_code == 404
    r = await client.get(f"/admin/customers/{cid}/margin", headers=ADMIN)
    assert r.json()["total"] == {"price": "0.00", "cost": "0.00", "margin": "0.00", "margin_percent": None}


async def test_cost_catalogs_over_http(client):
    cat = uid("cat")
    r = await client.post("/admin/cost-catalogs", content=CATALOG.format(cat=cat),
                          headers={**ADMIN, "Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    r = await client.post("/admin/cost-catalogs", json={"id": cat, "costs": {"input_tokens": "-1"}}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "costs.input_tokens"
    r = await client.get(f"/admin/cost-catalogs/{cat}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["document"]["costs"]["input_tokens"]["unit_cost"] == "0.000003"
    assert cat in [c["id"] for c in (await client.get("/admin/cost-catalogs", headers=ADMIN)).json()["cost_catalogs"]]
    r = await client.post("/admin/plans", json={"id": uid("plan"), "cost_catalog": "nope", "limits": {
        "requests_per_minute": 1, "tokens_per_minute": 1}, "charges": [{"model": "per_unit", "metric": "t", "unit_price": "1"}]},
        headers=ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "cost_catalog"
