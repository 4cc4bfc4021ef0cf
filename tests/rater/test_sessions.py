"""Agent sessions through the real rating pipeline (PostgreSQL and Redis): a session's events are
aggregated into one billable session, rated once at its end, after its idle timeout or by the
period close, whether its end comes late, twice or never; events after the close are rated alone."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from rater.periods import close_period
from tollgate.rating.sessions import billable_id
from tests.rater.conftest import PERIOD, TS, raw, redis_state
from tests.rater.test_settle_gap import _hold, _holds
from tests.tenants import uid
from tollgate.periods import period_of, prev_period
from tollgate.plans import PlanError, load_plan_text
from tollgate.rating.stages.pipeline import run_event

IDLE = 600
AGENT = """
id: {pid}
billing_mode: {mode}
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}
sessions: {{idle_timeout_seconds: %d}}
charges:
  - {{id: session, model: per_unit, metric: sessions, unit_price: "0.05"}}
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.0000031"}}
  - {{id: output_tokens, model: per_unit, metric: output_tokens, unit_price: "0.0000151"}}
  - {{id: tool_calls, model: per_unit, metric: tool_calls, unit_price: "0.001"}}
  - id: task_completed
    model: composite
    outcome: task_completed
    unit_price: "2.50"
    metered: [input_tokens, output_tokens]
