"""Composite (M:N) outcomes through the rating pipeline (real PostgreSQL and Redis): the issue's
example, one `contract_reviewed` at 2.50 with 1,000 input tokens, is 2.50 in the ledger, the
tokens recorded under the outcome for margin; tokens without the outcome are billed."""
from __future__ import annotations

from tests.rater.conftest import PLAN, TS, raw
from tests.tenants import uid

OUTCOME = PLAN + """  - id: contract_reviewed
    model: composite
    outcome: contract_reviewed
    unit_price: "2.50"
    metered: [input_tokens, output_tokens]
"""


def _event(cid: str, measurements: dict[str, int]) -> dict:
    return {"kind": "usage", "id": uid("evt"), "customer_id": cid, "key_id": "key_1", "correlation_id": uid("req"),
            "event_type": "agent.outcome", "timestamp": TS, "properties": {},
            "measurements": [{"metric": m, "value": v} for m, v in measurements.items()]}


async def test_the_outcome_covers_the_tokens_of_its_event(pg, pipeline, make_customer, plan_for):
    cid = await make_customer(plan_for("postpaid", OUTCOME))
    with_outcome = _event(cid, {"contract_reviewed": 1, "input_tokens": 1000})
    tokens_alone = _event(cid, {"input_tokens": 1000})
    assert (await pipeline.process_raw(raw([with_outcome, tokens_alone]))).rated == 2
    rows = await pg.fetch("SELECT event_id, charge_id, kind, metric, quantity, amount_micros FROM ledger_lines"
                          " WHERE customer_id = $1 ORDER BY event_id, line_no", cid)
    got = {(r["event_id"], r["charge_id"], r["kind"], r["metric"], r["quantity"], r["amount_micros"]) for r in rows}
    assert got == {
        (with_outcome["id"], "contract_reviewed", "usage", "contract_reviewed", 1, 2_500_000),
        (with_outcome["id"], "contract_reviewed", "metered", "input_tokens", 1000, 0),
        (tokens_alone["id"], "input_tokens", "usage", "input_tokens", 1000, 3_100),  # 0.0000031 a token
    }
    assert await pg.fetchval("SELECT sum(spend_micros) FROM processed_events WHERE customer_id = $1", cid) == 2_503_100
