"""Streaming equals batch with agent sessions, through the real rating pipeline (PostgreSQL and
Redis): events of several sessions arrive in any interleaving and batching, ends late, twice or
never, batches redelivered, idle sweeps in between; the ledger equals the batch rating of what the
sessions aggregated (each session one event with `sessions: 1`) plus the events that came after
their session closed, computed here independently of the engine."""
from __future__ import annotations

import time
from decimal import Decimal

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.rater.conftest import TS, raw, redis_state
from tests.tenants import uid
from tollgate.money import to_micros
from tollgate.plans import load_plan_text
from tollgate.rating.stages.pipeline import run_batch

PLAN = """
id: {pid}
billing_mode: {mode}
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}
sessions: {{idle_timeout_seconds: 600}}
charges:
  - {{id: session, model: per_unit, metric: sessions, unit_price: "0.05"}}
  - id: input_tokens
    model: graduated
    metric: input_tokens
    tiers:
      - {{up_to: 5000, unit_price: "0.0000041"}}
      - {{up_to: null, unit_price: "0.0000017"}}
  - {{id: output_tokens, model: per_unit, metric: output_tokens, unit_price: "0.0000151"}}
  - {{id: tool_calls, model: per_unit, metric: tool_calls, unit_price: "0.001"}}
  - id: task_completed
    model: composite
    outcome: task_completed
    unit_price: "2.50"
    metered: [input_tokens, output_tokens]
"""


def expected_micros(billables: list[dict[str, int]]) -> int:
    """The batch price of these billable events under PLAN, by hand: an outcome's price covers the
    tokens of its own billable event (metered, not billed); graduated input tokens by their total."""
    sessions = outcomes = tools = out_tokens = in_tokens = 0
    for m in billables:
        sessions += m.get("sessions", 0)
        tools += m.get("tool_calls", 0)
        outcomes += m.get("task_completed", 0)
        if not m.get("task_completed"):
            in_tokens += m.get("input_tokens", 0)
            out_tokens += m.get("output_tokens", 0)
    graduated = min(in_tokens, 5000) * Decimal("0.0000041") + max(in_tokens - 5000, 0) * Decimal("0.0000017")
    return (sessions * 50_000 + outcomes * 2_500_000 + tools * 1_000 + to_micros(graduated)
            + to_micros(out_tokens * Decimal("0.0000151")))


measurements = st.dictionaries(st.sampled_from(["input_tokens", "output_tokens", "tool_calls", "task_completed"]),
                               st.integers(1, 4000), min_size=1, max_size=3)
session_plans = st.lists(st.fixed_dictionaries({
    "start": st.booleans(),
    "events": st.lists(measurements, max_size=4),
    "ends": st.integers(0, 2),  # 0: the end never comes; 2: it comes twice (two event ids)
    "end_measures": st.none() | measurements,
}), min_size=1, max_size=3)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=session_plans, data=st.data())
async def test_any_arrival_order_bills_what_the_sessions_aggregated(pg, redis, pipeline, make_customer, plan_for,
                                                                  plans, data):
    cid = await make_customer(plan_for("prepaid", PLAN), wallet_micros=10**12)
    events = []  # (event body, its session index)
    for i, p in enumerate(plans):
        sid = f"s{i}"
        if p["start"]:
            events.append(_event(cid, sid, "agent.session.start", {}))
        events += [_event(cid, sid, "agent.tool_call", m) for m in p["events"]]
        events += [_event(cid, sid, "agent.session.end", p["end_measures"] or {}) for _ in range(p["ends"])]
    assume(events)
    order = data.draw(st.permutations(events), label="arrival order")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(order) - 1, 1)), max_size=4), label="batch cuts"))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)]) if order[a:b]]
    sweeps = data.draw(st.sets(st.integers(0, len(batches)), max_size=2), label="idle sweeps after batch")
    redeliver = data.draw(st.sets(st.integers(0, len(batches) - 1), max_size=2), label="batches redelivered")

    # The model: in arrival order, an event joins its session while the session is open; an end
    # closes it; a sweep closes every open one; after the close a measured event is billed alone.
    open_: dict[str, dict[str, int]] = {}
    closed: set[str] = set()
    billables: list[dict[str, int]] = []

    def close(sid: str) -> None:
        billables.append({**open_.pop(sid), "sessions": 1})
        closed.add(sid)

    far = time.time() + 10 * 600
    for n, batch in enumerate(batches):
        for e in batch:
            sid, ms = e["session_id"], {m["metric"]: m["value"] for m in e["measurements"]}
            if sid in closed:
                if ms:
                    billables.append(ms)
                continue
            acc = open_.setdefault(sid, {})
            for m, q in ms.items():
                acc[m] = acc.get(m, 0) + q
            if e["event_type"] == "agent.session.end":
                close(sid)
        res = await pipeline.process_raw(raw(batch))
        assert res.dead == []
        if n in redeliver:
            assert (await pipeline.process_raw(raw(batch))).rated == 0
        if n + 1 in sweeps:
            await pipeline.close_idle(now=far, customer_ids=[cid])
            for sid in list(open_):
                close(sid)
    await pipeline.close_idle(now=far, customer_ids=[cid])  # the ends that never came
    for sid in list(open_):
        close(sid)

    want = expected_micros(billables)
    ledger = await pg.fetchval("SELECT coalesce(sum(amount_micros), 0)::int8 FROM ledger_lines WHERE customer_id = $1",
                               cid)
    spend = await pg.fetchval("SELECT coalesce(sum(spend_micros), 0)::int8 FROM processed_events"
                              " WHERE customer_id = $1", cid)
    assert ledger == spend == want
    assert (await redis_state(redis, cid))["spend"] == want
    # and the rater's own streaming = batch: its cumulatives rated at once give the ledger
    cum = {(r["charge_id"], r["dimension_key"]): r["quantity"] for r in await pg.fetch(
        "SELECT charge_id, dimension_key, quantity FROM rating_cumulatives WHERE customer_id = $1", cid)}
    plan = load_plan_text(PLAN.format(pid="x", mode="prepaid"))
    assert run_batch(plan, cum).total_micros == want
    sessions = await pg.fetch("SELECT status, amount_micros FROM agent_sessions WHERE customer_id = $1", cid)
    assert all(s["status"] == "closed" for s in sessions)
    assert len(sessions) == sum(1 for b in billables if "sessions" in b)


def _event(cid: str, sid: str, event_type: str, ms: dict[str, int]) -> dict:
    eid = uid("evt")
    return {"kind": "usage", "id": eid, "customer_id": cid, "key_id": "key_1", "correlation_id": f"req_{eid}",
            "event_type": event_type, "session_id": sid, "timestamp": TS, "received_at": TS, "properties": {},
            "measurements": [{"metric": m, "value": v} for m, v in ms.items()]}
