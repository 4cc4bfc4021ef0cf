"""Redis Streams consumer group on `tg:events` (the default bus).

Delivery: XREADGROUP hands each entry to one consumer of the group and keeps it in that consumer's
pending list until XACK. Recovery, in the order a poll tries it:
1. our own pending entries (a restart under the same name resumes exactly where it crashed);
2. XAUTOCLAIM of entries idle longer than `claim_idle_ms` in any consumer's pending list (a
   consumer that died and never came back: a live one takes its entries over);
3. new entries ('>').
A slow consumer whose entries are claimed meanwhile causes a second delivery, which the pipeline's
idempotency absorbs.

The bus Redis may restart empty: the stream and the group are gone (NOGROUP). The consumer then
creates the group again from id 0 and goes on; the enforcers publish again, from their spools,
everything the lost stream held that the group had not consumed. A batch in hand from the lost
stream is rated as usual; its ack has nothing left to acknowledge.

XREADGROUP and XACK, once per batch each, go through tollgate.redis_raw: redis-py's packing of a
thousand ids and its parsing of a thousand entries (into dicts, via its RESP3 -> RESP2 legacy
conversion) cost ~3 µs per event.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from tollgate import redis_raw
from rater.consumers import Message
from tollgate.keys import EVENTS_STREAM
from tollgate.redis_client import connect

log = logging.getLogger(__name__)

LAG_COUNT_MAX = 100_000  # entries counted by lag() when Redis cannot tell the group's lag itself


def default_consumer_name() -> str:
    """Stable across restarts of a container (the hostname), unique per process on one host."""
    return os.environ.get("TOLLGATE_RATER_CONSUMER") or f"{socket.gethostname()}-{os.getpid()}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def payload(fields: dict) -> bytes | None:
    """The event JSON of a stream entry: the producer's one field (named 'event' by convention)."""
    if not fields:
        return None  # the entry was trimmed away before we read it
    for name in (b"event", b"e", b"data", b"value"):
        if name in fields:
            return fields[name]
    return next(iter(fields.values()))


