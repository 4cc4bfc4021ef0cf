"""The value that flows through the pure rating stages.

One context per run (run_event / run_close / run_batch make a new one): each stage fills in its
own fields and returns the same object. It used to be frozen with a dataclasses.replace copy per
stage, ~34 µs of the ~90 µs an event took; the runs stay pure functions of their inputs (the
inputs are never changed, only this run's context).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from tollgate.rating.pricing.base import ChargeLine, UsageKey
from tollgate.rating.pricing.engine import NO_CARRY
from tollgate.plans import Plan



class Allowance(NamedTuple):  # immutable, and cheap to build (see tollgate.rating.pricing.base)
    """Included units attributed by one event (or the period, in batch) for one usage key."""

    charge_id: str
    dimension_key: str
    metric: str
    included_units: int  # units of this event covered by the quota
    overage_units: int  # units of this event beyond it
    remaining_units: int  # quota left after the event


@dataclass(slots=True)
class RatingContext:
    plan: Plan
    # event: one usage event; close: the period close (flat fees, minimums, commit true-up);
    # batch: the whole period from its totals (what event + ... + close must add up to);
    # rollover: the units carried into the period changed from carried_in_before to carried_in
    # after some of its events were rated (the previous period closed late): the credit.
    mode: str = "event"
    dimensions: Mapping[str, Any] = field(default_factory=dict)
    measurements: Mapping[str, int] = field(default_factory=dict)
    # event: the period cumulatives before the event; close and batch: the period's totals.
    cumulative: Mapping[UsageKey, int] = field(default_factory=dict)
    # Inputs the caller resolves for the customer (None = the plan's).
    billing_mode: str | None = None
    spend_cap_micros: int | None = None  # effective cap: customer override, tier multiplier
    tax_percent: Decimal | None = None  # from a tax rule (tollgate.rating.stages.tax.tax_percent_for)
    wallet_available_micros: int = 0  # prepaid balance this event may use (hybrid routing)
    # The period so far, as routed (hybrid credits: tollgate.rating.stages.route); None = unknown.
    wallet_paid_micros: int | None = None
    invoice_due_micros: int | None = None
    # event: an agent session's events summed (rater.sessions): each was checked against the
    # plan's maximum per event on arrival, the sum is not (stage quantities).
    aggregate: bool = False
    # Rollover (tollgate.rating.rollover): units of included quota carried into this period from
    # the one before, per usage key of an included charge; they raise that key's quota. None (or
    # empty): none carried in.
    carried_in: Mapping[UsageKey, int] | None = None
    # rollover mode: what the period's events so far were rated with
    carried_in_before: Mapping[UsageKey, int] | None = None

    # Filled by the stages.
    allowances: tuple[Allowance, ...] = ()
    lines: tuple[ChargeLine, ...] = ()  # rate
    cumulative_after: Mapping[UsageKey, int] = field(default_factory=dict)  # rate
    updates: Mapping[UsageKey, int] = field(default_factory=dict)  # rate: keys to upsert
    subtotal_before_micros: int = 0  # rate: period's rated charges before this step
    subtotal_after_micros: int = 0  # rate: and after it
    commit_true_up_micros: int = 0  # commit (close and batch only)
    cap_flags: tuple[int, ...] = ()  # commit: 80 and/or 100 when this step crossed them
    net_before_micros: int = 0  # discount: period gross minus discounts, before this step
    net_after_micros: int = 0  # discount: and after it
    discount_micros: int = 0  # discount: this step's share (>= 0 unless the gross went down)
    tax_micros: int = 0  # tax
    wallet_micros: int = 0  # route: to debit from the prepaid wallet (negative: credit)
    invoice_micros: int = 0  # route: to put on the period's invoice

    @property
    def carried(self) -> Mapping[UsageKey, int]:
        """carried_in, as the engine takes it (NO_CARRY, compared by identity, for none)."""
        return self.carried_in or NO_CARRY

    @property
    def charges_micros(self) -> int:
        return sum([line.amount_micros for line in self.lines])

    @property
    def gross_before_micros(self) -> int:
        """Period-to-date charges + commit true-up before this step (what discounts apply to)."""
        return self.subtotal_before_micros

    @property
    def gross_after_micros(self) -> int:
        return self.subtotal_after_micros + self.commit_true_up_micros

    @property
    def total_micros(self) -> int:
        """What this step costs the customer: charges + true-up - discount + tax."""
        return self.charges_micros + self.commit_true_up_micros - self.discount_micros + self.tax_micros

    @property
    def effective_billing_mode(self) -> str:
        return self.billing_mode or self.plan.billing_mode

    @property
    def effective_spend_cap_micros(self) -> int | None:
        return self.plan.spend_cap_micros if self.spend_cap_micros is None else self.spend_cap_micros

    @property
    def effective_tax_percent(self) -> Decimal:
        return self.plan.tax_percent if self.tax_percent is None else self.tax_percent
