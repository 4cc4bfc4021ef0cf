"""`tollgate simulate`: the billing simulator from the command line (control.simulator.simulate);
`--json` prints exactly what POST /admin/simulate answers."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from control.accounts import plans
from control.errors import InvalidInput
from control.simulator.simulate import parse_customers, parse_period, simulate
from tollgate.cli import Context, command, table


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "simulate", simulate_cmd,
                "rate a past period's usage under a draft plan: current and draft amounts per customer and line")
    p.add_argument("--plan", required=True, metavar="FILE", help="the draft plan document (YAML or JSON); not applied")
    p.add_argument("--period", required=True, metavar="YYYYMM")
    p.add_argument("--customers", metavar="IDS", help="comma-separated (default: the customers on the draft's plan id)")


async def simulate_cmd(ctx: Context) -> None:
    a = ctx.args
    try:
        text = Path(a.plan).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput("plan", f"cannot read {a.plan}: {e}") from None
    doc = plans.parse_document_text(text)
    if not isinstance(doc, dict):
        raise InvalidInput("plan", "must be a plan document (a mapping)")
    draft = plans.validate(doc)
    period, customers = parse_period(a.period, time.time()), parse_customers(a.customers)
    async with ctx.backends() as (db, _):
        out = await simulate(db, draft, period, customers)
    parts = []
    for c in out["customers"]:
        head = (f"{c['customer_id']}  (now {c['current_plan_id']}, from its {c['current_source']})  current "
                f"{c['current_total']}  draft {c['draft_total']}  difference {c['difference']}")
        if c["unpriced"]:
            head += "\n  not priced by the draft: " + ", ".join(f"{m} {q}" for m, q in c["unpriced"].items())
        if c["error"]:
            head += f"\n  error: {c['error']}"
        parts.append(head + "\n" + table(c["lines"], ["description", "current", "draft", "difference"]))
    t = out["totals"]
    parts.append(f"{out['period']}  draft {out['draft_plan_id']}  {t['customers']} customers  current {t['current']}"
                 f"  draft {t['draft']}  difference {t['difference']} {out['currency']}")
    ctx.emit(out, "\n\n".join(parts))
