"""An agent stuck in a loop trips Margin Guard, end to end over HTTP through the real control plane,
enforcer and rater: every call is allowed and its usage reported inside one session, until the
session's running cost passes 80 % of its outcome's price; then the very next checks of that agent
are denied `margin_guard` (level agent, no Retry-After, within 1 s of the usage that crossed), the
signed `margin_guard.tripped` alert reaches the webhook, and an operator's reset lets it go again.
The session's end resets a session-scoped trip by itself."""
from __future__ import annotations

import time
from decimal import Decimal

import yaml

from tests.control.webhook_receiver import Receiver
from tests.stack import EXAMPLES, uid

# The agent plan, with costs high enough that a few calls pass 80 % of the outcome's 1.50 (1.20):
# each call costs 0.5000 (100,000 output tokens at 0.000005): the third crosses (1.50 > 1.20).
TOKENS_PER_CALL = 100_000
COST_PER_CALL = Decimal("0.000005") * TOKENS_PER_CALL


def guarded_plan(plan_id: str, stop: str) -> bytes:
    doc = yaml.safe_load((EXAMPLES / "plans" / "ai-agent.yaml").read_text())
    doc["id"] = plan_id
    doc["limits"].update(requests_per_minute=6000, tokens_per_minute=100_000_000)  # only the guard stops it
    doc["margin_guard"] = [{"id": "runaway", "when": "session_cost", "percent_of_outcome": 80,
                            "outcome": "task_resolved", "stop": stop, "action": "deny"}]
    return yaml.safe_dump(doc).encode()


async def _setup(stack, stop: str, rx: Receiver):
    pid = uid("agentguard")
    await stack.call("POST", "/admin/plans", content=guarded_plan(pid, stop), headers={"content-type": "application/yaml"})
    cid = await stack.customer(pid, "100.00")
    hook = await stack.call("POST", "/admin/webhooks", {"url": rx.url, "customer_id": cid}, 201)
    rx.secret = hook["secret"]
    team = await stack.team(cid, "support")
    agent = await stack.app(cid, team, "agent", "triage-bot")
    _, api_key = await stack.key(cid, agent)
    return cid, agent, api_key


async def _check(stack, api_key: str, session: str) -> tuple[int, dict, dict]:
    r = await stack.gateway.post("/v1/check", json={
        "api_key": api_key, "request_id": uid("req"), "session_id": session,
        "dimensions": {"model": "claude-sonnet-4-6"}, "estimate": {"requests": 1, "output_tokens": TOKENS_PER_CALL}})
    return r.status_code, r.json(), dict(r.headers)


async def _report(stack, api_key: str, session: str, hold: str | None, event_type: str = "agent.completion",
                  tokens: int = TOKENS_PER_CALL) -> None:
    body = {"event_id": uid("evt"), "api_key": api_key, "session_id": session, "event_type": event_type,
            "properties": {"model": "claude-sonnet-4-6"},
            "measurements": [{"metric": "output_tokens", "value": tokens}] if tokens else []}
    if hold:
        body["hold_id"] = hold
    r = await stack.gateway.post("/v1/usage", json=body)
    assert r.status_code == 202, r.text


async def test_agent_loop_trips_margin_guard(stack, pg):
    with Receiver() as rx:
        cid, agent, api_key = await _setup(stack, "agent", rx)
        session = uid("ses")
        await _report(stack, api_key, session, None, "agent.session.start", 0)
        crossed_at = None
        calls = 0
        while True:  # the loop: check, call, report; the guard must stop it
            status, body, headers = await _check(stack, api_key, session)
            if status == 429:
                break
            assert body["decision"] == "ALLOW", body
            calls += 1
            assert calls <= 3, "the guard did not stop the loop"
            await _report(stack, api_key, session, body["hold_id"])
            if COST_PER_CALL * calls > Decimal("1.20"):
                crossed_at = time.monotonic()
                # the next checks are denied within 1 s of the report that crossed
                while (await _check(stack, api_key, session))[1]["reason"] != "margin_guard":
                    assert time.monotonic() - crossed_at < 1.0, "no margin_guard DENY within 1 s"
        assert calls == 3 and crossed_at is not None
        print(f"margin_guard DENY {(time.monotonic() - crossed_at) * 1000:.0f} ms after the crossing usage")
        status, body, headers = await _check(stack, api_key, session)
        assert (status, body["reason"], body.get("level")) == (429, "margin_guard", "agent"), body
        assert "retry-after" not in headers
        # any session of that agent is stopped (stop: agent), until an operator resets it
        assert (await _check(stack, api_key, uid("ses")))[1]["reason"] == "margin_guard"

        async def alerted() -> bool:
            return any(r.body.get("type") == "margin_guard.tripped" for r in rx.ok())
        await stack.until(alerted, "the margin_guard.tripped webhook")
        (alert,) = [r for r in rx.ok() if r.body["type"] == "margin_guard.tripped"]
        assert alert.signed and alert.body["customer_id"] == cid
        data = alert.body.get("data") or alert.body.get("payload") or alert.body
        assert f"app:{agent}" in str(data) and "runaway" in str(data), alert.body

        guard = await stack.call("GET", f"/admin/customers/{cid}/margin-guard?active=true")
        (trip,) = guard["trips"]
        assert (trip["rule_id"], trip["subject"], trip["action"]) == ("runaway", f"app:{agent}", "deny")
        assert Decimal(trip["detail"]["session_cost"]) == COST_PER_CALL * 3
        await stack.call("POST", f"/admin/customers/{cid}/margin-guard/reset", {"trip_id": trip["id"]})
        status, body, _ = await _check(stack, api_key, session)
        assert (status, body["decision"]) == (200, "ALLOW"), body


async def test_session_trip_ends_with_the_session(stack, pg):
    with Receiver() as rx:
        cid, agent, api_key = await _setup(stack, "session", rx)
        session = uid("ses")
        for _ in range(3):
            status, body, _ = await _check(stack, api_key, session)
            assert status == 200, body
            await _report(stack, api_key, session, body["hold_id"])

        async def denied() -> bool:
            s, b, _ = await _check(stack, api_key, session)
            return s == 429 and b["reason"] == "margin_guard" and b.get("level") == "session"
        await stack.until(denied, "the session's margin_guard DENY", timeout=5)
        # another session of the same agent is not stopped by a session-scoped trip
        assert (await _check(stack, api_key, uid("ses")))[0] == 200
        await _report(stack, api_key, session, None, "agent.session.end", 0)

        async def reset() -> bool:
            return (await _check(stack, api_key, session))[0] == 200
        await stack.until(reset, "the session end resetting its trip", timeout=10)
        trips = (await stack.call("GET", f"/admin/customers/{cid}/margin-guard"))["trips"]
        assert [(t["subject"], t["reset_by"]) for t in trips] == [(f"session:{session}", "session_end")]
