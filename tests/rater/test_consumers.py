"""The Redis Streams consumer group: resume of our own pending entries after a restart, takeover
of a dead consumer's pending entries by a live one, acknowledgement."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from redis.exceptions import RedisError

from rater.consumers.redis_streams import RedisStreamConsumer
from tollgate.bus.redis_streams import RedisStreamsProducer
from tollgate.keys import EVENTS_STREAM
from tollgate.local_services import start_redis
from tollgate.redis_client import connect


async def _publish(redis_server, n: int, prefix: str) -> list[str]:
    bus = RedisStreamsProducer(redis_server.url)
    ids = [f"{prefix}_{i}" for i in range(n)]
    try:
        await bus.publish([{"kind": "usage", "id": i, "customer_id": "c1"} for i in ids])
    finally:
        await bus.close()
    return ids


def _ids(msgs) -> list[str]:
    return [orjson.loads(m.value)["id"] for m in msgs]


async def test_restart_under_the_same_name_resumes_its_pending_entries(redis, redis_server):
    ids = await _publish(redis_server, 8, "e")
    a = RedisStreamConsumer(redis, name="rater-a")
    await a.start()
    first = await a.poll(5, 10)
    assert _ids(first) == ids[:5]
    await a.ack(first[:2])  # then "crashes" with 3 unacknowledged

    again = RedisStreamConsumer(redis, name="rater-a")
    await again.start()
    resumed = await again.poll(100, 10)
    assert _ids(resumed) == ids[2:5]  # its own pending list first
    await again.ack(resumed)
    rest = await again.poll(100, 10)
    assert _ids(rest) == ids[5:]
    await again.ack(rest)
    assert await again.poll(100, 10) == []
    assert (await redis.xpending(EVENTS_STREAM, "rater"))["pending"] == 0


async def test_a_live_consumer_claims_the_entries_of_a_dead_one(redis, redis_server):
    ids = await _publish(redis_server, 6, "d")
    dead = RedisStreamConsumer(redis, name="rater-dead")
    await dead.start()
    taken = await dead.poll(4, 10)
    assert len(taken) == 4  # and it never comes back

    live = RedisStreamConsumer(redis, name="rater-live", claim_idle_ms=200, claim_every_s=0)
    await live.start()
    fresh = await live.poll(100, 10)
    assert _ids(fresh) == ids[4:]  # the dead one's entries are not idle long enough yet
    await live.ack(fresh)
    await asyncio.sleep(0.3)
    claimed = await live.poll(100, 10)
    assert _ids(claimed) == ids[:4]
    await live.ack(claimed)
    assert (await redis.xpending(EVENTS_STREAM, "rater"))["pending"] == 0


async def test_trim_keeps_every_entry_a_group_still_needs(redis, redis_server):
    ids = await _publish(redis_server, 300, "t")
    c = RedisStreamConsumer(redis, name="rater-t", trim_every_s=0)
    await c.start()

    async def left() -> list[str]:
        return [orjson.loads(f[b"event"])["id"] for _, f in await redis.xrange(EVENTS_STREAM)]

    first = await c.poll(200, 10)
    await c.ack(first[:150])  # 150..199 still pending, 200..299 never read
    n1 = await c.trim()  # approximate: whole stream nodes below the oldest pending entry
    assert 0 < n1 <= 150 and await left() == ids[n1:]
    await c.ack(first[150:])
    await c.ack(await c.poll(200, 10))
    n2 = await c.trim()  # all acknowledged: only the node with the last delivered entry stays
    assert n2 > 0 and n1 + n2 < 300 and await left() == ids[n1 + n2:]


async def test_a_consumer_recreates_its_group_after_redis_restarts_empty():
    """No persistence on the bus Redis: the stream and the group vanish under a running consumer,
    which creates the group again and reads what is published next, without a restart."""
    server = start_redis()
    client = connect(server.url)
    c = RedisStreamConsumer(client, name="rater-r", trim_every_s=0)
    try:
        await c.start()
        ids = await _publish(server, 3, "before")
        held = await c.poll(100, 10)
        assert _ids(held) == ids  # read, not yet acknowledged, when Redis dies
        server.stop()
        server.start()
        with pytest.raises(RedisError):  # the pooled connection died with the server
            await c.poll(100, 10)
        await c.ack(held)  # rated meanwhile; their stream is gone, so nothing to acknowledge
        after = await _publish(server, 2, "after")
        got = []
        for _ in range(5):
            got += await c.poll(100, 10)
        assert _ids(got) == after
        await c.ack(got)
        assert (await client.xpending(EVENTS_STREAM, "rater"))["pending"] == 0
    finally:
        await client.aclose()
        server.stop()
