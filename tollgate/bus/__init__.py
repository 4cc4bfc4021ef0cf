"""The event bus: one small producer interface, two transports (Redis Streams, Kafka), a local spool.

Events are JSON-able dicts with a unique `id` (see docs/ARCHITECTURE.md, "Events on the bus").
`publish` returns only once the bus has acknowledged every event of the batch (Redis: the XADD
replies; Kafka: acks=all), else raises BusUnavailable and the caller spools the batch. Delivery is
at least once: a batch that timed out may still arrive, and consumers are idempotent by `id`.
"""
from __future__ import annotations

from typing import Any, Protocol

from tollgate.config import Settings


class BusUnavailable(Exception):
    """The bus did not acknowledge the batch (down, refusing, or too slow)."""


class EventBus(Protocol):
    async def start(self) -> None: ...

    async def publish(self, events: list[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


def partition_key(event: dict[str, Any]) -> str:
    """Events of one customer stay in order on one partition; unresolved keys go by their hash."""
    return event.get("customer_id") or event.get("api_key_hash") or event["id"]


def make_bus(settings: Settings, *, stream_maxlen: int | None = None) -> EventBus:
    """The configured producer; `stream_maxlen` caps a Redis stream (approximately)."""
    if settings.bus == "kafka":
        from tollgate.bus.kafka import KafkaProducerBus  # noqa: PLC0415  (aiokafka only when used)

        return KafkaProducerBus(settings.kafka_bootstrap, settings.kafka_topic, idempotence=settings.kafka_idempotence)
    if settings.bus == "redis":
        from tollgate.bus.redis_streams import RedisStreamsProducer  # noqa: PLC0415

        return RedisStreamsProducer(settings.redis_url, maxlen=stream_maxlen)
    raise ValueError(f"TOLLGATE_BUS: unknown bus {settings.bus!r} (redis | kafka)")
