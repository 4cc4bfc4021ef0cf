"""Bus consumers behind one interface: at-least-once delivery into the rating pipeline.

A consumer hands out batches of raw messages and is told, after their effect is durable
(PostgreSQL committed, Redis settled), to acknowledge them: XACK on Redis Streams, an offset commit
on Kafka. A crash before the ack redelivers the batch; the pipeline is idempotent by event id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Message:
    value: bytes  # the event JSON exactly as published
    token: Any  # what ack needs: a stream entry id, or (topic partition, offset)


class Consumer(Protocol):
    async def start(self) -> None: ...

    async def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        """Up to max_records messages, waiting at most timeout_ms for the first one."""

    async def ack(self, messages: list[Message]) -> None:
        """Their effect is durable: never deliver them to this group again."""

    async def lag(self) -> dict[tuple[str, str], int]:
        """(topic or stream, partition) -> messages of the group not acknowledged yet (rater.metrics)."""

    async def stop(self) -> None: ...


def make_consumer(settings, group: str = "rater", name: str | None = None, **kw) -> Consumer:
    """The consumer of the configured bus (TOLLGATE_BUS = redis | kafka)."""
    if settings.bus == "kafka":
        from rater.consumers.kafka import KafkaConsumer  # noqa: PLC0415  (aiokafka only when used)

        return KafkaConsumer(settings.kafka_bootstrap, settings.kafka_topic, group=group, **kw)
    from rater.consumers.redis_streams import RedisStreamConsumer  # noqa: PLC0415

    return RedisStreamConsumer.from_url(settings.redis_url, group=group, name=name, **kw)
