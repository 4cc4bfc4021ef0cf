"""The rater's alerts: evaluated once per customer per batch, right after settlement, from what
settlement returned (period spend, wallet, promotions) and the customer's pace state.

Two calls from rater.pipeline, each one statement per batch at most:
- `record_pace` inside the rating transaction: adds the events' spend to the hourly pace row of
  customers whose settings watch for spikes (exactly once, with the ledger; no row otherwise).
- `raise_after_settlement` after the settlement is recorded and before the settle outbox is
  cleared: proposes every threshold the figures are at (tollgate.alert_rules, by level) and
  inserts the new ones with tollgate.alerts.raise_many. A batch redelivered after a crash between
  settlement and here is settled as a replay with today's figures (and its promotions still in
  the outbox), so it proposes the same alerts again; the table's UNIQUE keeps each one once.
Already-raised keys are remembered in process, so a customer past a threshold costs nothing on
later batches; a restart forgets them and the first batch finds them in the table (no row).

Level budgets (`budget.threshold`): settlement added each event's spend to the levels of its key's
path (SettleItem.levels). For those levels only, the budgets are read from the limits hash check.lua
enforces (cached ttl_s per level, so levels without a budget cost one HMGET per ttl_s), then the
period spend of the levels that have one (one round trip). Events of keys without a path (no
levels) cost nothing here.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

from rater import metrics
from rater.key_paths import NO_PATH
from tollgate import alert_rules, limits, redis_raw, tracing
from tollgate.alert_rules import AlertSettings
from tollgate.alerts import raise_many
from tollgate.keys import CustomerKeys
from tollgate.periods import period_bounds, period_of

if TYPE_CHECKING:
    from rater.key_paths import KeyPaths
    from rater.pipeline import Customer, Directory, Event
    from rater.settlement import SettleItem, SettleResult

MAX_SEEN = 200_000  # raised keys remembered (~150 bytes each) before the memory starts over

# The pace upsert: a new hour folds the finished one into the weighted average (weight 1/12) and
# decays it over the empty hours between; the same hour adds. Mirrors alert_rules.roll_pace.
_PACE = """
INSERT INTO alert_pace AS p (customer_id, hour, hour_micros)
SELECT * FROM unnest($1::text[], $2::int[], $3::int8[])
ON CONFLICT (customer_id) DO UPDATE SET
  avg_micros = CASE WHEN excluded.hour <= p.hour THEN p.avg_micros
    ELSE round((p.avg_micros * (11.0 / 12) + p.hour_micros / 12.0)
               * power(11.0 / 12, least(excluded.hour - p.hour - 1, 2000)), 6) END,
  hours = CASE WHEN excluded.hour <= p.hour THEN p.hours ELSE p.hours + excluded.hour - p.hour END,
  hour_micros = CASE WHEN excluded.hour <= p.hour THEN p.hour_micros + excluded.hour_micros
    ELSE excluded.hour_micros END,
  hour = greatest(p.hour, excluded.hour)
