"""Shared cost catalogs: what each metric costs the provider, for many plans at once (pure).

A catalog document (YAML or JSON), e.g. the model vendor's token prices per model:

    id: vendor-2026
    currency: USD
    costs:
      input_tokens:
        costs_by: {dimension: model, costs: {gpt-4o: "0.0000025", gpt-4o-mini: "0.00000015"}}

`costs` has the plan's `costs` format (tollgate.plans.parse_costs). A plan names one with
`cost_catalog: vendor-2026`; its effective costs are the catalog's with the plan's own on top:
a metric the plan lists is costed by the plan alone (its entry replaces the catalog's whole
entry for that metric). Catalogs are stored versioned like plans (table cost_catalogs,
control.accounts.cost_catalogs); the rater merges the current version in (with_catalog).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from tollgate.plans import MetricCost, Plan, PlanError, _currency, _ident, _mapping, parse_costs


@dataclass(frozen=True)
class CostCatalog:
    id: str
    name: str
    currency: str
    costs: tuple[MetricCost, ...]


def parse_catalog(doc: Any) -> CostCatalog:
    """A validated catalog; PlanError names the field at fault."""
    if not isinstance(doc, dict):
        raise PlanError("document", "must be a mapping")
    for name in doc:
        if name not in ("id", "name", "currency", "costs"):
            raise PlanError(str(name), "unknown field; expected id, name, currency, costs")
    cid = _ident(doc.get("id"), "id")
    costs = parse_costs(_mapping(doc.get("costs"), "costs", True), "costs")
    return CostCatalog(cid, str(doc.get("name") or cid), _currency(doc.get("currency", "USD")), costs)


def with_catalog(plan: Plan, catalog: CostCatalog | None) -> Plan:
    """The plan's effective costs: the catalog's, the plan's own entries winning per metric."""
    if catalog is None:
        return plan
    own = {c.metric for c in plan.costs}
    merged = plan.costs + tuple(c for c in catalog.costs if c.metric not in own)
    return replace(plan, costs=merged)


def catalog_from_document(doc: Any) -> CostCatalog:
    """A stored catalog (validated when applied): the jsonb column as text or decoded."""
    return parse_catalog(orjson.loads(doc) if isinstance(doc, (str, bytes)) else doc)
