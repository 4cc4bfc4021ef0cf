"""Prometheus metrics of tollgate-control, at GET /metrics on its HTTP port (no token: like the
enforcer's, for a scraper on the operators' network): the delivery of alerts (control.alerts.delivery).
docs/ARCHITECTURE.md ("Metrics") says what each one means."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

WEBHOOK_ATTEMPTS = Counter(
    "tollgate_webhook_attempts_total", "Webhook POSTs of alerts, by alert kind and what the attempt left the delivery",
    ["kind", "outcome"],  # delivered (2xx), retrying (tried again after a backoff), failed (given up)
)
ALERTS_PUBLISHED = Counter("tollgate_alerts_published_total", "Alerts put on the bus as events, by kind", ["kind"])


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def route() -> Route:
    return Route("/metrics", _metrics, methods=["GET"])
