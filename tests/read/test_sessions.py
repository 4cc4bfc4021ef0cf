"""Agent sessions through the read API (admin and customer-scoped), and the preview: sessions
still open are in it as if closed now, so it stays the invoice the close then writes. The plan is
examples/plans/ai-agent.yaml; events are rated by the real pipeline."""
from __future__ import annotations

from pathlib import Path

from control.accounts import api_keys
from control.read.preview import preview
from rater import periods
from tests.rater.conftest import raw
from tests.rater.test_periods import LAST, LAST_PERIOD, LAST_TS
from tests.rater.test_sessions import ev
from tests.read.conftest import ADMIN
from tests.tenants import uid
from tollgate.money import to_micros
from tollgate.rating.sessions import billable_id

AGENT_PLAN = (Path(__file__).resolve().parents[2] / "examples" / "plans" / "ai-agent.yaml").read_text()


def agent_plan() -> str:
    return AGENT_PLAN.replace("id: ai-agent", f"id: {uid('plan')}", 1).replace("billing_mode: prepaid",
                                                                                 "billing_mode: postpaid", 1)


async def test_sessions_listed_and_read_with_events_and_ledger_lines(pg, redis, client, pipeline, make_customer):
    c = await make_customer(agent_plan())
    done, running = uid("ses"), uid("ses")
    first = [ev(c, done, "agent.session.start"), ev(c, done, input_tokens=4000, output_tokens=900, tool_calls=2),
             ev(c, done, "agent.outcome", task_resolved=1), ev(c, done, "agent.session.end"),
             ev(c, running, input_tokens=100)]
    await pipeline.process_raw(raw(first))
    late = ev(c, done, tool_calls=1)
    await pipeline.process_raw(raw([late]))

    r = await client.get(f"/admin/customers/{c}/sessions", headers=ADMIN)
    assert r.status_code == 200, r.text
    by_id = {s["session_id"]: s for s in r.json()["sessions"]}
    assert by_id[running]["status"] == "open" and by_id[running]["amount"] is None
    s = by_id[done]
    # 0.05 session + 1.50 outcome (covers the tokens) + 2 tool calls
    assert (s["status"], s["close_reason"], s["amount"], s["event_count"]) == ("closed", "end", "1.552", 4)
    assert s["measurements"] == {"input_tokens": 4000, "output_tokens": 900, "tool_calls": 2, "task_resolved": 1}
    assert s["billable_event_id"] == billable_id(c, done)
    assert s["cost"] == "0.0085"  # 4,000 x 0.000001 + 900 x 0.000005: the outcome covers them, they still cost
    r = await client.get(f"/admin/customers/{c}/sessions", params={"status": "open"}, headers=ADMIN)
    assert [x["session_id"] for x in r.json()["sessions"]] == [running]
    r = await client.get(f"/admin/customers/{c}/sessions", params={"limit": 1}, headers=ADMIN)
    page = r.json()
    assert len(page["sessions"]) == 1 and page["next_after"] == page["sessions"][0]["session_id"]
    r = await client.get(f"/admin/customers/{c}/sessions", params={"limit": 1, "after": page["next_after"]},
                         headers=ADMIN)
    assert {x["session_id"] for x in page["sessions"] + r.json()["sessions"]} == {done, running}

    r = await client.get(f"/admin/customers/{c}/sessions/{done}", headers=ADMIN)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert {e["event_id"]: e["handled"] for e in detail["events"]} == {
        **{e["id"]: "aggregated" for e in first[:4]}, late["id"]: "rated_alone"}
    assert {(x["event_id"], x["metric"]) for x in detail["ledger_lines"]} == {
        (billable_id(c, done), "sessions"), (billable_id(c, done), "task_resolved"),
        (billable_id(c, done), "input_tokens"), (billable_id(c, done), "output_tokens"),
        (billable_id(c, done), "tool_calls"), (late["id"], "tool_calls")}
    assert detail["ledger_total"] == "1.553" and detail["truncated"] is False

    for bad in ({"status": "gone"}, {"limit": 0}, {"after": "not an id"}):
        assert (await client.get(f"/admin/customers/{c}/sessions", params=bad, headers=ADMIN)).status_code == 422
    assert (await client.get(f"/admin/customers/{c}/sessions/nope", headers=ADMIN)).status_code == 404
    assert (await client.get("/admin/customers/cus_nope/sessions", headers=ADMIN)).status_code == 404

    # the customer reads its own, with its API key; another customer's session is not found
    key = await api_keys.create_api_key(pg, redis, c)
    mine = {"Authorization": f"Bearer {key['api_key']}"}
    r = await client.get("/v1/customer/sessions", headers=mine)
    assert {x["session_id"] for x in r.json()["sessions"]} == {done, running}
    assert (await client.get(f"/v1/customer/sessions/{done}", headers=mine)).json()["amount"] == "1.552"
    other = await make_customer(agent_plan())
    await pipeline.process_raw(raw([ev(other, "theirs", input_tokens=5)]))
    assert (await client.get("/v1/customer/sessions/theirs", headers=mine)).status_code == 404
    assert (await client.get("/v1/customer/sessions")).status_code == 401


async def test_the_preview_includes_open_sessions_as_the_close_bills_them(pg, redis, pipeline, make_customer):
    c = await make_customer(agent_plan())
    await pg.execute("UPDATE customers SET created_at = now() - interval '90 days' WHERE id = $1", c)
    now = LAST.timestamp()
    await pipeline.process_raw(raw([ev(c, None, "llm.completion", ts=LAST_TS, input_tokens=1000),
                                    ev(c, "s1", ts=LAST_TS, input_tokens=20_000, output_tokens=3_000, tool_calls=4),
                                    ev(c, "s2", "agent.session.start", ts=LAST_TS)]), now=now)
    pv = await preview(pg, redis, c, now=now)
    spent = await pg.fetchval("SELECT sum(spend_micros)::int8 FROM processed_events WHERE customer_id = $1", c)
    assert spent == to_micros(pv["spend_to_date"]) == 3_000  # the event outside any session
    assert pv["pending_sessions"]["count"] == 2
    # s1: 0.05 + 20,000 x 0.000003 + 3,000 x 0.000015 + 4 x 0.001; s2 (only started): 0.05
    assert to_micros(pv["pending_sessions"]["amount"]) == 50_000 + 60_000 + 45_000 + 4_000 + 50_000
    assert to_micros(pv["total"]) == spent + to_micros(pv["pending_sessions"]["amount"])

    out = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert out[0].get("error") is None, out
    inv = await pg.fetchrow("SELECT total_micros FROM invoices WHERE customer_id = $1 AND period = $2", c, LAST_PERIOD)
    assert inv["total_micros"] == to_micros(pv["total"])
    assert await pg.fetchval("SELECT count(*) FROM agent_sessions WHERE customer_id = $1 AND status = 'open'", c) == 0
