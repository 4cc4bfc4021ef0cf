"""Which alerts a customer's figures call for: pure, shared by the rater (which raises them after
settlement) and the control plane (which validates settings and shows them).

Settings come from the plan's optional `alerts:` section, overridden per customer (the control
plane's `alert_settings` table), key by key:

    alerts:
      spend_cap_percents: [50, 80, 100]   # of the customer's spend cap (its tier's), and of each
                                          # team/app/agent/key budget (limits.spend_cap); [] = off
      balance_below: "5.00"               # prepaid/hybrid balance under this amount; null = off
      tier_promoted: true
      commit_at_risk: {after_percent: 50} # judged once this much of the period is over; null = off
      usage_spike: {factor: 3, min_amount: "1.00"}  # null = off (the default)

A key left out takes the default above (balance_below and usage_spike: off; commit_at_risk only
when the plan has a minimum commit). Evaluation is by level, not by edge: every threshold the
figures are at or past is proposed each time, and the `alerts` table's UNIQUE (customer, kind,
threshold, period) makes it fire once. So a redelivered batch (a crash between settlement and
the raise) still raises what it missed, and nothing twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from tollgate.errors import FieldError
from tollgate.money import format_micros, to_micros

KINDS = ("spend.threshold", "budget.threshold", "wallet.balance_low", "tier.promoted", "commit.at_risk", "usage.spike",
         "wallet.recharge_requested")
DEFAULT_SPEND_CAP_PERCENTS = (50, 80, 100)
DEFAULT_COMMIT_AFTER_PERCENT = 50
SETTING_KEYS = ("spend_cap_percents", "balance_below", "tier_promoted", "commit_at_risk", "usage_spike")
# The spike's trailing average: an exponentially weighted mean of hourly spend, weight 1/12 per
# hour (a span of ~a day: 2 / (23 + 1)); `hours` of history correct its early bias.
SPIKE_ALPHA = Decimal(1) / 12
MAX_MONEY = Decimal(1_000_000_000)


class AlertSettingsError(FieldError):
    pass


@dataclass(frozen=True, slots=True)
class AlertSettings:
    spend_cap_percents: tuple[int, ...] = DEFAULT_SPEND_CAP_PERCENTS
    balance_below_micros: int | None = None
    tier_promoted: bool = True
    commit_after_percent: int | None = DEFAULT_COMMIT_AFTER_PERCENT
    spike_factor: Decimal | None = None
    spike_min_micros: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "spend_cap_percents": list(self.spend_cap_percents),
            "balance_below": None if self.balance_below_micros is None else format_micros(self.balance_below_micros),
            "tier_promoted": self.tier_promoted,
            "commit_at_risk": None if self.commit_after_percent is None else {"after_percent": self.commit_after_percent},
            "usage_spike": None if self.spike_factor is None else {
                "factor": str(self.spike_factor), "min_amount": format_micros(self.spike_min_micros)},
        }


DEFAULTS = AlertSettings()


def parse_settings(doc: Any, prefix: str = "alerts") -> AlertSettings:
    """An `alerts:` mapping (None: all defaults) -> AlertSettings; AlertSettingsError names the field."""
    if doc is None:
        return DEFAULTS
    if not isinstance(doc, dict):
        raise AlertSettingsError(prefix, "must be a mapping")
    for k in doc:
        if k not in SETTING_KEYS:
            raise AlertSettingsError(f"{prefix}.{k}", f"unknown setting; expected {', '.join(SETTING_KEYS)}")
    out: dict[str, Any] = {}
    if "spend_cap_percents" in doc:
        f, raw = f"{prefix}.spend_cap_percents", doc["spend_cap_percents"]
        raw = [] if raw is None else raw
        if not isinstance(raw, list) or len(raw) > 20:
            raise AlertSettingsError(f, "must be a list of at most 20 whole percents")
        for i, p in enumerate(raw):
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 1000:
                raise AlertSettingsError(f"{f}[{i}]", "must be a whole number from 1 to 1000")
        out["spend_cap_percents"] = tuple(sorted(set(raw)))
    if "balance_below" in doc:
        raw = doc["balance_below"]
        out["balance_below_micros"] = None if raw is None else _money(raw, f"{prefix}.balance_below")
    if "tier_promoted" in doc:
        if not isinstance(doc["tier_promoted"], bool):
            raise AlertSettingsError(f"{prefix}.tier_promoted", "must be true or false")
        out["tier_promoted"] = doc["tier_promoted"]
    if "commit_at_risk" in doc:
        raw, f = doc["commit_at_risk"], f"{prefix}.commit_at_risk"
        if raw is None or raw is False:
            out["commit_after_percent"] = None
        else:
            if not isinstance(raw, dict) or set(raw) - {"after_percent"}:
                raise AlertSettingsError(f, "must be null or {after_percent: N}")
            p = raw.get("after_percent", DEFAULT_COMMIT_AFTER_PERCENT)
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 99:
                raise AlertSettingsError(f"{f}.after_percent", "must be a whole number from 1 to 99")
            out["commit_after_percent"] = p
    if "usage_spike" in doc:
        raw, f = doc["usage_spike"], f"{prefix}.usage_spike"
        if raw is not None:
            if not isinstance(raw, dict) or set(raw) - {"factor", "min_amount"}:
                raise AlertSettingsError(f, "must be null or {factor: N, min_amount: AMOUNT}")
            factor = _decimal(raw.get("factor"), f"{f}.factor")
            if not Decimal(1) < factor <= 1000:
                raise AlertSettingsError(f"{f}.factor", "must be over 1 and at most 1000")
            out["spike_factor"] = factor
            out["spike_min_micros"] = _money(raw.get("min_amount", "0"), f"{f}.min_amount")
    return AlertSettings(**out)


def merged(plan_section: Any, overrides: dict | None) -> AlertSettings:
    """The customer's settings: its overrides key by key over the plan's section."""
    base = plan_section if isinstance(plan_section, dict) else {}
    return parse_settings({**base, **(overrides or {})})


def _decimal(v: Any, f: str) -> Decimal:
    if isinstance(v, bool) or isinstance(v, float) or not isinstance(v, (int, str)):
        raise AlertSettingsError(f, "required: a decimal string or a whole number (never a float)")
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise AlertSettingsError(f, f"{v!r} is not a number") from None
    if not d.is_finite():
        raise AlertSettingsError(f, "must be finite")
    return d


def _money(v: Any, f: str) -> int:
    d = _decimal(v, f)
    if d < 0 or d > MAX_MONEY:
        raise AlertSettingsError(f, f"must be from 0 to {MAX_MONEY}")
    if (d * 1_000_000) % 1:
        raise AlertSettingsError(f, "at most 6 decimal places (micros)")
    return to_micros(d)


# --------------------------------------------------------------------------- evaluation

# (customer_id, kind, threshold, period, payload, source_event_id): tollgate.alerts.raise_many's rows
Row = tuple[str, str, str, str, dict, str | None]


def spend_rows(customer_id: str, s: AlertSettings, period: str, spend_micros: int, cap_micros: int | None,
               event_id: str | None) -> list[Row]:
    """spend.threshold: each percent of the customer's cap the period's spend has reached."""
    if not cap_micros or cap_micros <= 0:
        return []
    return [(customer_id, "spend.threshold", str(p), period,
             {"level": "customer", "percent": p, "spend": format_micros(spend_micros), "cap": format_micros(cap_micros)},
             event_id)
            for p in s.spend_cap_percents if spend_micros * 100 >= p * cap_micros]


def budget_threshold(level: str, level_id: str, percent: int) -> str:
    """The threshold (the alert's key) of a level's budget alert: `team:t1:80`. Level ids match
    tollgate.keys.ID_PATTERN (no ':'), so it reads back unambiguously."""
    return f"{level}:{level_id}:{percent}"


def budget_rows(customer_id: str, s: AlertSettings, period: str, level: str, level_id: str, path: dict[str, str],
                spend_micros: int, budget_micros: int | None, event_id: str | None) -> list[Row]:
    """budget.threshold: each percent (the same `spend_cap_percents`) of a level's budget (its
    limits' spend_cap: a team, app, agent or key) the level's period spend has reached. `level` is
    the name check.lua's replies use (`key`, `app`, `agent`, `team`); `path` the level's place in
    the hierarchy (`team_id`, `app_id`, `key_id`, as far down as the level)."""
    if not budget_micros or budget_micros <= 0:
        return []
    spend, budget = format_micros(spend_micros), format_micros(budget_micros)
    return [(customer_id, "budget.threshold", budget_threshold(level, level_id, p), period,
             {"level": level, "id": level_id, "path": path, "percent": p, "spend": spend, "budget": budget}, event_id)
            for p in s.spend_cap_percents if spend_micros * 100 >= p * budget_micros]


def balance_rows(customer_id: str, s: AlertSettings, period: str, billing_mode: str, wallet_micros: int,
                 event_id: str | None) -> list[Row]:
    """wallet.balance_low: a prepaid or hybrid balance under the amount (once per period)."""
    if s.balance_below_micros is None or billing_mode == "postpaid" or wallet_micros >= s.balance_below_micros:
        return []
    below = format_micros(s.balance_below_micros)
    return [(customer_id, "wallet.balance_low", below, period,
             {"balance": format_micros(wallet_micros), "below": below}, event_id)]


def promotion_rows(customer_id: str, s: AlertSettings, period: str, old: str | None, new: str,
                   event_id: str | None) -> list[Row]:
    if not s.tier_promoted:
        return []
    return [(customer_id, "tier.promoted", new, period, {"from": old, "to": new}, event_id)]


def commit_rows(customer_id: str, s: AlertSettings, period: str, spend_micros: int, commit_micros: int,
                start: datetime, end: datetime, now: float, event_id: str | None) -> list[Row]:
    """commit.at_risk: once `after_percent` of the period is over, the spend projected to the
    period's end at the pace so far (spend x length / elapsed) falls short of the commit."""
    if s.commit_after_percent is None or commit_micros <= 0:
        return []
    t0, t1 = start.timestamp(), end.timestamp()
    elapsed, length = now - t0, t1 - t0
    if elapsed <= 0 or elapsed * 100 < s.commit_after_percent * length:
        return []
    projected = spend_micros * int(length) // max(int(elapsed), 1)
    if projected >= commit_micros:
        return []
    return [(customer_id, "commit.at_risk", format_micros(commit_micros), period,
             {"spend": format_micros(spend_micros), "projected": format_micros(projected),
              "commit": format_micros(commit_micros), "elapsed_percent": int(elapsed * 100 // length)}, event_id)]


def trailing_average(avg_micros: Decimal | int, hours: int) -> Decimal:
    """The bias-corrected weighted average of the hours before the current one (0: no history)."""
    if hours <= 0:
        return Decimal(0)
    weight = 1 - (1 - SPIKE_ALPHA) ** min(hours, 2000)
    return Decimal(avg_micros) / weight


def spike_rows(customer_id: str, s: AlertSettings, period: str, hour: int, hour_micros: int, avg_micros: Decimal,
               hours: int, event_id: str | None) -> list[Row]:
    """usage.spike: this hour's spend so far is at least `factor` times the trailing average and
    at least `min_amount`. Threshold = the hour (UTC, `YYYY-MM-DDTHH`): at most one per hour."""
    if s.spike_factor is None or hour_micros < max(s.spike_min_micros, 1):
        return []
    avg = trailing_average(avg_micros, hours)
    if avg <= 0 or hour_micros < s.spike_factor * avg:
        return []
    label = datetime.fromtimestamp(hour * 3600, timezone.utc).strftime("%Y-%m-%dT%H")
    return [(customer_id, "usage.spike", label, period,
             {"hour": label, "hour_spend": format_micros(hour_micros),
              "trailing_average": format_micros(int(avg.to_integral_value())), "factor": str(s.spike_factor)}, event_id)]


def roll_pace(hour: int, hour_micros: int, avg_micros: Decimal, hours: int, now_hour: int, add_micros: int
              ) -> tuple[int, int, Decimal, int]:
    """The pace state after adding `add_micros` at `now_hour` (what the rater's SQL upsert does;
    here for the tests and the documentation): a new hour folds the finished one into the
    average, then decays it over the empty hours between."""
    if now_hour <= hour:
        return hour, hour_micros + add_micros, avg_micros, hours
    gap = now_hour - hour
    keep = 1 - SPIKE_ALPHA
    avg = (Decimal(avg_micros) * keep + SPIKE_ALPHA * hour_micros) * keep ** min(gap - 1, 2000)
    return now_hour, add_micros, round(avg, 6), hours + gap
