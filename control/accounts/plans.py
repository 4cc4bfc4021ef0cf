"""Rate plans: apply (validate, version, project), list, get."""
from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import yaml
from redis.asyncio import Redis

from control.accounts import customers
from control.errors import Conflict, InvalidInput, NotFound
from control.fields import iso
from control.lookup import known_id
from control.projection.writes import hold_off_rebuild, project_plan
from tollgate.cost_catalogs import catalog_from_document
from tollgate.plans import Plan, PlanError, parse_plan, plan_from_row


class _NoAliasLoader(yaml.SafeLoader):
    """YAML aliases can expand exponentially once the document is turned into JSON: refuse them."""

    def compose_node(self, parent, index):  # noqa: ANN001
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in plan documents")
        return super().compose_node(parent, index)


def parse_document_text(text: str) -> Any:
    """JSON or YAML text -> the raw document (YAML is a superset of JSON)."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise InvalidInput("document", f"not valid YAML/JSON: {e}") from None


def validate(source: str | dict) -> Plan:
    """A validated Plan whose document is plain JSON (what PostgreSQL and Redis store)."""
    doc = parse_document_text(source) if isinstance(source, str) else source
    try:
        parse_plan(doc)  # field errors against the document as written
        # Round-trip through JSON so the stored document re-parses to the same plan (YAML dates,
        # integer keys and the like become JSON strings here, not at read time).
        return parse_plan(orjson.loads(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)))
    except PlanError as e:
        raise InvalidInput(e.field, e.message) from None
    except (TypeError, orjson.JSONEncodeError) as e:
        raise InvalidInput("document", f"not representable as JSON: {e}") from None


async def apply_plan(db: asyncpg.Pool, redis: Redis, source: str | dict) -> dict:
    """Create or update a plan; its version goes up only when the document changed.

    Every customer on the plan is re-projected so new limits apply at once. All of it happens
    under the plan's row lock: concurrent applies and customer creations are serialised.

    The billing anchor day of a plan with customers cannot change: their current periods would
    move under them (usage already rated in one period would belong to another, and a period
    could be invoiced twice or never). Such customers move to another plan at a period boundary.
    """
    plan = validate(source)
    doc = orjson.dumps(plan.document).decode()
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        await _check_cost_catalog(conn, plan)
        old = await conn.fetchrow("SELECT * FROM plans WHERE id = $1 FOR UPDATE", plan.id)
        if old is not None and plan_from_row(old).billing_anchor_day != plan.billing_anchor_day:
            n = await conn.fetchval("SELECT count(*) FROM customers WHERE plan_id = $1", plan.id)
            if n:
                raise Conflict("billing_period.anchor_day", (
                    f"cannot change from {plan_from_row(old).billing_anchor_day} to {plan.billing_anchor_day} while "
                    f"{n} customer(s) are on plan {plan.id!r}: their current periods would move; "
                    "create a plan with the new anchor day and move them to it at a period boundary"))
        row = await conn.fetchrow(
            """INSERT INTO plans (id, version, document) VALUES ($1, 1, $2::jsonb)
               ON CONFLICT (id) DO UPDATE
                 SET version = plans.version + 1, document = EXCLUDED.document, updated_at = now()
                 WHERE plans.document IS DISTINCT FROM EXCLUDED.document
               RETURNING version""",
            plan.id, doc,
        )
        changed = row is not None
        if row is None:  # unchanged: ON CONFLICT locked the row but updated nothing
            row = await conn.fetchrow("SELECT version FROM plans WHERE id = $1", plan.id)
        else:  # the plan's history (plan_versions), in the same transaction
            await conn.execute("INSERT INTO plan_versions (plan_id, version, document) VALUES ($1, $2, $3::jsonb)",
                               plan.id, row["version"], doc)
        rows = await conn.fetch("SELECT * FROM customers WHERE plan_id = $1 ORDER BY id", plan.id)
        await project_plan(redis, plan)
        for c in rows:
            await customers.project_row(redis, c, plan)
    return {"id": plan.id, "name": plan.name, "version": row["version"], "changed": changed,
            "customers_reprojected": len(rows)}


async def _check_cost_catalog(conn: asyncpg.Connection, plan: Plan) -> None:
    """A plan naming a catalog: the catalog exists, in the plan's currency (4xx on cost_catalog)."""
    if plan.cost_catalog is None:
        return
    doc = await conn.fetchval("SELECT document FROM cost_catalogs WHERE id = $1 FOR SHARE", plan.cost_catalog)
    if doc is None:
        raise InvalidInput("cost_catalog", f"no cost catalog {plan.cost_catalog!r} (apply it first)")
    catalog = catalog_from_document(doc)
    if catalog.currency != plan.currency:
        raise InvalidInput("cost_catalog", f"cost catalog {catalog.id!r} is in {catalog.currency}, the plan in {plan.currency}")


async def list_plans(db: asyncpg.Pool) -> list[dict]:
    rows = await db.fetch(
        """SELECT p.id, p.version, p.document->>'name' AS name, p.updated_at, count(c.id) AS customers
           FROM plans p LEFT JOIN customers c ON c.plan_id = p.id
           GROUP BY p.id ORDER BY p.id"""
    )
    return [{"id": r["id"], "name": r["name"] or r["id"], "version": r["version"],
             "customers": r["customers"], "updated_at": iso(r["updated_at"])} for r in rows]


async def get_plan(db: asyncpg.Pool, plan_id: str) -> dict:
    row = await db.fetchrow("SELECT * FROM plans WHERE id = $1", plan_id) if known_id(plan_id) else None
    if row is None:
        raise NotFound("plan_id", f"no plan {plan_id!r}")
    plan = plan_from_row(row)
    return {"id": plan.id, "name": plan.name, "version": row["version"], "currency": plan.currency,
            "billing_mode": plan.billing_mode, "tiers": [t.name for t in plan.tiers],
            "updated_at": iso(row["updated_at"]), "document": plan.document}


async def plan_versions(db: asyncpg.Pool, plan_id: str, *, limit: int = 50) -> list[dict]:
    """The plan's versions as applied, newest first, each with its document."""
    if not known_id(plan_id) or not await db.fetchval("SELECT 1 FROM plans WHERE id = $1", plan_id):
        raise NotFound("plan_id", f"no plan {plan_id!r}")
    rows = await db.fetch("SELECT version, document, applied_at FROM plan_versions WHERE plan_id = $1"
                          " ORDER BY version DESC LIMIT $2", plan_id, limit)
    return [{"version": r["version"], "applied_at": iso(r["applied_at"]),
             "document": orjson.loads(r["document"]) if isinstance(r["document"], (str, bytes)) else r["document"]}
            for r in rows]

