"""The MCP server product (examples/plans/mcp-server.yaml, token costs from
examples/costs/vendor-2026.yaml) through the real processes: tool calls checked and reported by a
gateway, each billed at its tool's price (the override for web_search in the EU, the per-tool map,
the default for a tool not listed), a failed call free but costed, the tokens billed either way,
compute time inside the included hour; margin per tool through the read API."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.products.conftest import holds, ledger, micros, wait_settled

# examples/plans/mcp-server.yaml, by hand
TOOL_PRICE = {"web_search": Decimal("0.005"), "run_sql": Decimal("0.002"), "read_file": Decimal("0.0005"),
              "render_pdf": Decimal("0.02")}
TOOL_PRICE_DEFAULT = Decimal("0.001")
EU_WEB_SEARCH = Decimal("0.006")  # the override {tool: web_search, region: eu}, tried before the map
TOKEN_PRICE = {"input_tokens": Decimal("0.000004"), "output_tokens": Decimal("0.000016")}
# duration_ms: an `included` charge, the first 3,600,000 ms of the period free; these calls stay inside
TOOL_COST = {"web_search": Decimal("0.003"), "render_pdf": Decimal("0.004")}
TOOL_COST_DEFAULT = Decimal("0.0002")
DURATION_COST = Decimal("0.0000001")
# examples/costs/vendor-2026.yaml: (metric, model) -> unit cost; None = a model not listed (or none)
TOKEN_COST = {
    ("input_tokens", None): Decimal("0.0000025"), ("input_tokens", "gpt-4o"): Decimal("0.0000025"),
    ("input_tokens", "gpt-4o-mini"): Decimal("0.00000015"), ("input_tokens", "claude-sonnet-4-5"): Decimal("0.000003"),
    ("output_tokens", None): Decimal("0.00001"), ("output_tokens", "gpt-4o"): Decimal("0.00001"),
    ("output_tokens", "gpt-4o-mini"): Decimal("0.0000006"), ("output_tokens", "claude-sonnet-4-5"): Decimal("0.000015"),
}
TOPUP = Decimal("20.00")

# (properties, tokens in, tokens out): every call is one tool call with its duration measured too
CALLS = [
    ({"tool": "web_search", "status": "success", "duration_ms": 840, "model": "gpt-4o"}, 1200, 300),
    ({"tool": "run_sql", "status": "error", "duration_ms": 120, "model": "gpt-4o-mini"}, 500, 0),
    ({"tool": "render_pdf", "status": "success", "duration_ms": 2000, "model": "claude-sonnet-4-5"}, 3000, 1000),
    ({"tool": "lookup_crm", "status": "success", "duration_ms": 50}, 100, 0),  # a tool the plan does not list
    ({"tool": "web_search", "status": "success", "duration_ms": 900, "region": "eu"}, 0, 0),
]


def tool_price(props: dict) -> Decimal:
    if props["tool"] == "web_search" and props.get("region") == "eu":
        return EU_WEB_SEARCH
    return TOOL_PRICE.get(props["tool"], TOOL_PRICE_DEFAULT)


def token_cost(metric: str, props: dict) -> Decimal:
    return TOKEN_COST.get((metric, props.get("model")), TOKEN_COST[(metric, None)])


def expected(event: str, props: dict, used: dict[str, int], path: tuple) -> set[tuple]:
    """One call's ledger lines: the call and its compute time are not billed when it failed
    (bill_failed: false: a line of kind `cost` keeps what it cost us); its tokens are billed always."""
    failed = props["status"] != "success"
    lines = set()
    for metric, q in used.items():
        if metric == "tool_calls":
            charge, amount = "tool_calls", tool_price(props) * q
            c = TOOL_COST.get(props["tool"], TOOL_COST_DEFAULT) * q
        elif metric == "duration_ms":
            charge, amount, c = "duration", Decimal(0), DURATION_COST * q  # inside the included hour
        else:
            charge, amount, c = metric, TOKEN_PRICE[metric] * q, token_cost(metric, props) * q
        if failed and metric in ("tool_calls", "duration_ms"):
            lines.add((event, "cost", "cost", metric, q, 0, micros(c), *path))
        else:
            lines.add((event, charge, "usage", metric, q, micros(amount), micros(c), *path))
    return lines


@pytest.mark.slow
async def test_mcp_tool_calls_priced_per_tool_failed_calls_free_but_costed(pg, stack):
    await stack.apply("costs/vendor-2026.yaml", "cost-catalogs")
    assert (await stack.apply("plans/mcp-server.yaml"))["id"] == "mcp-server"
    cid = await stack.customer("mcp-server", str(TOPUP))
    team = await stack.team(cid, "Platform")
    app = await stack.app(cid, team, "app", "IDE plugin")
    key_id, api_key = await stack.key(cid, app)

    want_lines, want_holds, called = set(), {}, []
    for props, tokens_in, tokens_out in CALLS:
        dims = {k: v for k, v in props.items() if k in ("tool", "region", "model")}
        estimate = {"tool_calls": 1, "input_tokens": 2000, "output_tokens": 1000}
        decision = await stack.check(api_key, dims, estimate)
        assert decision["decision"] == "ALLOW", decision
        used = {"tool_calls": 1, "input_tokens": tokens_in, "output_tokens": tokens_out,
                "duration_ms": props["duration_ms"]}
        used = {m: q for m, q in used.items() if q}
        event = await stack.usage(api_key, decision["hold_id"], "mcp.tool_call", props, used)
        # the hold: the estimate at the tool's price (the highest a call of it may cost)
        hold = micros(tool_price(props) + sum(TOKEN_PRICE[m] * estimate[m] for m in TOKEN_PRICE))
        want_holds[decision["hold_id"]] = ("settled", hold, hold, event)
        want_lines |= expected(event, props, used, (key_id, team, app))
        called.append((props["tool"], event))

    await wait_settled(pg, stack, cid, events=len(CALLS), holds=len(CALLS))
    assert await ledger(pg, cid) == want_lines
    assert await holds(pg, cid) == want_holds
    failed = [ln for ln in want_lines if ln[2] == "cost"]
    assert {(ln[3], ln[5], ln[6]) for ln in failed} == {("tool_calls", 0, 200), ("duration_ms", 0, 12)}  # free, costed

    total = sum(ln[5] for ln in want_lines)
    wallet = await stack.call("GET", f"/admin/customers/{cid}/wallet")
    assert (Decimal(wallet["balance"]), Decimal(wallet["held"])) == (TOPUP - Decimal(total) / 1_000_000, 0), wallet
    assert (await stack.call("GET", f"/admin/customers/{cid}/holds"))["holds"] == []

    # Margin per tool, from the rollups: each tool's price and cost, a failed call's cost in its tool's row
    margin = await stack.call("GET", f"/admin/customers/{cid}/margin?by=tool")
    got = {r["tool"]: (Decimal(r["price"]), Decimal(r["cost"]), r["margin_percent"]) for r in margin["rows"]}
    want: dict[str, list[int]] = {}
    for tool, event in called:
        sums = want.setdefault(tool, [0, 0])
        for ln in want_lines:
            if ln[0] == event:
                sums[0] += ln[5]
                sums[1] += ln[6]
    assert {t: g[:2] for t, g in got.items()} == {t: (Decimal(p) / 1_000_000, Decimal(c) / 1_000_000)
                                                  for t, (p, c) in want.items()}
    p, c = want["run_sql"]  # the failed call: its tokens billed, the call and its time only costed
    assert got["run_sql"][2] == str((Decimal(p - c) * 100 / p).quantize(Decimal("0.01")))
