"""Margin Guard rules: what trips the guard, pure, shared by the rater (which trips it) and the
control plane (which validates rules, lists trips and resets them).

Rules come from the plan's optional `margin_guard:` list, or from the customer's own list (the
`margin_guard_settings` table), which replaces the plan's as a whole:

    margin_guard:
      - id: runaway_session            # names the trip, the alert and the DENY's rule
        when: session_cost             # a session's running cost passes ...
        percent_of_outcome: 80         # ... 80 % of the price of its outcome ...
        outcome: task_completed        # ... (a composite charge of the plan; its base unit price)
        # or: max_cost: "2.00"         # ... an absolute cost
        action: deny                   # deny: the next /v1/check of what it stops is denied; alert: alert only
        stop: session                  # session | agent (the session's agent, every session of it)
      - id: thin_margin
        when: period_margin            # the customer's period margin (price - cost) / price ...
        below_percent: 20              # ... falls below 20 % ...
        min_revenue: "10.00"           # ... once the period's price is at least this (default 0)
        action: alert
        # stop: customer (the only scope of a period rule)

A trip is one row in `margin_guard_trips` (rater/migrations/0017), active until reset: at the
session's end (a session rule stopping a session) or by an operator. A `deny` trip sets a field of
the customer's guard hash in Redis (tollgate.keys.CustomerKeys.guard), which lua/check.lua reads
for the request's path and session; a rebuild restores the fields from the active trips.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tollgate.errors import FieldError
from tollgate.keys import ID_PATTERN
from tollgate.money import format_micros, to_micros

WHEN = ("session_cost", "period_margin")
ACTIONS = ("deny", "alert")
STOPS = {"session_cost": ("session", "agent"), "period_margin": ("customer",)}
ALERT_KIND = "margin_guard.tripped"
MAX_RULES = 50


class GuardRuleError(FieldError):
    pass


@dataclass(frozen=True, slots=True)
class GuardRule:
    id: str
    when: str
    action: str
    stop: str
    percent: Decimal  # session_cost: percent of the outcome's price; period_margin: the floor
    outcome: str | None = None  # session_cost with percent_of_outcome: the composite charge id
    max_cost_micros: int | None = None  # session_cost with max_cost
    min_revenue_micros: int = 0  # period_margin

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "when": self.when, "action": self.action, "stop": self.stop}
        if self.when == "session_cost":
            if self.max_cost_micros is not None:
                out["max_cost"] = format_micros(self.max_cost_micros)
            else:
                out["percent_of_outcome"] = str(self.percent)
                out["outcome"] = self.outcome
        else:
            out["below_percent"] = str(self.percent)
            out["min_revenue"] = format_micros(self.min_revenue_micros)
        return out

    def session_limit_micros(self, outcome_prices: dict[str, int]) -> int | None:
        """The session cost past which this rule trips (None: the plan has no such outcome)."""
        if self.max_cost_micros is not None:
            return self.max_cost_micros
        price = outcome_prices.get(self.outcome or "")
        if price is None:
            return None
        return int(price * self.percent / 100)


def parse_rules(raw: Any, prefix: str = "margin_guard") -> tuple[GuardRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise GuardRuleError(prefix, "must be a list of rules")
    if len(raw) > MAX_RULES:
        raise GuardRuleError(prefix, f"at most {MAX_RULES} rules")
    rules: list[GuardRule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw):
        f = f"{prefix}[{i}]"
        if not isinstance(r, dict):
            raise GuardRuleError(f, "must be a mapping")
        unknown = set(r) - {"id", "when", "action", "stop", "percent_of_outcome", "outcome", "max_cost",
                            "below_percent", "min_revenue"}
        if unknown:
            raise GuardRuleError(f"{f}.{sorted(unknown)[0]}", "unknown key")
        rid = r.get("id")
        if not isinstance(rid, str) or not ID_PATTERN.match(rid):
            raise GuardRuleError(f"{f}.id", "required: 1-64 of A-Z a-z 0-9 _ . -")
        if rid in seen:
            raise GuardRuleError(f"{f}.id", f"duplicate rule id {rid!r}")
        seen.add(rid)
        when = _choice(r.get("when"), WHEN, f"{f}.when")
        action = _choice(r.get("action", "deny"), ACTIONS, f"{f}.action")
        stop = _choice(r.get("stop", STOPS[when][0]), STOPS[when], f"{f}.stop")
        if when == "session_cost":
            has_pct, has_max = "percent_of_outcome" in r, "max_cost" in r
            if has_pct == has_max:
                raise GuardRuleError(f"{f}.percent_of_outcome", "give either percent_of_outcome (with outcome) or max_cost")
            if has_max:
                rules.append(GuardRule(rid, when, action, stop, Decimal(0),
                                       max_cost_micros=_money(r["max_cost"], f"{f}.max_cost")))
                continue
            outcome = r.get("outcome")
            if not isinstance(outcome, str) or not outcome:
                raise GuardRuleError(f"{f}.outcome", "required with percent_of_outcome: a composite charge id")
            rules.append(GuardRule(rid, when, action, stop, _percent(r["percent_of_outcome"], f"{f}.percent_of_outcome",
                                                                        hi=Decimal(10_000)), outcome=outcome))
        else:
            if "below_percent" not in r:
                raise GuardRuleError(f"{f}.below_percent", "required for when: period_margin")
            rules.append(GuardRule(rid, when, action, stop, _percent(r["below_percent"], f"{f}.below_percent", lo=Decimal(-10_000)),
                                   min_revenue_micros=_money(r.get("min_revenue", "0"), f"{f}.min_revenue")))
    return tuple(rules)


def check_outcomes(rules: tuple[GuardRule, ...], outcome_ids: set[str], prefix: str = "margin_guard") -> None:
    """A percent_of_outcome rule must name a composite charge of the plan it runs under."""
    for i, r in enumerate(rules):
        if r.outcome is not None and r.outcome not in outcome_ids:
            raise GuardRuleError(f"{prefix}[{i}].outcome", f"no composite charge {r.outcome!r} in the plan")


def session_trips(rules: tuple[GuardRule, ...], cost_micros: int, outcome_prices: dict[str, int]) -> list[GuardRule]:
    """The session rules a session's running cost has passed."""
    out = []
    for r in rules:
        if r.when == "session_cost":
            limit = r.session_limit_micros(outcome_prices)
            if limit is not None and cost_micros > limit:
                out.append(r)
    return out


