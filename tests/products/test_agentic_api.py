"""The agentic API product (examples/plans/agentic-api.yaml, costs from examples/costs/vendor-2026.yaml)
through the real processes: an agent (an app of kind `agent`) and a plain app of one team each
call with their own key; every ledger line names the agent that made the request (app_id), the
agent's in-flight limit is enforced at its level, a request reporting the `ticket_resolved`
outcome is billed the outcome (its tokens covered, costed for margin), and margin by outcome and by
key reads those costs."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.products.conftest import holds, ledger, micros, wait_settled

# examples/plans/agentic-api.yaml, by hand: (metric, model) -> unit price; None = a model not listed
PRICE = {
    ("requests", None): Decimal("0.0002"),
    ("input_tokens", None): Decimal("0.000004"), ("input_tokens", "gpt-4o-mini"): Decimal("0.0000003"),
    ("input_tokens", "claude-sonnet-4-5"): Decimal("0.000005"),
    ("output_tokens", None): Decimal("0.000016"), ("output_tokens", "gpt-4o-mini"): Decimal("0.0000012"),
    ("output_tokens", "claude-sonnet-4-5"): Decimal("0.00002"),
}
OUTCOME_PRICE = Decimal("0.25")  # ticket_resolved, covering the request's input and output tokens
# What each costs us: the plan's own (requests) and examples/costs/vendor-2026.yaml (tokens per model)
COST = {
    ("requests", None): Decimal("0.00005"),
    ("input_tokens", None): Decimal("0.0000025"), ("input_tokens", "gpt-4o"): Decimal("0.0000025"),
    ("input_tokens", "gpt-4o-mini"): Decimal("0.00000015"), ("input_tokens", "claude-sonnet-4-5"): Decimal("0.000003"),
    ("output_tokens", None): Decimal("0.00001"), ("output_tokens", "gpt-4o"): Decimal("0.00001"),
    ("output_tokens", "gpt-4o-mini"): Decimal("0.0000006"), ("output_tokens", "claude-sonnet-4-5"): Decimal("0.000015"),
}
TOPUP = Decimal("20.00")
ESTIMATE = {"requests": 1, "input_tokens": 2000, "output_tokens": 500}


def price(metric: str, model: str) -> Decimal:
    return PRICE.get((metric, model), PRICE[(metric, None)])


def cost(metric: str, model: str) -> Decimal:
    return COST.get((metric, model), COST[(metric, None)])


def expected(event: str, model: str, used: dict[str, int], path: tuple[str, str, str]) -> set[tuple]:
    """The ledger lines of one request, by the plan's rules: an outcome bills its price and covers
    the tokens (metered lines under it, amount 0, their cost); the request is billed either way."""
    outcome = used.get("ticket_resolved", 0)
    lines = set()
    for metric, q in used.items():
        if metric == "ticket_resolved":
            lines.add((event, metric, "usage", metric, q, micros(OUTCOME_PRICE * q), 0, *path))
        elif outcome and metric in ("input_tokens", "output_tokens"):
            lines.add((event, "ticket_resolved", "metered", metric, q, 0, micros(cost(metric, model) * q), *path))
        else:
            lines.add((event, metric, "usage", metric, q, micros(price(metric, model) * q),
                       micros(cost(metric, model) * q), *path))
    return lines


@pytest.mark.slow
async def test_agentic_api_attributes_each_request_to_its_agent(pg, stack):
    await stack.apply("costs/vendor-2026.yaml", "cost-catalogs")
    assert (await stack.apply("plans/agentic-api.yaml"))["id"] == "agentic-api"
    cid = await stack.customer("agentic-api", str(TOPUP))
    team = await stack.team(cid, "Support")
    agent = await stack.app(cid, team, "agent", "Triage agent", max_in_flight=2)
    console = await stack.app(cid, team, "app", "Console")
    agent_key_id, agent_key = await stack.key(cid, agent)
    console_key_id, console_key = await stack.key(cid, console)
    by_agent = (agent_key_id, team, agent)

    # The agent's in-flight limit: two requests open, the third waits (its level named)
    first = await stack.check(agent_key, {"model": "gpt-4o"}, ESTIMATE)
    second = await stack.check(agent_key, {"model": "claude-sonnet-4-5"}, ESTIMATE)
    third = await stack.check(agent_key, {"model": "gpt-4o-mini"}, ESTIMATE, expect=429)
    assert (third["reason"], third["level"]) == ("concurrency_limited", "agent"), third
    plain = await stack.check(console_key, {"model": "mistral-large"}, ESTIMATE)  # the app is not the agent
    assert {d["decision"] for d in (first, second, plain)} == {"ALLOW"}

    requests = [  # (decision, key, path, model, usage)
        (first, agent_key, by_agent, "gpt-4o", {"requests": 1, "input_tokens": 1200, "output_tokens": 300}),
        (second, agent_key, by_agent, "claude-sonnet-4-5",
         {"requests": 1, "input_tokens": 2000, "output_tokens": 500, "ticket_resolved": 1}),
        (plain, console_key, (console_key_id, team, console), "mistral-large",
         {"requests": 1, "input_tokens": 1000, "output_tokens": 100}),
    ]
    want_lines, want_holds = set(), {}

    async def report(decision: dict, key: str, path: tuple, model: str, used: dict) -> None:
        event = await stack.usage(key, decision["hold_id"], "llm.completion", {"model": model}, used)
        hold = micros(sum(price(m, model) * q for m, q in ESTIMATE.items()))
        want_holds[decision["hold_id"]] = ("settled", hold, hold, event)
        want_lines.update(expected(event, model, used, path))

    for r in requests:
        await report(*r)
    await wait_settled(pg, stack, cid, events=3, holds=3)
    # settled: the agent's requests are no longer in flight
    again = await stack.check(agent_key, {"model": "gpt-4o-mini"}, ESTIMATE)
    await report(again, agent_key, by_agent, "gpt-4o-mini", {"requests": 1, "input_tokens": 10000, "output_tokens": 2000})
    await wait_settled(pg, stack, cid, events=4, holds=4)

    lines = await ledger(pg, cid)
    assert lines == want_lines
    assert {ln[9] for ln in lines if ln[7] == agent_key_id} == {agent}  # every line of the agent's key: the agent
    assert await holds(pg, cid) == want_holds
    total, total_cost = sum(ln[5] for ln in want_lines), sum(ln[6] for ln in want_lines)
    wallet = await stack.call("GET", f"/admin/customers/{cid}/wallet")
    assert (Decimal(wallet["balance"]), Decimal(wallet["held"])) == (TOPUP - Decimal(total) / 1_000_000, 0), wallet
    assert (await stack.call("GET", f"/admin/customers/{cid}/holds"))["holds"] == []

    # The read API: usage by agent, margin by outcome and by key
    usage = await stack.call("GET", f"/admin/customers/{cid}/usage?group_by=app")
    spent = {}
    for r in usage["rows"]:
        spent[r["app_id"]] = spent.get(r["app_id"], 0) + micros(Decimal(r["amount"]))
    assert spent == {a: sum(ln[5] for ln in want_lines if ln[9] == a) for a in (agent, console)}

    def figures(price_micros: int, cost_micros: int) -> tuple:
        return Decimal(price_micros) / 1_000_000, Decimal(cost_micros) / 1_000_000

    by_outcome = await stack.call("GET", f"/admin/customers/{cid}/margin?by=outcome")
    got = {r["outcome"]: (Decimal(r["price"]), Decimal(r["cost"])) for r in by_outcome["rows"]}
    covered = [ln for ln in want_lines if "ticket_resolved" in (ln[1], ln[3])]
    rest = want_lines - set(covered)
    assert got == {"ticket_resolved": figures(sum(ln[5] for ln in covered), sum(ln[6] for ln in covered)),
                   None: figures(sum(ln[5] for ln in rest), sum(ln[6] for ln in rest))}
    # the outcome's 0.25 against the 13,500 micros of tokens it took
    assert got["ticket_resolved"] == (OUTCOME_PRICE, Decimal("0.0135"))
    by_key = await stack.call("GET", f"/admin/customers/{cid}/margin?by=key")
    got = {r["key"]: (Decimal(r["price"]), Decimal(r["cost"])) for r in by_key["rows"]}
    assert got == {k: figures(sum(ln[5] for ln in want_lines if ln[7] == k), sum(ln[6] for ln in want_lines if ln[7] == k))
                   for k in (agent_key_id, console_key_id)}
    assert (Decimal(by_key["total"]["price"]), Decimal(by_key["total"]["cost"])) == figures(total, total_cost)