""" % IDLE
NO_SESSIONS = AGENT.replace("sessions: {{idle_timeout_seconds: %d}}\n" % IDLE, "")


def ev(cid: str, sid: str | None, event_type: str = "agent.tool_call", ts: str = TS, **measurements) -> dict:
    e = {"kind": "usage", "id": uid("evt"), "customer_id": cid, "key_id": "key_1", "correlation_id": uid("req"),
         "event_type": event_type, "timestamp": ts, "received_at": ts, "properties": {"model": "m1"},
         "measurements": [{"metric": m, "value": v} for m, v in measurements.items()]}
    if sid is not None:
        e["session_id"] = sid
    return e


def price(plan_text: str, measurements: dict[str, int], cum=None) -> int:
    return run_event(load_plan_text(plan_text), {"model": "m1"}, measurements, cum or {}).total_micros


async def session_row(pg, cid: str, sid: str):
    return await pg.fetchrow("SELECT * FROM agent_sessions WHERE customer_id = $1 AND session_id = $2", cid, sid)


async def spend(pg, cid: str) -> int:
    return await pg.fetchval("SELECT coalesce(sum(spend_micros), 0)::int8 FROM processed_events WHERE customer_id = $1",
                             cid)


async def test_a_session_is_billed_once_at_its_end(pg, redis, pipeline, make_customer, plan_for):
    text = plan_for("postpaid", AGENT)
    cid = await make_customer(text)
    sid = uid("ses")
    events = [ev(cid, sid, "agent.session.start"), ev(cid, sid, input_tokens=1000, output_tokens=200, tool_calls=1),
              ev(cid, sid, "llm.completion", input_tokens=3000, output_tokens=700),
              ev(cid, sid, "agent.session.end")]
    for e in events[:3]:  # one batch each: the session stays open, nothing is charged yet
        assert (await pipeline.process_raw(raw([e]))).dead == []
    assert await spend(pg, cid) == 0
    row = await session_row(pg, cid, sid)
    assert (row["status"], row["event_count"]) == ("open", 3)
    res = await pipeline.process_raw(raw(events[3:]))
    assert (res.rated, res.dead) == (1, [])  # the billable session

    total = {"sessions": 1, "input_tokens": 4000, "output_tokens": 900, "tool_calls": 1}
    assert await spend(pg, cid) == price(text, total) == 50_000 + 12_400 + 13_590 + 1_000
    row = await session_row(pg, cid, sid)
    assert (row["status"], row["close_reason"], row["event_count"], row["amount_micros"], row["period"]) == (
        "closed", "end", 4, price(text, total), PERIOD)
    kinds = {r["event_id"]: r["kind"] for r in await pg.fetch(
        "SELECT event_id, kind FROM processed_events WHERE customer_id = $1", cid)}
    assert kinds == {**{e["id"]: "session_part" for e in events}, billable_id(cid, sid): "usage"}
    lines = await pg.fetch("SELECT event_id, metric, quantity, session_id FROM ledger_lines WHERE customer_id = $1",
                           cid)
    assert {(r["event_id"], r["metric"], r["quantity"], r["session_id"]) for r in lines} == {
        (billable_id(cid, sid), m, q, sid) for m, q in total.items()}
    assert (await redis_state(redis, cid))["spend"] == price(text, total)
    handled = await pg.fetch("SELECT event_id, handled FROM agent_session_events WHERE session_id = $1", sid)
    assert {(r["event_id"], r["handled"]) for r in handled} == {(e["id"], "aggregated") for e in events}


async def test_end_twice_redelivery_and_events_after_the_close(pg, redis, pipeline, make_customer, plan_for):
    text = plan_for("prepaid", AGENT)
    cid = await make_customer(text, wallet_micros=10_000_000)
    sid = uid("ses")
    batch = [ev(cid, sid, input_tokens=1000), ev(cid, sid, "agent.session.end", output_tokens=100)]
    await pipeline.process_raw(raw(batch))
    billed = price(text, {"sessions": 1, "input_tokens": 1000, "output_tokens": 100})
    assert await spend(pg, cid) == billed
    # the whole batch redelivered, and a second end event: nothing changes
    again = await pipeline.process_raw(raw(batch))
    assert (again.rated, again.replayed) == (0, 2)
    second_end = ev(cid, sid, "agent.session.end")
    assert (await pipeline.process_raw(raw([second_end]))).rated == 0
    assert await spend(pg, cid) == billed
    assert (await redis_state(redis, cid))["wallet"] == 10_000_000 - billed
    # a late event with measurements is rated on its own (no session fee), its lines name the session
    late = ev(cid, sid, input_tokens=500)
    assert (await pipeline.process_raw(raw([late]))).rated == 1
    assert await spend(pg, cid) == billed + price(text, {"input_tokens": 500})
    assert await pg.fetchval("SELECT session_id FROM ledger_lines WHERE event_id = $1", late["id"]) == sid
    handled = {r["event_id"]: r["handled"] for r in await pg.fetch(
        "SELECT event_id, handled FROM agent_session_events WHERE session_id = $1", sid)}
    assert handled == {batch[0]["id"]: "aggregated", batch[1]["id"]: "aggregated", second_end["id"]: "ignored",
                       late["id"]: "rated_alone"}
    row = await session_row(pg, cid, sid)
    assert (row["event_count"], row["measurements"]) == (2, '{"input_tokens": 1000, "output_tokens": 100}')


async def test_an_end_that_never_comes_is_closed_by_the_idle_sweeper(pg, redis, pipeline, make_customer, plan_for):
    text = plan_for("postpaid", AGENT)
    cid = await make_customer(text)
    sid, other = uid("ses"), uid("ses")
    now = time.time()
    recent = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    await pipeline.process_raw(raw([ev(cid, sid, input_tokens=100, ts=recent), ev(cid, other, input_tokens=7, ts=recent)]))
    assert (await pipeline.close_idle(now=now + IDLE - 5, customer_ids=[cid])).rated == 0  # not idle yet
    # `other` sees an event later: only `sid` is idle at now + IDLE + 1
    later = datetime.fromtimestamp(now + 300, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    await pipeline.process_raw(raw([ev(cid, other, output_tokens=5, ts=later)]))
    res = await pipeline.close_idle(now=now + IDLE + 1, customer_ids=[cid])
    assert res.rated == 1
    assert (await session_row(pg, cid, sid))["close_reason"] == "idle"
    assert (await session_row(pg, cid, other))["status"] == "open"
    assert await spend(pg, cid) == price(text, {"sessions": 1, "input_tokens": 100})
    # a second sweep, and the end arriving after the idle close, change nothing
    assert (await pipeline.close_idle(now=now + IDLE + 2, customer_ids=[cid])).rated == 0
    assert (await pipeline.process_raw(raw([ev(cid, sid, "agent.session.end", ts=later)]))).rated == 0
    assert await spend(pg, cid) == price(text, {"sessions": 1, "input_tokens": 100})
    assert (await pipeline.close_idle(now=now + 300 + IDLE + 1, customer_ids=[cid])).rated == 1  # `other`, idle from its last event
    assert (await session_row(pg, cid, other))["measurements"] == '{"input_tokens": 7, "output_tokens": 5}'


async def test_an_outcome_anywhere_in_the_session_covers_its_tokens(pg, pipeline, make_customer, plan_for):
    """Composite outcomes: the session is rated as one event, so an outcome reported by any of
    its events covers the tokens of all of them; the same events without a session would bill
    the tokens of the events that did not report it."""
    text = plan_for("postpaid", AGENT)
    cid = await make_customer(text)
    sid = uid("ses")
    await pipeline.process_raw(raw([ev(cid, sid, input_tokens=10_000, output_tokens=2_000),
                                    ev(cid, sid, "agent.outcome", task_completed=1),
                                    ev(cid, sid, "agent.session.end", input_tokens=1_000)]))
    lines = {(r["kind"], r["metric"], r["quantity"], r["amount_micros"]) for r in await pg.fetch(
        "SELECT kind, metric, quantity, amount_micros FROM ledger_lines WHERE customer_id = $1", cid)}
    assert lines == {("usage", "sessions", 1, 50_000), ("usage", "task_completed", 1, 2_500_000),
                     ("metered", "input_tokens", 11_000, 0), ("metered", "output_tokens", 2_000, 0)}
    # without sessions, the tokens of the events that did not report the outcome are billed
    plain = await make_customer(plan_for("postpaid", NO_SESSIONS))
    await pipeline.process_raw(raw([ev(plain, sid, input_tokens=10_000, output_tokens=2_000),
                                    ev(plain, sid, "agent.outcome", task_completed=1),
                                    ev(plain, sid, "agent.session.end", input_tokens=1_000)]))
    assert await spend(pg, plain) == 2_500_000 + 34_100 + 30_200
    # a session_id on a plan without sessions is attribution: every line carries it
    assert {r[0] for r in await pg.fetch("SELECT session_id FROM ledger_lines WHERE customer_id = $1", plain)} == {sid}
    assert await pg.fetchval("SELECT count(*) FROM agent_sessions WHERE customer_id = $1", plain) == 0


async def test_parts_release_their_holds_and_bad_parts_are_dead_lettered(pg, redis, pipeline, make_customer, plan_for):
    text = plan_for("postpaid", AGENT)
    cid = await make_customer(text)
    sid = uid("ses")
    hold = await _hold(redis, cid, 100_000)
    part = ev(cid, sid, input_tokens=100)
    part["hold_id"] = hold
    bad = ev(cid, sid, mystery_metric=3)
    empty = ev(cid, sid, "agent.tool_call")  # only start and end may measure nothing
    res = await pipeline.process_raw(raw([part, bad, empty]))
    assert sorted((d.event_id, d.reason) for d in res.dead) == sorted(
        [(bad["id"], "unknown_metric"), (empty["id"], "invalid_value")])
    assert (await redis_state(redis, cid))["held"] == 0
    assert await _holds(pg, [hold]) == {hold: ("settled", 100_000)}
    assert (await session_row(pg, cid, sid))["event_count"] == 1


async def test_the_period_close_bills_open_sessions_first(pg, redis, pipeline, make_customer, plan_for):
    text = plan_for("postpaid", AGENT)
    cid = await make_customer(text)
    await pg.execute("UPDATE customers SET created_at = now() - interval '90 days' WHERE id = $1", cid)
    last = prev_period(PERIOD)
    start = datetime.strptime(last + "15", "%Y%m%d").replace(tzinfo=timezone.utc)
    sid = uid("ses")
    old = (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await pipeline.process_raw(raw([ev(cid, sid, "agent.session.start", ts=old), ev(cid, sid, input_tokens=2000, ts=old)]))
    # a later event of the session in this period still belongs to it (billed in its first period)
    await pipeline.process_raw(raw([ev(cid, sid, output_tokens=100)]))
    assert (await session_row(pg, cid, sid))["period"] == last
    out = await close_period(pg, redis, last, customer_ids=[cid])
    billed = price(text, {"sessions": 1, "input_tokens": 2000, "output_tokens": 100})
    assert "error" not in out[0], out
    inv = await pg.fetchrow("SELECT total_micros FROM invoices WHERE customer_id = $1 AND period = $2", cid, last)
    assert inv["total_micros"] == billed
    row = await session_row(pg, cid, sid)
    assert (row["status"], row["close_reason"]) == ("closed", "period_close")
    # the end arriving after the invoice: a no-op; a late measured event is billed in this period
    await pipeline.process_raw(raw([ev(cid, sid, "agent.session.end"), ev(cid, sid, input_tokens=10)]))
    assert await pg.fetchval("SELECT sum(spend_micros) FROM processed_events WHERE customer_id = $1 AND period = $2",
                             cid, period_of(time.time())) == price(text, {"input_tokens": 10})


@pytest.mark.parametrize("doc, field", [
    ({"sessions": 5}, "sessions"),
    ({"sessions": {}}, "sessions.idle_timeout_seconds"),
    ({"sessions": {"idle_timeout_seconds": 0}}, "sessions.idle_timeout_seconds"),
    ({"sessions": {"idle_timeout_seconds": "60"}}, "sessions.idle_timeout_seconds"),
    ({"sessions": {"idle_timeout_seconds": 8 * 86400}}, "sessions.idle_timeout_seconds"),
    ({"sessions": {"idle_timeout_seconds": 60, "idle": 1}}, "sessions.idle"),
])
def test_bad_session_settings_are_refused_naming_the_field(doc, field):
    plan = load_plan_text(NO_SESSIONS.format(pid="p1", mode="postpaid")).document
    with pytest.raises(PlanError) as err:
        load_plan_text(__import__("orjson").dumps({**plan, **doc}).decode())
    assert err.value.field == field
    assert load_plan_text(AGENT.format(pid="p1", mode="postpaid")).session_idle_timeout_s == IDLE


async def test_a_sweep_goes_on_past_a_customer_redis_does_not_have(pg, redis, pipeline, make_customer, plan_for):
    """A lock group whose settlement finds no projection (Redis being rebuilt) does not stop the
    sweep: the other groups' sessions are closed and settled; that one's are closed, and settled
    by the rebuild or the customer's next settlement."""
    from tollgate import locks  # noqa: PLC0415
    from tollgate.keys import CustomerKeys  # noqa: PLC0415

    text = plan_for("postpaid", AGENT)
    a = await make_customer(text)
    b = await make_customer(text)
    while locks.lock_group(b) == locks.lock_group(a):
        b = await make_customer(text)
    await pipeline.process_raw(raw([ev(a, "s", input_tokens=10), ev(b, "s", input_tokens=20)]))
    await redis.delete(CustomerKeys(b).cfg)
    res = await pipeline.close_idle(now=time.time() + 10 * IDLE, customer_ids=[a, b])
    assert res.rated == 2
    assert [(await session_row(pg, c, "s"))["status"] for c in (a, b)] == ["closed", "closed"]
    assert (await redis_state(redis, a))["spend"] == price(text, {"sessions": 1, "input_tokens": 10})
    assert (await redis_state(redis, b))["spend"] == 0
