"""Costs through the rating pipeline (real PostgreSQL and Redis): the ledger records each line's
cost beside its price, from the plan's own costs and its cost catalog's; failed tool calls are
free but costed; per-event costs add up to the period's exact cost; a new catalog version prices
the next batch."""
from __future__ import annotations

import pytest

from control.accounts import cost_catalogs, plans
from control.errors import InvalidInput
from rater.pipeline import Pipeline
from tests.rater.conftest import TS, raw
from tests.tenants import uid

CATALOG = """
id: {cat}
currency: USD
costs:
  input_tokens:
    unit_cost: "0.0000025"
    costs_by: {{dimension: model, costs: {{mini: "0.00000015"}}}}
  output_tokens: "{out_cost}"
"""

MCP = """
id: {pid}
billing_mode: postpaid
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}
cost_catalog: {cat}
charges:
  - id: tool_calls
    model: per_unit
    metric: tool_calls
    unit_price: "0.001"
    bill_failed: false
    prices_by: {{dimension: tool, prices: {{web_search: "0.005", run_sql: "0.002"}}}}
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.000004"}}
  - {{id: output_tokens, model: per_unit, metric: output_tokens, unit_price: "0.000016"}}
costs:
  tool_calls:
    unit_cost: "0.0002"
    costs_by: {{dimension: tool, costs: {{web_search: "0.003"}}}}
"""


def call(cid: str, tool: str, status: str, model: str = "big", tokens: tuple[int, int] = (0, 0), **fields) -> dict:
    m = {"tool_calls": 1, "input_tokens": tokens[0], "output_tokens": tokens[1]}
    return {"kind": "usage", "id": uid("evt"), "customer_id": cid, "key_id": "key_1", "correlation_id": uid("req"),
            "event_type": "mcp.tool_call", "timestamp": TS,
            "properties": {"tool": tool, "status": status, "duration_ms": 840, "model": model},
            "measurements": [{"metric": k, "value": v} for k, v in m.items() if v], **fields}


@pytest.fixture
def mcp_customer(pg, redis, make_customer):
    async def make(out_cost: str = "0.00001") -> tuple[str, str]:
        cat = uid("cat")
        await cost_catalogs.apply_catalog(pg, CATALOG.format(cat=cat, out_cost=out_cost))
        return await make_customer(MCP.format(pid=uid("plan"), cat=cat)), cat
    return make


async def _lines(pg, cid):
    rows = await pg.fetch("SELECT event_id, kind, charge_id, metric, quantity, amount_micros, cost_micros"
                          " FROM ledger_lines WHERE customer_id = $1", cid)
    return {(r["event_id"], r["kind"], r["metric"]): (r["amount_micros"], r["cost_micros"]) for r in rows}


async def test_the_ledger_records_cost_beside_price(pg, pipeline, mcp_customer):
    cid, _ = await mcp_customer()
    ok = call(cid, "web_search", "success", tokens=(1000, 100))
    failed = call(cid, "web_search", "error", tokens=(1000, 0))
    unlisted = call(cid, "read_file", "success", model="mini", tokens=(2000, 0))
    assert (await pipeline.process_raw(raw([ok, failed, unlisted]))).rated == 3
    got = await _lines(pg, cid)
    assert got == {
        (ok["id"], "usage", "tool_calls"): (5_000, 3_000),  # the tool's price; the plan's own cost of it
        (ok["id"], "usage", "input_tokens"): (4_000, 2_500),  # the catalog's default token cost
        (ok["id"], "usage", "output_tokens"): (1_600, 1_000),
        # a failed call: the call not billed (bill_failed: false), still costed; its tokens billed
        (failed["id"], "cost", "tool_calls"): (0, 3_000),
        (failed["id"], "usage", "input_tokens"): (4_000, 2_500),
        (unlisted["id"], "usage", "tool_calls"): (1_000, 200),  # default price, default cost
        (unlisted["id"], "usage", "input_tokens"): (8_000, 300),  # the catalog's per-model cost
    }
    # the invoice's lines are the customer's: no cost line among them, amounts unchanged
    spend = await pg.fetchval("SELECT sum(spend_micros)::int8 FROM processed_events WHERE customer_id = $1", cid)
    assert spend == sum(a for a, _ in got.values())


async def test_fractional_costs_add_up_to_the_period_cost_in_any_batching(pg, pipeline, mcp_customer):
    cid, _ = await mcp_customer()
    evs = [call(cid, "read_file", "success", model="mini", tokens=(7, 0)) for _ in range(40)]
    for i in range(0, 40, 7):  # several transactions: the cost cumulative is carried in PostgreSQL
        await pipeline.process_raw(raw(evs[i:i + 7]))
    cost = await pg.fetchval("SELECT sum(cost_micros)::int8 FROM ledger_lines WHERE customer_id = $1 AND metric = $2",
                             cid, "input_tokens")
    assert cost == 42  # round(280 tokens x 0.15 micros) = 42; rounded per event it would be 40 x 1 = 40
    cum = await pg.fetchval("SELECT quantity FROM rating_cumulatives WHERE customer_id = $1 AND charge_id = '$cost'"
                            " AND dimension_key = 'input_tokens@0.00000015'", cid)
    assert cum == 280


async def test_a_new_catalog_version_costs_the_next_batch(pg, redis, mcp_customer):
    cid, cat = await mcp_customer(out_cost="0.00001")
    cached = Pipeline(pg, redis, cache_ttl_s=600)  # a customer cached for long: the stamp sees the catalog
    first = call(cid, "run_sql", "success", tokens=(0, 1000))
    await cached.process_raw(raw([first]))
    applied = await cost_catalogs.apply_catalog(pg, CATALOG.format(cat=cat, out_cost="0.00002"))
    assert (applied["version"], applied["changed"], applied["plans"]) == (2, True, 1)
    second = call(cid, "run_sql", "success", tokens=(0, 1000))
    await cached.process_raw(raw([second]))
    got = await _lines(pg, cid)
    assert got[(first["id"], "usage", "output_tokens")] == (16_000, 10_000)
    assert got[(second["id"], "usage", "output_tokens")] == (16_000, 20_000)


async def test_a_plan_names_an_existing_catalog_in_its_currency(pg, redis):
    with pytest.raises(InvalidInput) as e:
        await plans.apply_plan(pg, redis, MCP.format(pid=uid("plan"), cat="no-such-catalog"))
    assert e.value.field == "cost_catalog"
    cat = uid("cat")
    await cost_catalogs.apply_catalog(pg, CATALOG.format(cat=cat, out_cost="1").replace("USD", "EUR"))
    with pytest.raises(InvalidInput) as e:
        await plans.apply_plan(pg, redis, MCP.format(pid=uid("plan"), cat=cat))
    assert e.value.field == "cost_catalog" and "EUR" in str(e.value)