"""


class RaterAlerts:
    def __init__(self, ttl_s: float = 5.0, redis=None, paths: KeyPaths | None = None):
        """`redis` and `paths` (the pipeline's KeyPaths, loaded for the batch) serve level budgets;
        without `redis` only the customer's alerts are raised."""
        self.ttl_s = ttl_s
        self.redis = redis
        self.paths = paths
        # customer -> (expiry, plan object, overrides or None, merged settings)
        self._settings: dict[str, tuple[float, object, dict | None, AlertSettings]] = {}
        self._seen: set[tuple[str, str, str, str]] = set()
        self._budgets: dict[tuple[str, str], tuple[float, int | None]] = {}  # (customer, level) -> (expiry, cap)

    async def settings(self, conn, customers: Sequence[Customer]) -> dict[str, AlertSettings]:
        """Each customer's settings: its plan's, with its overrides (cached ttl_s)."""
        now = time.monotonic()
        stale = [c.id for c in customers if (hit := self._settings.get(c.id)) is None or hit[0] <= now]
        overrides: dict[str, dict] = {}
        if stale:
            for cid, doc in await conn.fetch(
                    "SELECT customer_id, settings FROM alert_settings WHERE customer_id = ANY($1::text[])", stale):
                overrides[cid] = orjson.loads(doc) if isinstance(doc, (str, bytes)) else doc
        out: dict[str, AlertSettings] = {}
        for c in customers:
            hit = self._settings.get(c.id)
            if hit is not None and hit[0] > now and hit[1] is c.plan:
                out[c.id] = hit[3]
                continue
            ov = overrides.get(c.id) if c.id in stale else (hit[2] if hit else None)
            try:
                s = c.plan.alerts if not ov else alert_rules.merged(c.plan.document.get("alerts"), ov)
            except alert_rules.AlertSettingsError:  # validated when stored; a plan change may clash
                s = c.plan.alerts
            self._settings[c.id] = (now + self.ttl_s, c.plan, ov, s)
            out[c.id] = s
        return out

    @tracing.traced("rater.alerts")
    async def record_pace(self, conn, events: Sequence[Event], rows: Sequence) -> None:
        """In the rating transaction: this hour's spend of the customers watching for spikes."""
        customers = {e.customer.id: e.customer for e in events if e.kind == "usage"}
        if not customers:
            return
        settings = await self.settings(conn, list(customers.values()))
        spend: dict[str, int] = {}
        for r in rows:
            if r.kind == "usage" and settings.get(r.customer_id, alert_rules.DEFAULTS).spike_factor is not None:
                spend[r.customer_id] = spend.get(r.customer_id, 0) + r.spend_micros
        if spend:
            ids = sorted(spend)
            hour = int(time.time() // 3600)
            await conn.execute(_PACE, ids, [hour] * len(ids), [spend[c] for c in ids])

    @tracing.traced("rater.alerts")
    async def raise_after_settlement(self, conn, directory: Directory, items: Sequence[SettleItem],
                                     results: Sequence[SettleResult], now: float | None = None) -> list[str]:
        """Propose the alerts the settled figures call for; insert the new ones. Returns their ids."""
        now = time.time() if now is None else now
        last: dict[tuple[str, str], tuple[SettleItem, SettleResult]] = {}  # (customer, period) -> latest
        promotions: list[tuple[SettleItem, SettleResult]] = []
        levels: dict[tuple[str, str, str], SettleItem] = {}  # (customer, period, level) -> latest item
        for it, r in zip(items, results, strict=True):
            key = (it.customer_id, it.period)
            got = last.get(key)
            if got is None or got[0].seq < it.seq:
                last[key] = (it, r)
            if r.promoted_to:
                promotions.append((it, r))
            if it.levels:
                for f in it.levels:
                    lk = (it.customer_id, it.period, f)
                    prev = levels.get(lk)
                    if prev is None or prev.seq < it.seq:
                        levels[lk] = it
        customers = {c: cust for c, _ in last if (cust := directory.cached(c)) is not None}
        if not customers:
            return []
        settings = await self.settings(conn, list(customers.values()))
        rows: list[alert_rules.Row] = []
        wallet: dict[str, tuple[int, int, str]] = {}  # customer -> (seq, wallet after, event id)
        current: dict[str, str] = {}
        by_anchor: dict[int, str] = {}  # anchor day -> current period
        for (cid, period), (it, r) in last.items():
            c = customers.get(cid)
            if c is None:
                continue
            s = settings[cid]
            anchor = c.plan.billing_anchor_day
            cur = current[cid] = by_anchor.get(anchor) or by_anchor.setdefault(anchor, period_of(now, anchor))
            if c.spend_cap_micros:
                rows += alert_rules.spend_rows(cid, s, period, r.spend_after_micros, c.spend_cap_micros, it.event_id)
            if period == cur and c.plan.minimum_commit_micros > 0 and s.commit_after_percent is not None:
                start, end = period_bounds(period, anchor)
                rows += alert_rules.commit_rows(cid, s, period, r.spend_after_micros, c.plan.minimum_commit_micros,
                                                start, end, now, it.event_id)
            w = wallet.get(cid)
            if w is None or w[0] < it.seq:
                wallet[cid] = (it.seq, r.wallet_after_micros, it.event_id)
        for cid, (_, balance, eid) in wallet.items():
            if settings[cid].balance_below_micros is not None:
                rows += alert_rules.balance_rows(cid, settings[cid], current[cid], customers[cid].billing_mode, balance,
                                                 eid)
        for it, r in promotions:
            if it.customer_id in customers:
                rows += alert_rules.promotion_rows(it.customer_id, settings[it.customer_id], it.period,
                                                   r.promoted_from, r.promoted_to, it.event_id)
        if levels and self.redis is not None:
            rows += await self._budget_rows(levels, settings)
        spiky = [cid for cid in customers if settings[cid].spike_factor is not None]
        if spiky:
            hour = int(now // 3600)
            for cid, h, hour_micros, avg, hours in await conn.fetch(
                    "SELECT customer_id, hour, hour_micros, avg_micros, hours FROM alert_pace"
                    " WHERE customer_id = ANY($1::text[])", spiky):
                if h == hour:
                    rows += alert_rules.spike_rows(cid, settings[cid], current[cid], h, hour_micros, avg, hours,
                                                   wallet[cid][2])
        new = [r for r in rows if (r[0], r[1], r[2], r[3]) not in self._seen]
        if not new:
            return []
        raised = await raise_many(conn, new)
        if raised:  # rare (a threshold crossed): their kinds, for the rater's metrics
            metrics.alerts_raised(k for (k,) in await conn.fetch(
                "SELECT kind FROM alerts WHERE id = ANY($1::text[])", raised))
        if len(self._seen) > MAX_SEEN:
            self._seen.clear()
        self._seen.update((r[0], r[1], r[2], r[3]) for r in new)
        return raised

    async def _budget_rows(self, levels: dict[tuple[str, str, str], SettleItem],
                           settings: dict[str, AlertSettings]) -> list[alert_rules.Row]:
        """budget.threshold of the levels the batch added spend to, by level as the customer's:
        each level's budget (cached ttl_s) and its period spend now (after this settlement)."""
        now = time.monotonic()
        todo: list[tuple[str, str, str, SettleItem]] = []
        for (cid, period, field), it in levels.items():
            s = settings.get(cid)
            if s is not None and s.spend_cap_percents:
                todo.append((cid, period, field, it))
        stale = sorted({(cid, field) for cid, _, field, _ in todo
                        if (hit := self._budgets.get((cid, field))) is None or hit[0] <= now})
        if stale:
            by_customer: dict[str, list[str]] = {}
            for cid, field in stale:
                by_customer.setdefault(cid, []).append(field)
            replies = await redis_raw.run(self.redis, [("HMGET", CustomerKeys(c).limits, *fields)
                                                       for c, fields in by_customer.items()])
            if len(self._budgets) > MAX_SEEN:
                self._budgets.clear()
            for (c, fields), values in zip(by_customer.items(), replies):
                for field, v in zip(fields, values):
                    self._budgets[(c, field)] = (now + self.ttl_s, limits.encoded_cap(v))
        capped = []  # (customer, period, field, item, budget, level, id, path)
        for cid, period, field, it in todo:
            budget = self._budgets[(cid, field)][1]
            if not budget:
                continue
            level, ident, path = _level(field, it.key_id, self.paths)
            top = alert_rules.budget_threshold(level, ident, settings[cid].spend_cap_percents[-1])
            if (cid, "budget.threshold", top, period) not in self._seen:  # else every percent is raised
                capped.append((cid, period, field, it, budget, level, ident, path))
        if not capped:
            return []
        spends = await redis_raw.run(self.redis, [("GET", CustomerKeys(c).level_spend(f, p))
                                                  for c, p, f, *_ in capped])
        rows: list[alert_rules.Row] = []
        for (cid, period, _, it, budget, level, ident, path), spend in zip(capped, spends):
            rows += alert_rules.budget_rows(cid, settings[cid], period, level, ident, path, int(spend or 0), budget,
                                            it.event_id)
        return rows


def _level(field: str, key_id: str | None, paths: KeyPaths | None) -> tuple[str, str, dict[str, str]]:
    """A level field (`team:t1`, `app:a1`, `key:k1`) of an event's key -> the level's name as check.lua
    replies name it (an app's kind: `app` or `agent`), its id, and its path from the key's."""
    kind, _, ident = field.partition(":")
    p = paths.get(key_id) if paths is not None else NO_PATH
    if kind == "team":
        return "team", ident, {"team_id": ident}
    if kind == "app":
        return p.app_kind or "app", ident, {"team_id": p.team_id, "app_id": ident} if p.team_id else {"app_id": ident}
    path = {"team_id": p.team_id, "app_id": p.app_id} if p.app_id else {}
    return "key", ident, {**path, "key_id": ident}