def margin_trips(rules: tuple[GuardRule, ...], price_micros: int, cost_micros: int) -> list[GuardRule]:
    """The period rules a customer's period figures break: margin % below the floor, once the
    period's price reached the rule's minimum revenue (a zero price with a cost: margin -inf)."""
    out = []
    for r in rules:
        if r.when != "period_margin" or price_micros < r.min_revenue_micros:
            continue
        if price_micros <= 0:
            if cost_micros > 0:
                out.append(r)
            continue
        if Decimal(price_micros - cost_micros) * 100 < r.percent * price_micros:
            out.append(r)
    return out


def _choice(v: Any, options: tuple[str, ...], f: str) -> str:
    if v not in options:
        raise GuardRuleError(f, f"must be one of {', '.join(options)}")
    return v


def _percent(v: Any, f: str, lo: Decimal = Decimal(0), hi: Decimal = Decimal(100)) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise GuardRuleError(f, "must be a number or a decimal string")
    try:
        d = Decimal(str(v))
    except Exception:
        raise GuardRuleError(f, "must be a number or a decimal string") from None
    if not d.is_finite() or d < lo or d > hi:
        raise GuardRuleError(f, f"must be between {lo} and {hi}")
    return d


def _money(v: Any, f: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise GuardRuleError(f, "must be a decimal string, e.g. \"2.00\"")
    try:
        m = to_micros(Decimal(str(v)))
    except Exception:
        raise GuardRuleError(f, "must be a decimal string, e.g. \"2.00\"") from None
    if m < 0 or m > 10**18:
        raise GuardRuleError(f, "must be between 0 and 10^12")
    return m
