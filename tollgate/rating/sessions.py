"""Agent sessions' shared vocabulary (event types), and what a session is rated as (rater.sessions aggregates it; control.read.preview previews
it): one event with the session's summed measurements plus `sessions: 1` when the plan prices the
`sessions` metric (a plan may meter only what happened inside its sessions)."""
from __future__ import annotations

from collections.abc import Mapping

from tollgate.plans import Plan
from tollgate.rating.pricing.engine import plan_pricing

SESSIONS_METRIC = "sessions"
START, END = "agent.session.start", "agent.session.end"  # event types; anything else is inside the session
BOUNDARY_TYPES = (START, END)  # the only usage events that may measure nothing


def billable_id(customer_id: str, session_id: str) -> str:
    """The id of a session's billable event (its processed_events row: rated once). The customer
    is in it because session ids are the customer's own (two customers may both have a session
    `s1`); ':' is in no id (ID_PATTERN), so the pair is read back unambiguously."""
    return f"ses_{customer_id}:{session_id}"


def billable_measurements(plan: Plan, summed: Mapping[str, int]) -> dict[str, int]:
    out = dict(summed)
    if SESSIONS_METRIC in plan_pricing(plan).known_metrics:
        out[SESSIONS_METRIC] = out.get(SESSIONS_METRIC, 0) + 1
    return out
