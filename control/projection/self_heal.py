"""Self-healing projection: every rater process watches the projection marker and, when Redis has
lost it (restarted empty, or a fresh install), rebuilds the projection from PostgreSQL with no
human step.

A check is one EXISTS every `interval_s` (0.5 s). A missing marker starts `rebuild_locked` with
wait=False and only_if_missing: of several raters one rebuilds (a PostgreSQL advisory lock, which
its session holds: a rebuilder that dies releases it), the others find the lock taken and look
again on their next tick, by which time the marker is usually back. The rebuild holds every lock
group, so this process's own rating lanes (and everyone else's) wait for it instead of settling
against half a projection. A check or rebuild that fails (Redis restarting, PostgreSQL down) is
tried again after 0.1 s, backing off to 5 s while it keeps failing.

The watcher has its own PostgreSQL connection, opened when first needed and kept: the rating
pool's connections stay with the lanes.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from control.projection.rebuild import projected, rebuild_locked

log = logging.getLogger("tollgate.control.projection.self_heal")

INTERVAL_S = 0.5
RETRY_S = 0.1
MAX_BACKOFF_S = 5.0
REDIS_TIMEOUT_S = 2.0  # a hung Redis must not hang the watcher


class SelfHeal:
    def __init__(self, redis, database_url: str, interval_s: float = INTERVAL_S):
        self.redis = redis
        self.database_url = database_url
        self.interval_s = interval_s
        self._conn: asyncpg.Connection | None = None
        self._failing = False  # a check or rebuild failed: logged once until one succeeds
        self._unreachable = False  # the last check got no answer from Redis
        self._rebuild_failures = 0  # rebuilds failed in a row (they back off)
        self._missing = False  # the marker is missing: said so once

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: check, rebuild when needed, wait a tick."""
        try:
            while not stop.is_set():
                await self.check()
                try:
                    await asyncio.wait_for(stop.wait(), self._next_wait())
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.close()

    async def check(self) -> dict | None:
        """One tick: the rebuild's counts if this process rebuilt, else None. Never raises."""
        try:
            if await asyncio.wait_for(projected(self.redis), REDIS_TIMEOUT_S):
                self._recovered()
                self._missing = False
                return None
        except Exception as e:  # noqa: BLE001  (Redis away or restarting)
            self._failed("projection check", e)
            self._unreachable = True
            return None
        self._unreachable = False
        if not self._missing:
            log.warning("Redis has no projection marker: rebuilding the projection from PostgreSQL")
            self._missing = True
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.database_url, timeout=5)
            counts = await rebuild_locked(self.redis, self._conn, wait=False, only_if_missing=True)
        except Exception as e:  # noqa: BLE001  (PostgreSQL away, Redis lost again, ...)
            self._failed("projection rebuild", e)
            self._rebuild_failures += 1
            await self.close()  # the session may hold locks in an unknown state: start afresh
            return None
        self._recovered()
        if counts is not None:
            log.warning("projection rebuilt: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        return counts

    def _next_wait(self) -> float:
        """Redis unreachable: look again soon, it is likely back (empty) in a moment. A rebuild
        that failed: back off, up to MAX_BACKOFF_S while it keeps failing."""
        if self._unreachable:
            return RETRY_S
        if self._rebuild_failures:
            return min(RETRY_S * 2 ** self._rebuild_failures, MAX_BACKOFF_S)
        return self.interval_s

    def _failed(self, what: str, e: Exception) -> None:
        if not self._failing:
            log.warning("%s failed: %s: %s; retrying", what, type(e).__name__, e)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("projection check works again")
        self._failing = self._unreachable = False
        self._rebuild_failures = 0

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close(timeout=2)
            except Exception:  # noqa: BLE001
                conn.terminate()