class RedisStreamConsumer:
    def __init__(
        self,
        redis: Redis,
        group: str = "rater",
        name: str | None = None,
        stream: str = EVENTS_STREAM,
        claim_idle_ms: int = 30_000,
        claim_every_s: float = 5.0,
        trim_every_s: float = 10.0,
    ):
        self.redis = redis
        self.group = group
        self.name = name or default_consumer_name()
        self.stream = stream
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self._own_pending_from: bytes | None = b"0"  # None once our old pending list is drained
        self._next_claim = 0.0
        self._claim_cursor = b"0-0"
        self._owns_client = False
        self.trim_every_s = trim_every_s  # 0: never trim (another component does)
        self._next_trim = time.monotonic() + trim_every_s

    @classmethod
    def from_url(cls, url: str, **kw) -> "RedisStreamConsumer":
        c = cls(connect(url), **kw)
        c._owns_client = True
        return c

    async def start(self) -> None:
        try:
            # from id 0: events published before the first rater ever started are rated too
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _group_lost(self, e: ResponseError) -> None:
        """The stream or the group is gone (the bus Redis restarted empty): start over on the new one."""
        log.warning("consumer group %s on %s is gone (%s): creating it again from id 0", self.group, self.stream, e)
        self._own_pending_from = b"0"
        self._claim_cursor = b"0-0"
        await self.start()

    async def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        try:
            return await self._poll(max_records, timeout_ms)
        except ResponseError as e:
            if not _is_nogroup(e):
                raise
            await self._group_lost(e)
            return []

    async def _poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        while self._own_pending_from is not None:
            msgs, last = await self._read(self._own_pending_from, max_records, None)
            self._own_pending_from = last  # None: our old pending list is drained
            if msgs:
                return msgs
        if time.monotonic() >= self._next_claim:
            msgs = await self._claim(max_records)
            if msgs:
                return msgs
        return (await self._read(b">", max_records, timeout_ms))[0]

    async def _read(self, from_id: bytes, count: int, block_ms: int | None) -> tuple[list[Message], bytes | None]:
        """Messages read and the id of the last entry seen (None when there was none)."""
        if redis_raw.supported(self.redis):
            block = ("BLOCK", block_ms) if block_ms is not None else ()
            (reply,) = await redis_raw.execute(self.redis, [(
                "XREADGROUP", "GROUP", self.group, self.name, "COUNT", count, *block, "STREAMS", self.stream, from_id)])
            if isinstance(reply, Exception):
                raise reply
            # unparsed: {stream: entries} (RESP3) or [[stream, entries]] (RESP2), None on timeout;
            # an entry is [id, [field, value, ...]], fields None when it was deleted meanwhile
            streams = reply.items() if isinstance(reply, dict) else reply or ()
        else:
            # A RedisCluster: sent to the stream's node by name. redis-py's own xreadgroup asks a
            # fixed node (COMMAND GETKEYS) where XREADGROUP's key is, and stays stuck, refused,
            # once that node is gone (a failover); the node cache it reads here does heal.
            block = ("BLOCK", block_ms) if block_ms is not None else ()
            streams = await self.redis.execute_command(
                "XREADGROUP", "GROUP", self.group, self.name, "COUNT", count, *block, "STREAMS", self.stream, from_id,
                target_nodes=self.redis.get_node_from_key(self.stream)) or ()
        out: list[Message] = []
        dead: list[bytes] = []
        last = None
        for _stream, entries in streams:
            if entries:
                last = entries[-1][0]
            _split(entries, out, dead)
        if dead:
            await self._drop_trimmed(dead)
        return out, last

    async def _claim(self, count: int) -> list[Message]:
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, start_id=self._claim_cursor, count=count
        )
        cursor, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        self._claim_cursor = cursor
        if cursor in (b"0-0", "0-0"):
            self._next_claim = time.monotonic() + self.claim_every_s  # a full pass: rest a while
        out: list[Message] = []
        _split(entries, out, deleted)
        if deleted:
            await self._drop_trimmed(deleted)
        if out:
            log.warning("claimed %d pending entries idle > %d ms from other consumers", len(out), self.claim_idle_ms)
        return out

    async def _drop_trimmed(self, ids: list[bytes]) -> None:
        # Entries trimmed from the stream before being rated cannot be recovered from the bus.
        log.error("%d pending stream entries were trimmed before rating; acknowledging them", len(ids))
        await self.redis.xack(self.stream, self.group, *ids)

    async def ack(self, messages: list[Message]) -> None:
        if messages:
            ids = [m.token for m in messages]
            try:
                if redis_raw.supported(self.redis):
                    (reply,) = await redis_raw.execute(self.redis, [("XACK", self.stream, self.group, *ids)])
                    if isinstance(reply, Exception):
                        raise reply
                else:
                    await self.redis.xack(self.stream, self.group, *ids)
            except ResponseError as e:
                if not _is_nogroup(e):
                    raise
                await self._group_lost(e)  # their stream is gone: nothing left to acknowledge
        if self.trim_every_s and time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + self.trim_every_s
            try:
                await self.trim()
            except RedisError as e:  # trimming can wait; the batch is acknowledged
                log.warning("trimming %s failed: %s", self.stream, e)

    async def trim(self) -> int:
        """Drop entries every consumer group is done with: older than each group's oldest pending
        entry, or than its last delivered one when nothing is pending. The producer does not
        trim (it cannot know what was rated), so this keeps the stream bounded."""
        floor = None
        for g in await self.redis.xinfo_groups(self.stream):
            pending = await self.redis.xpending(self.stream, g["name"])
            oldest = pending["min"] if pending["pending"] else g["last-delivered-id"]
            oldest = oldest.decode() if isinstance(oldest, bytes) else oldest
            if oldest in (None, "0-0"):
                return 0  # a group that has read nothing yet needs everything
            if floor is None or _id_key(oldest) < _id_key(floor):
                floor = oldest
        if floor is None:
            return 0
        return await self.redis.xtrim(self.stream, minid=floor, approximate=True)

    async def lag(self) -> dict[tuple[str, str], int]:
        """The group's entries not acknowledged: not yet delivered (XINFO GROUPS `lag`) plus
        delivered and pending (any consumer's). A stream has one "partition" (label value "").
        Redis reports no `lag` when it cannot tell (entries deleted past the group's position):
        then the entries after its last delivered id are counted, up to LAG_COUNT_MAX."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError as e:
            if not _is_nogroup(e):
                raise
            groups = []  # the stream is gone (the bus restarted empty): nothing to consume
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name != self.group:
                continue
            undelivered = g.get("lag")
            if undelivered is None:
                last = g["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else last
                undelivered = len(await self.redis.xrange(self.stream, f"({last}", "+", count=LAG_COUNT_MAX))
            return {(self.stream, ""): int(undelivered) + int(g["pending"])}
        return {(self.stream, ""): 0}  # the group is gone (the bus restarted empty): poll creates it again

    async def stop(self) -> None:
        if self._owns_client:
            await self.redis.aclose()


def _is_nogroup(e: ResponseError) -> bool:
    return str(e).startswith("NOGROUP") or "no such key" in str(e).lower()


def _split(entries, out: list[Message], gone: list) -> None:
    """Stream entries into messages; an entry trimmed away (no fields left) goes to `gone`."""
    for entry_id, fields in entries:
        if isinstance(fields, list):  # RESP3 / raw replies give a flat list
            fields = dict(zip(fields[::2], fields[1::2]))
        value = payload(fields)
        if value is None:
            gone.append(entry_id)
        else:
            out.append(Message(value, entry_id))
