"""`tollgate-control` (the same as `tollgate admin serve`): the control plane's process. It serves
the admin API and runs the control plane's background work beside it:
- the projection's self-healing (control.projection.self_heal): a Redis that lost its data is
  rebuilt from PostgreSQL with no human step; the rater waits for it (NotProjected), the enforcer
  fails open meanwhile.
- the delivery of alerts (control.alerts.delivery): webhooks and bus events.
- credits (control.credits.worker): every second, credit grants that are due expire, and
  auto-recharge requests are raised for balances below their threshold.
Run at least one control process wherever the enforcer and rater run; several are safe (one
rebuild at a time, by an advisory lock).
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from control.credits import worker as credits_worker
from control.alerts.delivery import alert_delivery
from control.http.app import DISABLED, create_app
from control.projection.self_heal import SelfHeal
from tollgate.config import Settings
from tollgate.config import settings as load_settings
from tollgate.http_bounds import BoundedHttpToolsProtocol
from tollgate.redis_client import connect


async def self_heal(settings: Settings, stop: asyncio.Event) -> None:
    redis = connect(settings.redis_url)  # its own client: a rebuild must not wait behind API calls
    try:
        await SelfHeal(redis, settings.database_url).run(stop)
    finally:
        await redis.aclose()


WORKERS = (self_heal, alert_delivery, credits_worker.run)


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn  # noqa: PLC0415

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.admin_token:
        print(f"tollgate: warning: {DISABLED}; every admin route answers 503 (the background work runs)")
    # The same bounds on request heads and read times as the enforcer (431, 408): the admin API
    # faces operators' tools and, for customer-scoped reads, the provider's customers.
    uvicorn.run(create_app(settings, workers=WORKERS), host=host, port=port, log_level="info",
                http=BoundedHttpToolsProtocol, server_header=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tollgate-control", description="The control plane: admin API and background work.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    args = p.parse_args(argv)
    serve(load_settings(), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
