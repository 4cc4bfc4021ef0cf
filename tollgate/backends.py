"""The PostgreSQL pool and Redis client the services run on, opened in the running event loop."""
from __future__ import annotations

import asyncio

import asyncpg
from redis.asyncio import Redis

from tollgate.config import Settings
from tollgate.redis_client import connect


class Backends:
    """Opened on first use (so an ASGI app works with or without a lifespan); closes only what it
    opened itself, never a pool or client handed in."""

    def __init__(self, settings: Settings, *, db: asyncpg.Pool | None = None, redis: Redis | None = None,
                 max_pool: int = 4):
        self.settings = settings
        self._db, self._redis = db, redis
        self._owned: list[object] = []
        self._max_pool = max_pool
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[asyncpg.Pool, Redis]:
        if self._db is None or self._redis is None:
            async with self._lock:
                if self._redis is None:
                    self._redis = connect(self.settings.redis_url)
                    self._owned.append(self._redis)
                if self._db is None:
                    self._db = await asyncpg.create_pool(
                        self.settings.database_url, min_size=1, max_size=self._max_pool, timeout=10
                    )
                    self._owned.append(self._db)
        return self._db, self._redis

    async def close(self) -> None:
        for resource in reversed(self._owned):
            if isinstance(resource, asyncpg.Pool):
                await resource.close()
            else:
                await resource.aclose()  # type: ignore[attr-defined]
            if resource is self._db:
                self._db = None
            if resource is self._redis:
                self._redis = None
        self._owned.clear()

    async def __aenter__(self) -> tuple[asyncpg.Pool, Redis]:
        return await self.get()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
