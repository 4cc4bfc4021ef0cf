"""The plan estimate hash projected for in-gateway checks (control.projection.gateway_estimate):
the gateway's sum over its fields equals Plan.estimate_micros, and re-projecting a plan drops the
prices of models it no longer names."""
from __future__ import annotations

from decimal import Decimal

from control.projection.gateway_estimate import estimate_fields
from control.projection.writes import project_plan
from tests.tenants import plan_doc
from tollgate.keys import plan_estimate_record
from tollgate.plans import parse_plan


def gateway_estimate(fields: dict[str, str], model: str | None, est: dict[str, int]) -> int:
    """What the plugin computes (core.estimate_micros): quantity x picounit price, rounded up once."""
    pico = sum(q * int(fields.get(f"{m}@{model}") or fields[m]) for m, q in est.items())
    return -(-pico // 10**6)


def plan(**overrides):
    doc = plan_doc("0.01")
    doc["charges"][1]["overrides"] = [{"match": {"model": m}, "unit_price": p} for m, p in overrides.items()]
    doc["charges"].append({"id": "out2", "model": "graduated", "metric": "output_tokens",
                           "tiers": [{"up_to": 1000, "unit_price": "0.000001"}, {"up_to": None, "unit_price": "0.000002"}]})
    doc["charges"].append({"id": "per_tool", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.0000001",
                           "overrides": [{"match": {"tool": "search"}, "unit_price": "1"}]})  # never a gateway's
    return parse_plan(doc)


def test_fields_give_the_plans_estimate():
    p = plan(**{"gpt-4o": "0.0000105", "o1": "0.00006"})
    fields = estimate_fields(p)
    assert fields["hold_ttl_ms"] == "300000" and fields["anchor_day"] == "1"
    assert fields["output_tokens@o1"] == str(int((Decimal("0.00006") + Decimal("0.000002")) * 10**12))  # summed charges
    for model in ("gpt-4o", "o1", "claude", None):
        for est in ({"requests": 1, "input_tokens": 7, "output_tokens": 3},
                    {"requests": 1, "input_tokens": 100_000_000, "output_tokens": 100_000_000},
                    {"requests": 0, "input_tokens": 1, "output_tokens": 0}):
            dims = {"model": model} if model else {}
            assert gateway_estimate(fields, model, est) == p.estimate_micros(dims, est), (model, est)


async def test_reprojecting_a_plan_drops_a_model_it_no_longer_names(redis):
    p = plan(**{"gpt-4o": "0.0000105"})
    await project_plan(redis, p)
    key = plan_estimate_record(p.id)
    assert (await redis.hget(key, "output_tokens@gpt-4o")).decode() == estimate_fields(p)["output_tokens@gpt-4o"]
    doc = dict(p.document)
    doc["charges"] = [c for c in doc["charges"] if c["id"] != "out"]
    await project_plan(redis, parse_plan(doc))
    got = {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}
    assert got == estimate_fields(parse_plan(doc)) and "output_tokens@gpt-4o" not in got
