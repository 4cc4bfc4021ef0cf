"""The AI agent product through the real enforcer, bus and rater processes: an agent's sessions
reported to /v1/usage (examples/plans/ai-agent.yaml, idle timeout 1 s), one ended, one never;
the rater bills each once (the idle sweeper in the rater process closes the second), and every
hold the checks placed is released by its session event."""
from __future__ import annotations

import uuid

import httpx
import pytest

from control.accounts import api_keys
from tests.rater.conftest import redis_state
from tests.rater.processes import RaterProcess
from tests.rater.test_end_to_end import _until
from tests.read.test_sessions import agent_plan
from tests.servers import run_enforcer
from tollgate.plans import load_plan_text
from tollgate.rating.stages.pipeline import run_event

WALLET = 50_000_000


@pytest.mark.slow
async def test_agent_sessions_from_the_enforcer_to_the_ledger(pg, pg_dsn, redis, redis_server, make_customer):
    text = agent_plan().replace("billing_mode: postpaid", "billing_mode: prepaid", 1).replace(
        "idle_timeout_seconds: 1800", "idle_timeout_seconds: 1", 1)
    c = await make_customer(text, wallet_micros=WALLET)
    key = (await api_keys.create_api_key(pg, redis, c))["api_key"]
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_BUS": "redis", "TOLLGATE_CHECK_DEADLINE_MS": "1000"}

    async def report(http, url: str, sid: str, event_type: str, check: bool, **ms) -> None:
        body = {"event_id": f"evt_{uuid.uuid4().hex[:12]}", "api_key": key, "session_id": sid,
                "event_type": event_type, "properties": {"model": "m1"},
                "measurements": [{"metric": m, "value": v} for m, v in ms.items()]}
        if check:  # a tool call the gateway let through: its hold is released by this report
            r = await http.post(f"{url}/v1/check", json={"api_key": key, "request_id": body["event_id"],
                                                         "estimate": {"input_tokens": 2000, "output_tokens": 500}})
            assert r.status_code == 200, r.text
            body["hold_id"] = r.json()["hold_id"]
        r = await http.post(f"{url}/v1/usage", json=body)
        assert r.status_code == 202, r.text

    with run_enforcer(env) as enf:
        async with httpx.AsyncClient(timeout=10) as http:
            await report(http, enf.url, "ended", "agent.session.start", False)
            await report(http, enf.url, "ended", "agent.tool_call", True, tool_calls=1, input_tokens=1500,
                         output_tokens=300)
            await report(http, enf.url, "ended", "llm.completion", True, input_tokens=1800, output_tokens=450)
            await report(http, enf.url, "ended", "agent.session.end", False)
            await report(http, enf.url, "abandoned", "agent.session.start", False)
            await report(http, enf.url, "abandoned", "agent.tool_call", True, tool_calls=1, input_tokens=900)
        assert (await redis_state(redis, c))["held"] > 0
        rater = RaterProcess({**env, "TOLLGATE_DATABASE_URL": pg_dsn}, ["--sweep-interval", "0.2"]).start()
        try:
            async def billed() -> bool:
                return (await pg.fetchval("SELECT count(*) FROM agent_sessions WHERE customer_id = $1"
                                          " AND status = 'closed'", c) == 2
                        and (await redis_state(redis, c))["held"] == 0)
            await _until(billed, 60, "both sessions billed and every hold released", rater)
        finally:
            assert rater.stop() == 0, rater.logs()[-3000:]

    plan = load_plan_text(text)
    ended = run_event(plan, {"model": "m1"}, {"sessions": 1, "tool_calls": 1, "input_tokens": 3300,
                                              "output_tokens": 750}, {})
    abandoned = run_event(plan, {"model": "m1"}, {"sessions": 1, "tool_calls": 1, "input_tokens": 900},
                          ended.cumulative_after)
    want = ended.total_micros + abandoned.total_micros
    rows = {r["session_id"]: (r["close_reason"], r["amount_micros"]) for r in await pg.fetch(
        "SELECT session_id, close_reason, amount_micros FROM agent_sessions WHERE customer_id = $1", c)}
    assert rows == {"ended": ("end", ended.total_micros), "abandoned": ("idle", abandoned.total_micros)}
    assert await pg.fetchval("SELECT sum(amount_micros)::int8 FROM ledger_lines WHERE customer_id = $1", c) == want
    assert await redis_state(redis, c) == {"wallet": WALLET - want, "spend": want, "held": 0}
    assert await pg.fetchval("SELECT count(*) FROM holds WHERE customer_id = $1 AND status = 'settled'", c) == 3
