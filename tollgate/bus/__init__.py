"""The event bus: one small producer interface, two transports (Redis Streams, Kafka), a local
write-ahead spool (tollgate.bus.spool).

Events are JSON-able dicts with a unique `id` (see docs/ARCHITECTURE.md, "Events on the bus").
`publish` returns only once the bus has acknowledged every event of the batch (Redis: the script's
reply; Kafka: acks=all), else raises BusUnavailable. Delivery is at least once: a batch that timed
out may still arrive, and consumers are idempotent by `id`.

An acknowledgement is not always durability. Kafka's (acks=all, replicated) is: the producer may
forget the event. A Redis Stream's is not (the bus Redis may run without persistence): the
producer keeps the event in its write-ahead log until `floor()` shows it consumed by every
consumer group in the same incarnation (`epoch`) of the stream it was published to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tollgate.config import Settings


class BusUnavailable(Exception):
    """The bus did not acknowledge the batch (down, refusing, or too slow)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a published batch went: the stream's incarnation, the id of its last entry, and the
    producer's high-water mark found before it (None: the stream had nothing of this producer)."""
    epoch: bytes
    last_id: tuple[int, int]
    before: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Floor:
    """What the consumer groups of a stream have durably consumed, in incarnation `epoch`.

    `groups`: (last delivered id, oldest pending id or None) per group; `mark`: the producer's
    high-water mark (the id of its latest entry the stream still has a record of)."""
    epoch: bytes | None
    groups: tuple[tuple[tuple[int, int], tuple[int, int] | None], ...]
    mark: tuple[int, int] | None = None

    def consumed(self, entry_id: tuple[int, int]) -> bool:
        """Every group has read it and acknowledged it (no group: nobody has)."""
        if not self.groups:
            return False
        return all(entry_id <= last and (oldest is None or entry_id < oldest) for last, oldest in self.groups)


class EventBus(Protocol):
    # True: an acknowledged event is durable (Kafka, replicated); False: only once consumed (Redis).
    durable_on_ack: bool

    async def start(self) -> None: ...

    async def publish(self, events: list[dict[str, Any]]) -> Receipt | None: ...

    async def floor(self) -> Floor | None: ...

    async def close(self) -> None: ...


def partition_key(event: dict[str, Any]) -> str:
    """Events of one customer stay in order on one partition; unresolved keys go by their hash."""
    return event.get("customer_id") or event.get("api_key_hash") or event["id"]


def parse_entry_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id ("1700000000000-3") as a comparable tuple."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def make_bus(settings: Settings, *, stream_maxlen: int | None = None) -> EventBus:
    """The configured producer; `stream_maxlen` caps a Redis stream (approximately: entries beyond
    it are dropped even if unconsumed, which gives up the durability of a 202; 0/None = no cap)."""
    if settings.bus == "kafka":
        from tollgate.bus.kafka import KafkaProducerBus  # noqa: PLC0415  (aiokafka only when used)

        return KafkaProducerBus(settings.kafka_bootstrap, settings.kafka_topic, idempotence=settings.kafka_idempotence)
    if settings.bus == "redis":
        from tollgate.bus.redis_streams import RedisStreamsProducer  # noqa: PLC0415

        return RedisStreamsProducer(settings.redis_url, maxlen=stream_maxlen)
    raise ValueError(f"TOLLGATE_BUS: unknown bus {settings.bus!r} (redis | kafka)")
