"""Shared cost catalogs (tollgate.cost_catalogs): apply (validate, version), list, get.

A catalog is versioned like a plan: one row, version + 1 when its document changes. The rater
sees a new version by its customers' version stamps and prices the next batch's costs with it
(rater.pipeline.Directory). A catalog's currency cannot change under the plans that name it.
"""
from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from control.accounts.plans import parse_document_text
from control.errors import Conflict, InvalidInput, NotFound
from control.fields import iso
from control.lookup import known_id
from tollgate.cost_catalogs import CostCatalog, catalog_from_document, parse_catalog
from tollgate.plans import PlanError


def validate(source: str | dict) -> tuple[CostCatalog, dict]:
    """(the catalog, its document as plain JSON), InvalidInput naming the field at fault."""
    doc = parse_document_text(source) if isinstance(source, str) else source
    try:
        parse_catalog(doc)
        doc = orjson.loads(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))
        return parse_catalog(doc), doc
    except PlanError as e:
        raise InvalidInput(e.field, e.message) from None
    except (TypeError, orjson.JSONEncodeError) as e:
        raise InvalidInput("document", f"not representable as JSON: {e}") from None


async def apply_catalog(db: asyncpg.Pool, source: str | dict) -> dict:
    catalog, doc = validate(source)
    async with db.acquire() as conn, conn.transaction():
        # Under the catalog's row lock (or the insert's): no plan naming it changes currency meanwhile.
        await conn.execute("SELECT 1 FROM cost_catalogs WHERE id = $1 FOR UPDATE", catalog.id)
        other = await conn.fetchval(
            """SELECT id FROM plans WHERE document ->> 'cost_catalog' = $1
                 AND upper(coalesce(document ->> 'currency', 'USD')) <> $2 ORDER BY id LIMIT 1""",
            catalog.id, catalog.currency)
        if other is not None:
            raise Conflict("currency", f"plan {other!r} names cost catalog {catalog.id!r} in another currency")
        row = await conn.fetchrow(
            """INSERT INTO cost_catalogs (id, version, document) VALUES ($1, 1, $2::jsonb)
               ON CONFLICT (id) DO UPDATE
                 SET version = cost_catalogs.version + 1, document = EXCLUDED.document, updated_at = now()
                 WHERE cost_catalogs.document IS DISTINCT FROM EXCLUDED.document
               RETURNING version""",
            catalog.id, orjson.dumps(doc).decode())
        changed = row is not None
        if row is None:
            row = await conn.fetchrow("SELECT version FROM cost_catalogs WHERE id = $1", catalog.id)
        plans = await conn.fetchval("SELECT count(*) FROM plans WHERE document ->> 'cost_catalog' = $1", catalog.id)
    return {"id": catalog.id, "name": catalog.name, "currency": catalog.currency, "version": row["version"],
            "changed": changed, "metrics": len(catalog.costs), "plans": plans}


async def list_catalogs(db: asyncpg.Pool) -> list[dict]:
    rows = await db.fetch(
        """SELECT k.id, k.version, k.document ->> 'name' AS name, k.updated_at,
                  (SELECT count(*) FROM plans p WHERE p.document ->> 'cost_catalog' = k.id) AS plans
           FROM cost_catalogs k ORDER BY k.id""")
    return [{"id": r["id"], "name": r["name"] or r["id"], "version": r["version"], "plans": r["plans"],
             "updated_at": iso(r["updated_at"])} for r in rows]


async def get_catalog(db: asyncpg.Pool, catalog_id: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM cost_catalogs WHERE id = $1", catalog_id) if known_id(catalog_id) else None
    if row is None:
        raise NotFound("catalog_id", f"no cost catalog {catalog_id!r}")
    catalog = catalog_from_document(row["document"])
    return {"id": catalog.id, "name": catalog.name, "currency": catalog.currency, "version": row["version"],
            "updated_at": iso(row["updated_at"]), "document": orjson.loads(row["document"])
            if isinstance(row["document"], (str, bytes)) else row["document"]}
