"""The scale bus: a Kafka topic, partitioned by customer (message key = partition key)."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tollgate.bus import BusUnavailable, partition_key


class KafkaProducerBus:
    """acks=all, so an acknowledged event survives the loss of the partition leader (with the
    topic replicated and min.insync.replicas >= 2): the producer's spool forgets it on the ack.

    Idempotence (no duplicates from producer retries) is on for Apache Kafka; brokers without it
    (the Tansu test broker) turn it off: duplicates are harmless downstream anyway.
    """

    durable_on_ack = True

    def __init__(self, bootstrap: str, topic: str, idempotence: bool = True, timeout: float = 5.0, linger_ms: int = 2):
        self.bootstrap = bootstrap
        self.topic = topic
        self.idempotence = idempotence
        self.timeout = timeout
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        pass  # connects on first publish: the enforcer must start while Kafka is down

    async def _ensure_started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                p = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=self.idempotence,
                    linger_ms=self.linger_ms, request_timeout_ms=int(self.timeout * 1000),
                )
                try:
                    await asyncio.wait_for(p.start(), self.timeout)
                except BaseException:
                    await p.stop()
                    raise
                self._producer = p
            return self._producer

    async def publish(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        try:
            await asyncio.wait_for(self._send_all(events), self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as e:
            raise BusUnavailable(f"kafka {self.bootstrap}/{self.topic}: {type(e).__name__}: {e}") from e

    async def floor(self) -> None:
        return None  # durable on the ack: nothing to wait for

    async def _send_all(self, events: list[dict[str, Any]]) -> None:
        producer = await self._ensure_started()
        # send() only appends to the producer's batches; the futures resolve on the broker's acks.
        acks = [await producer.send(self.topic, orjson.dumps(e), key=partition_key(e).encode()) for e in events]
        await asyncio.gather(*acks)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
