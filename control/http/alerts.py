"""Admin API of alerts: webhook endpoints, per-customer alert settings, alerts and their deliveries
(control.alerts.manage does the work; the delivery itself is control.alerts.delivery's)."""
from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from starlette.requests import Request

from control.alerts import manage as alerts
from control.http.messages import json_object, query_int
from tollgate.alert_rules import SETTING_KEYS


async def create_webhook(request: Request, db: asyncpg.Pool, redis: Redis) -> tuple[int, dict]:
    body = await json_object(request, ("url", "customer_id", "kinds", "description"))
    return 201, await alerts.create_endpoint(db, url=body.get("url"), customer_id=body.get("customer_id"),
                                             kinds=body.get("kinds"), description=body.get("description"))


async def list_webhooks(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return {"webhooks": await alerts.list_endpoints(db, request.query_params.get("customer_id"))}


async def get_webhook(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await alerts.get_endpoint(db, request.path_params["id"])


async def disable_webhook(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await alerts.disable_endpoint(db, request.path_params["id"])


async def get_alert_settings(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await alerts.get_settings(db, request.path_params["id"])


async def put_alert_settings(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    body = await json_object(request, SETTING_KEYS)
    return await alerts.set_settings(db, request.path_params["id"], body)


async def list_alerts(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    q = request.query_params
    return {"alerts": await alerts.list_alerts(db, customer_id=q.get("customer_id"), kind=q.get("kind"),
                                               limit=query_int(request, "limit", 100))}


async def list_deliveries(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    q = request.query_params
    return {"deliveries": await alerts.list_deliveries(
        db, customer_id=q.get("customer_id"), alert_id=q.get("alert_id"), endpoint_id=q.get("endpoint_id"),
        status=q.get("status"), limit=query_int(request, "limit", 100))}


async def get_delivery(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await alerts.get_delivery(db, request.path_params["id"])


async def redeliver(request: Request, db: asyncpg.Pool, redis: Redis) -> dict:
    return await alerts.redeliver(db, request.path_params["id"])


ROUTES = [
    ("POST", "/admin/webhooks", create_webhook),
    ("GET", "/admin/webhooks", list_webhooks),
    ("GET", "/admin/webhooks/{id}", get_webhook),
    ("DELETE", "/admin/webhooks/{id}", disable_webhook),
    ("GET", "/admin/customers/{id}/alert-settings", get_alert_settings),
    ("PUT", "/admin/customers/{id}/alert-settings", put_alert_settings),
    ("GET", "/admin/alerts", list_alerts),
    ("GET", "/admin/deliveries", list_deliveries),
    ("GET", "/admin/deliveries/{id}", get_delivery),
    ("POST", "/admin/deliveries/{id}/redeliver", redeliver),
]
