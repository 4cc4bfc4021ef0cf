"""The embedded default bus: one Redis stream, `tg:events`.

Entry format (what consumers read): fields `key` (the partition key: customer id, or the API key
hash when unresolved) and `event` (the event as JSON). One entry per event, so a consumer group
acknowledges events one by one.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tollgate.bus import BusUnavailable, partition_key
from tollgate.keys import EVENTS_STREAM
from tollgate.redis_client import connect


# One command per batch: packing and parsing a reply per XADD cost more Python time than the check
# itself. Chunks stay small so the script never holds Redis for long (check.lua waits behind it).
_XADD_MANY = """
local maxlen = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if maxlen > 0 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'key', ARGV[i], 'event', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[1], '*', 'key', ARGV[i], 'event', ARGV[i + 1])
  end
end
return (#ARGV - 1) / 2
"""
_CHUNK = 200


class RedisStreamsProducer:
    """XADDs by a small script, a chunk of events per call, all chunks in one pipeline: a batch
    costs one round trip, and the script's reply is the acknowledgement."""

    def __init__(self, url: str, stream: str = EVENTS_STREAM, timeout: float = 1.0, maxlen: int | None = None):
        self.stream = stream
        self.timeout = timeout
        self.maxlen = maxlen  # approximate trimming; None keeps everything until consumers trim
        # No client-side retries: a failed batch is spooled and replayed by the caller.
        self._redis = connect(url, socket_connect_timeout=0.5, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))

    async def start(self) -> None:
        pass  # connects lazily: the enforcer must start while Redis is down

    async def publish(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in range(0, len(events), _CHUNK):
                    args: list = ["EVAL", _XADD_MANY, 1, self.stream, self.maxlen or 0]
                    for e in events[i:i + _CHUNK]:
                        args += (partition_key(e), orjson.dumps(e))
                    pipe.execute_command(*args)
                await asyncio.wait_for(pipe.execute(), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            raise BusUnavailable(f"redis stream {self.stream}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        await self._redis.aclose()


def decode_entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The event of one stream entry (for consumers)."""
    return orjson.loads(fields[b"event"])
