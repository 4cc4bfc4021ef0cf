"""Per-event rating time of an MCP tool call with 10 vs 5,000 per-tool prices (the override index,
tollgate.matching): the pure engine's rate_event, and the enforcer's hold estimate, per event.

    .venv/bin/python loadtest/bench_tool_prices.py [--events 200000]

Each event calls a random tool of the plan (so every price is hit, none is cached by position).
Two figures per plan:
- lookup: each event rated from an empty period (the price lookup and the lines alone); with
  5,000 prices it should equal the one with 10, as the index does not scan;
- in a period: each event carries the period's cumulatives of the previous one, as the rater
  does. A customer that has called thousands of distinct tools this period has one cumulative per
  tool, and rate_event copies the period's state per event (O(keys used this period), not O(prices)).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tollgate.plans import parse_plan  # noqa: E402
from tollgate.rating.pricing import rate_event  # noqa: E402


def plan(tools: int, costs: bool):
    doc = {"id": f"mcp-{tools}", "limits": {"requests_per_minute": 1, "tokens_per_minute": 1}, "charges": [
        {"id": "tool_calls", "model": "per_unit", "metric": "tool_calls", "unit_price": "0.001", "bill_failed": False,
         "prices_by": {"dimension": "tool", "prices": {f"tool_{i}": f"0.00{i % 9 + 1}" for i in range(tools)}}},
        {"id": "input_tokens", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000004"},
        {"id": "output_tokens", "model": "per_unit", "metric": "output_tokens", "unit_price": "0.000016"},
    ]}
    if costs:
        doc["costs"] = {"tool_calls": {"unit_cost": "0.0002", "costs_by": {
            "dimension": "tool", "costs": {f"tool_{i}": "0.0001" for i in range(tools)}}},
            "input_tokens": "0.0000025", "output_tokens": "0.00001"}
    return parse_plan(doc)


def run(tools: int, costs: bool, n: int) -> tuple[float, float]:
    p = plan(tools, costs)
    rnd = random.Random(1)
    events = [({"tool": f"tool_{rnd.randrange(tools)}", "status": "success" if rnd.random() < 0.95 else "error"},
               {"tool_calls": 1, "input_tokens": rnd.randrange(100, 3000), "output_tokens": rnd.randrange(10, 500)})
              for _ in range(n)]
    t0 = time.perf_counter()
    for dims, m in events:
        rate_event(p, dims, m, {})
    lookup_us = (time.perf_counter() - t0) / n * 1e6
    cum = {}
    t0 = time.perf_counter()
    for dims, m in events:
        cum = rate_event(p, dims, m, cum).cumulative
    period_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for dims, m in events:
        p.estimate_micros(dims, m)
    return lookup_us, period_us, (time.perf_counter() - t0) / n * 1e6, len(cum)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    print(f"MCP tool-call rating, {args.events:,} events, a random tool each")
    for costs in (False, True):
        for tools in (10, 5000):
            lookup, period, e, keys = run(tools, costs, args.events)
            print(f"  {tools:>5} tool prices{' + costs' if costs else '        '}   rate_event: lookup {lookup:5.2f}"
                  f" µs/event, in a period {period:6.2f} µs/event ({keys:,} period keys)"
                  f"   hold estimate {e:5.2f} µs/event")


if __name__ == "__main__":
    main()
