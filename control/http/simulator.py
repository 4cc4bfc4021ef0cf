"""Admin route of the billing simulator (control.simulator): POST /admin/simulate.

The body is the draft plan document, JSON or YAML, as POST /admin/plans takes it; `period`
(YYYYMM) and `customers` (comma-separated ids; default the draft plan's customers) are query
parameters. A JSON body may instead wrap them: {"plan": {...}, "period": "202611", "customers": [...]}.
Nothing is written: the draft is not applied.
"""
from __future__ import annotations

import time

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.accounts import plans
from control.errors import InvalidInput
from control.http.messages import JSON_TYPES, YAML_TYPES, ApiError, read_body
from control.simulator.simulate import parse_customers, parse_period, simulate

WRAPPER_FIELDS = ("plan", "period", "customers")
QUERY_FIELDS = ("period", "customers")


async def simulate_route(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    _, raw = await read_body(request, JSON_TYPES + YAML_TYPES)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8", "body") from None
    try:
        doc = plans.parse_document_text(text)  # JSON is YAML
    except InvalidInput as e:
        raise ApiError(400, str(e), "body") from None
    q = request.query_params
    for name in q:
        if name not in QUERY_FIELDS:
            raise InvalidInput(name, f"unknown query parameter; expected {', '.join(QUERY_FIELDS)}")
    period, customers = q.get("period"), q.get("customers")
    if isinstance(doc, dict) and isinstance(doc.get("plan"), dict):
        for name in doc:
            if name not in WRAPPER_FIELDS:
                raise InvalidInput(name, f"unknown field; expected {', '.join(WRAPPER_FIELDS)}")
        period = doc.get("period", period)
        customers = doc.get("customers", customers)
        doc = doc["plan"]
    if not isinstance(doc, dict):
        raise InvalidInput("plan", "must be a plan document (an object)")
    draft = plans.validate(doc)  # 422 naming the plan's field
    return await simulate(db, draft, parse_period(period, time.time()), parse_customers(customers))


ROUTES = [("POST", "/admin/simulate", simulate_route)]
