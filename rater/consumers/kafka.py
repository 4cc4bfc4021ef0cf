"""Kafka consumer group via aiokafka: offsets are committed by hand, after the batch is durable.

Auto-commit is off, so a crash anywhere before `ack` resumes from the last committed offsets and
redelivers the rest; the pipeline's idempotency by event id makes the redelivery harmless.
A rebalance while a batch is in flight can hand its partitions to another consumer, which then
sees the same events again: also harmless (and the pipeline's lock-group advisory locks serialise the two).
"""
from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from rater.consumers import Message

log = logging.getLogger(__name__)


class KafkaConsumer:
    def __init__(self, bootstrap: str, topic: str, group: str = "rater", **consumer_kw):
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new group rates the topic from its start
            **consumer_kw,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Message] = []
        for tp, records in batches.items():
            out.extend(Message(r.value, (tp, r.offset)) for r in records if r.value is not None)
        return out

    async def ack(self, messages: list[Message]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            tp, offset = m.token
            if offset + 1 > offsets.get(tp, -1):
                offsets[tp] = offset + 1  # Kafka's committed offset is the next one to read
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as e:
            # The partitions moved to another consumer mid-batch; it redelivers, we stay correct.
            log.warning("offset commit failed after a rebalance (%s); the batch will be redelivered", e)

    async def lag(self) -> dict[tuple[str, str], int]:
        """Per assigned partition: its end offset (high watermark) - the group's committed offset
        (the partition's beginning when nothing was committed yet). Remote calls: the metrics'
        lag probe only, never the consume loop."""
        tps = sorted(self._consumer.assignment())
        if not tps:
            return {}
        ends = await self._consumer.end_offsets(tps)
        committed = {tp: await self._consumer.committed(tp) for tp in tps}
        never = [tp for tp, c in committed.items() if c is None]
        if never:
            committed.update(await self._consumer.beginning_offsets(never))
        # max(0): a broker may report an end offset that trails the last record (Tansu, by one)
        return {(tp.topic, str(tp.partition)): max(0, ends[tp] - committed[tp]) for tp in tps}

    async def stop(self) -> None:
        await self._consumer.stop()
