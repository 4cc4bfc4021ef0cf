"""The embedded default bus: one Redis stream, `tg:events`.

Entry format (what consumers read): fields `key` (the partition key: customer id, or the API key
hash when unresolved) and `event` (the event as JSON). One entry per event, so a consumer group
acknowledges events one by one.

The stream's Redis may lose everything (no persistence; a restart comes back empty), so an
acknowledged publish is not durable: the producer's write-ahead spool keeps each event until
`floor()` shows every consumer group has consumed it in the same incarnation of the stream
(lua/bus_publish.lua sets and returns the epoch and the producer's high-water mark,
lua/bus_floor.lua reads them with the groups atomically). Both scripts touch only `tg:events`,
`{tg:events}:epoch` and `{tg:events}:producer:<id>`, one cluster slot: on a Redis Cluster the bus
lives on the node of that slot.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

import lua
from tollgate.bus import BusUnavailable, Floor, Receipt, parse_entry_id, partition_key
from tollgate.keys import EVENTS_EPOCH, EVENTS_STREAM, events_producer
from tollgate.redis_client import connect

# One command per chunk: packing and parsing a reply per XADD cost more Python time than the check
# itself. Chunks stay small so the script never holds Redis for long (check.lua waits behind it).
_CHUNK = 200
# A producer's high-water mark outlives a quiet spell of this long; expired, it reads as a lost
# tail and the producer publishes its spool again (duplicates, harmless).
_MARK_TTL_MS = 24 * 3600 * 1000


class RedisStreamsProducer:
    """XADDs by a small script, a chunk of events per call, all chunks in one pipeline: a batch
    costs one round trip, and the script's reply is the acknowledgement."""

    durable_on_ack = False

    def __init__(self, url: str, stream: str = EVENTS_STREAM, timeout: float = 1.0, maxlen: int | None = None,
                 epoch_key: str = EVENTS_EPOCH):
        self.stream = stream
        self.epoch_key = epoch_key
        self.producer_key = events_producer(os.urandom(8).hex())  # this process's high-water mark
        self.timeout = timeout
        self.maxlen = maxlen  # approximate trimming; None keeps everything until consumers trim
        self._publish = lua.load("bus_publish").source
        self._floor = lua.load("bus_floor").source
        # One immediate retry, for a pooled connection that died with a restarted Redis; beyond
        # that a failed batch stays in the spool and is replayed (all within `timeout`).
        self._redis = connect(url, socket_connect_timeout=0.5, socket_timeout=timeout, retry=Retry(NoBackoff(), 1))

    async def start(self) -> None:
        pass  # connects lazily: the enforcer must start while Redis is down

    async def publish(self, events: list[dict[str, Any]]) -> Receipt | None:
        if not events:
            return None
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in range(0, len(events), _CHUNK):
                    args: list = ["EVAL", self._publish, 3, self.stream, self.epoch_key, self.producer_key,
                                  self.maxlen or 0, os.urandom(12).hex(), _MARK_TTL_MS]
                    for e in events[i:i + _CHUNK]:
                        args += (partition_key(e), orjson.dumps(e))
                    pipe.execute_command(*args)
                replies = await asyncio.wait_for(pipe.execute(), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            raise BusUnavailable(f"redis stream {self.stream}: {type(e).__name__}: {e}") from e
        epochs = {r[0] for r in replies}
        if len(epochs) > 1:  # the stream was lost between two chunks of one batch: no epoch fits all
            return Receipt(b"", (0, 0))
        before = replies[0][2]
        return Receipt(replies[-1][0], parse_entry_id(replies[-1][1]), parse_entry_id(before) if before else None)

    async def floor(self) -> Floor:
        """What every consumer group has consumed, in the stream's current incarnation."""
        try:
            reply = await asyncio.wait_for(
                self._redis.eval(self._floor, 3, self.stream, self.epoch_key, self.producer_key), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            raise BusUnavailable(f"redis stream {self.stream}: {type(e).__name__}: {e}") from e
        groups = tuple((parse_entry_id(last), parse_entry_id(oldest) if oldest else None)
                       for _name, last, _pending, oldest in reply[2:])
        return Floor(reply[0] or None, groups, parse_entry_id(reply[1]) if reply[1] else None)

    async def close(self) -> None:
        await self._redis.aclose()


def decode_entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The event of one stream entry (for consumers)."""
    return orjson.loads(fields[b"event"])
