"""Commit at risk for customers whose events do not come: the rater judges a customer's commit
when it rates its events (rater.alerts), so one who stops using entirely, the one most at risk,
would never be judged. The control plane's alert worker runs this sweep every
TOLLGATE_ALERTS_SWEEP_S (60 s): every customer on a plan with a minimum commit, its live period
spend from Redis (`tg:{c}:spend:<period>`), the same rule (tollgate.alert_rules.commit_rows).
The alert is the same row the rater would raise (UNIQUE: once per period, whoever sees it first).
Several control processes: one sweeps at a time (a transaction-scoped advisory lock).
"""
from __future__ import annotations

import time

import orjson

from tollgate import alert_rules
from tollgate.alerts import raise_many
from tollgate.keys import CustomerKeys
from tollgate.periods import period_bounds, period_of
from tollgate.plans import Plan, plan_from_row

_LOCK = 0x7A_1E_27_5E  # any constant: the sweep's advisory lock
_CHUNK = 1000  # spend keys read per pipeline


class CommitSweep:
    def __init__(self):
        self._plans: dict[tuple[str, int], Plan] = {}
        self._seen: set[tuple[str, str]] = set()  # (customer, period) raised already

    async def run(self, db, redis, now: float | None = None) -> list[str]:
        """One sweep; the ids of the alerts it raised."""
        now = time.time() if now is None else now
        async with db.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
                return []  # another control process is sweeping
            rows = await conn.fetch(
                "SELECT c.id, c.plan_id, p.version, p.document, s.settings FROM customers c"
                " JOIN plans p ON p.id = c.plan_id LEFT JOIN alert_settings s ON s.customer_id = c.id"
                " WHERE coalesce(p.document->>'minimum_commit', '0') NOT IN ('0', '0.00', '0.0')")
            due: list[tuple[str, str, Plan, alert_rules.AlertSettings]] = []
            for r in rows:
                key = (r["plan_id"], r["version"])
                plan = self._plans.get(key) or self._plans.setdefault(key, plan_from_row(r))
                if plan.minimum_commit_micros <= 0:
                    continue
                period = period_of(now, plan.billing_anchor_day)
                if (r["id"], period) in self._seen:
                    continue
                start, end = period_bounds(period, plan.billing_anchor_day)
                overrides = orjson.loads(r["settings"]) if r["settings"] else None
                try:
                    s = alert_rules.merged(plan.document.get("alerts"), overrides) if overrides else plan.alerts
                except alert_rules.AlertSettingsError:
                    s = plan.alerts
                t0, t1 = start.timestamp(), end.timestamp()
                if s.commit_after_percent is not None and (now - t0) * 100 >= s.commit_after_percent * (t1 - t0):
                    due.append((r["id"], period, plan, s))  # past its judging point: read its spend
            spend = await _spend(redis, [(c, p) for c, p, _, _ in due])
            out: list[alert_rules.Row] = []
            for (cid, period, plan, s), micros in zip(due, spend):
                start, end = period_bounds(period, plan.billing_anchor_day)
                out += alert_rules.commit_rows(cid, s, period, micros, plan.minimum_commit_micros, start, end, now, None)
            raised = await raise_many(conn, out)
        self._seen.update((r[0], r[3]) for r in out)
        return raised


async def _spend(redis, keys: list[tuple[str, str]]) -> list[int]:
    """Each (customer, period)'s live spend in micros (0 when Redis has none)."""
    out: list[int] = []
    for i in range(0, len(keys), _CHUNK):
        async with redis.pipeline(transaction=False) as p:
            for c, period in keys[i:i + _CHUNK]:
                p.get(CustomerKeys(c).spend(period))
            out += [int(v or 0) for v in await p.execute()]
    return out
