"""The standard API product (examples/plans/standard-api.yaml) through the real processes: an
operator sets up customer -> team -> app -> key and tops up the wallet over the admin API; a
gateway checks and reports three requests on three models; the rater bills exactly what the
plan's prices say, every line attributed to the key's path, the holds released, the wallet debited."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.products.conftest import holds, ledger, micros, wait_settled

# The prices of examples/plans/standard-api.yaml, read by hand: (metric, model) -> unit price;
# model None = a model the plan does not list.
PRICE = {
    ("requests", None): Decimal("0.0005"),
    ("input_tokens", None): Decimal("0.000003"), ("input_tokens", "gpt-4o"): Decimal("0.000004"),
    ("input_tokens", "gpt-4o-mini"): Decimal("0.0000003"),
    ("output_tokens", None): Decimal("0.000012"), ("output_tokens", "gpt-4o"): Decimal("0.000015"),
    ("output_tokens", "gpt-4o-mini"): Decimal("0.0000012"),
}
TOPUP = Decimal("20.00")

# (model, the check's estimate, the usage reported)
REQUESTS = [
    ("gpt-4o", {"requests": 1, "input_tokens": 1500, "output_tokens": 800},
     {"requests": 1, "input_tokens": 1200, "output_tokens": 300}),
    ("gpt-4o-mini", {"requests": 1, "input_tokens": 1000, "output_tokens": 1000},
     {"requests": 1, "input_tokens": 2000, "output_tokens": 500}),
    ("llama-3-70b", {"requests": 1, "input_tokens": 500, "output_tokens": 500},
     {"requests": 1, "input_tokens": 700, "output_tokens": 100}),
]


def price(metric: str, model: str) -> Decimal:
    return PRICE.get((metric, model), PRICE[(metric, None)])


@pytest.mark.slow
async def test_standard_api_requests_billed_per_request_and_model(pg, stack):
    applied = await stack.apply("plans/standard-api.yaml")
    assert applied["id"] == "standard-api"
    cid = await stack.customer("standard-api", str(TOPUP))
    team = await stack.team(cid, "Web")
    app = await stack.app(cid, team, "app", "Help centre")
    key_id, api_key = await stack.key(cid, app)

    want_lines, want_holds, total = set(), {}, 0
    for model, estimate, used in REQUESTS:
        decision = await stack.check(api_key, {"model": model}, estimate)
        assert (decision["decision"], decision["reason"]) == ("ALLOW", "ok"), decision
        event = await stack.usage(api_key, decision["hold_id"], "llm.completion", {"model": model}, used)
        hold = micros(sum(price(m, model) * q for m, q in estimate.items()))  # the estimate at this model's prices
        want_holds[decision["hold_id"]] = ("settled", hold, hold, event)
        for metric, q in used.items():
            amount = micros(price(metric, model) * q)
            want_lines.add((event, metric, "usage", metric, q, amount, 0, key_id, team, app))  # no costs in this plan
            total += amount

    await wait_settled(pg, stack, cid, events=3, holds=3)
    assert await ledger(pg, cid) == want_lines
    assert await holds(pg, cid) == want_holds
    assert (await stack.call("GET", f"/admin/customers/{cid}/holds"))["holds"] == []
    wallet = await stack.call("GET", f"/admin/customers/{cid}/wallet")
    assert (Decimal(wallet["balance"]), Decimal(wallet["held"])) == (TOPUP - Decimal(total) / 1_000_000, 0), wallet
    assert await pg.fetchval("SELECT sum(wallet_micros)::int8 FROM processed_events WHERE customer_id = $1", cid) == total

    # The read API: usage by model and by the hierarchy, from the rollups
    usage = await stack.call("GET", f"/admin/customers/{cid}/usage?group_by=model,team,app")
    got = {(r["metric"], r["dimensions"]["model"], r["team_id"], r["app_id"]): (r["quantity"], Decimal(r["amount"]))
           for r in usage["rows"]}
    assert got == {(m, model, team, app): (q, price(m, model) * q) for model, _, used in REQUESTS for m, q in used.items()}
