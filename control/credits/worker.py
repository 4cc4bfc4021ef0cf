"""The control process's credits work, every second (control.service.WORKERS): expire the credit
grants that are due (control.credits.grants.expire_due) and raise the auto-recharge requests whose
balance fell below its threshold (control.credits.auto_recharge.check). Both are idempotent and safe in
several control processes at once; a tick that fails (PostgreSQL or Redis down) is logged and
the next tick tries again.
"""
from __future__ import annotations

import asyncio
import logging

from control.credits import auto_recharge, grants as credit_grants
from tollgate.backends import Backends
from tollgate.config import Settings

log = logging.getLogger("tollgate.control.credits.wallet_change")

INTERVAL_S = 1.0


async def tick(db, redis) -> tuple[int, int]:
    """(grants expired, recharge requests raised)."""
    expired = await credit_grants.expire_due(db, redis)
    raised = await auto_recharge.check(db, redis)
    return len(expired), len(raised)


async def run(settings: Settings, stop: asyncio.Event, interval_s: float = INTERVAL_S) -> None:
    backends = Backends(settings, max_pool=2)  # its own: API calls do not wait behind it, nor it behind them
    failing = False
    try:
        while not stop.is_set():
            try:
                db, redis = await backends.get()
                expired, raised = await tick(db, redis)
                if expired or raised:
                    log.info("credits: %d grant(s) expired, %d recharge request(s) raised", expired, raised)
                failing = False
            except Exception as e:  # noqa: BLE001  (a worker never dies: the next tick retries)
                if not failing:
                    log.warning("credits tick failed (retrying every %.1f s): %r", interval_s, e)
                failing = True
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass
    finally:
        await backends.close()
