"""check.lua's deadline is in Redis's clock: the estimate must err on the early side, even when
the path to Redis is slow one way (the asymmetry a round trip cannot see)."""
from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from enforcer.redisclock import RedisClock
from enforcer.rediswire import RedisWire
from tests.redis_proxies import DelayingProxy


async def redis_now_ms(redis) -> float:
    sec, usec = await redis.time()
    return sec * 1000 + usec / 1000


async def test_a_deadline_in_redis_clock_is_never_late(redis_server):
    direct = aioredis.Redis.from_url(redis_server.url)
    proxy = await DelayingProxy(redis_server.port).start()
    proxy.delay = 0.02  # replies come 20 ms late: the midpoint of a round trip is 10 ms off
    wire = RedisWire(proxy.url)
    clock = RedisClock(wire)
    try:
        for _ in range(3):
            assert await clock.sample()
        assert clock.error_ms >= 10  # it knows how unsure it is
        for _ in range(5):
            before = await redis_now_ms(direct)
            deadline = clock.deadline_ms(0.0)  # "now" in Redis's clock, early by the error bound
            after = await redis_now_ms(direct)
            assert deadline <= after, (deadline, after)
            # early, not absurdly so: within twice the bound (plus what this loop took)
            assert deadline >= before - 2 * clock.error_ms - 5 - (after - before)
            # and the undo's wait: Redis is surely past the deadline once it has passed
            wait = clock.seconds_until(deadline + 30)
            await asyncio.sleep(wait)
            assert await redis_now_ms(direct) >= deadline + 30
            await asyncio.sleep(0.01)
    finally:
        wire.close()
        await proxy.close()
        await direct.aclose()


async def test_before_any_sample_the_local_clock_stands_in(redis_server):
    clock = RedisClock(RedisWire(redis_server.url))  # never sampled
    assert abs(clock.deadline_ms(1.0) - (time.time() * 1000 + 1000)) < 50
