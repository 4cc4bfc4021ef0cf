"""`billing.charges`: every rated ledger line, published on the bus after its rating transaction
commits, so a columnar store (ClickHouse reading the topic) or an ERP takes the charges without
touching PostgreSQL. Schema: docs/ARCHITECTURE.md, "Events on the bus".

At least once, with a stable id per line (`<event_id>:<line_no>`) for consumers to dedupe:
- the lines of a rating transaction are published after its commit and before the batch is
  acknowledged on the event bus (Pipeline awaits the publish); if publishing fails, the batch is
  not acknowledged and is redelivered;
- a redelivered batch finds its events processed already: their lines are read back from the
  ledger (the hash index on event_id) and published again.
Batched: one message per customer per rating transaction (`lines`: that customer's lines), one
round trip per transaction (a Redis pipeline of XADDs; Kafka: the producer's batches, keyed by
customer so one customer's charges stay in order on one partition).

Transports (TOLLGATE_BUS, as the event bus): Redis Streams `tg:billing.charges` (entries with
fields `customer_id` and `message`, JSON; capped at about TOLLGATE_CHARGES_MAXLEN entries, oldest
trimmed first: a consumer must keep up within that), or the Kafka topic `billing.charges`.
"""
from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence

import asyncpg
import orjson

from rater.ledger import LEDGER_COLUMNS
from tollgate.config import Settings
from tollgate.money import format_micros

STREAM = "tg:billing.charges"
TOPIC = "billing.charges"
SCHEMA = "billing.charges/1"
DEFAULT_MAXLEN = 1_000_000  # Redis entries kept (each a customer's lines of one transaction)


class ChargesUnavailable(RuntimeError):
    """The charges could not be published: the batch stays unacknowledged and is redelivered."""


def messages(lines: Sequence[tuple]) -> list[tuple[str, bytes]]:
    """(customer id, message JSON) per customer: ledger tuples in LEDGER_COLUMNS order."""
    by_customer: dict[str, list[dict]] = defaultdict(list)
    for ev, n, corr, cus, plan, period, kind, charge, metric, dim, qty, price, amount in lines:
        by_customer[cus].append({
            "id": f"{ev}:{n}", "event_id": ev, "line_no": n, "correlation_id": corr, "plan_id": plan,
            "period": period, "kind": kind, "charge_id": charge, "metric": metric, "dimension_key": dim,
            "quantity": qty, "unit_price": None if price is None else str(price),
            "amount": format_micros(amount), "amount_micros": amount})
    return [(c, orjson.dumps({"schema": SCHEMA, "customer_id": c, "lines": ls})) for c, ls in by_customer.items()]


class RedisCharges:
    def __init__(self, redis, maxlen: int = DEFAULT_MAXLEN, stream: str = STREAM):
        self.redis, self.maxlen, self.stream = redis, maxlen, stream

    async def publish(self, lines: Sequence[tuple]) -> None:
        msgs = messages(lines)
        if not msgs:
            return
        try:
            async with self.redis.pipeline(transaction=False) as p:
                for c, body in msgs:
                    p.xadd(self.stream, {"customer_id": c, "message": body}, maxlen=self.maxlen, approximate=True)
                await p.execute()
        except Exception as e:  # noqa: BLE001  (any Redis trouble: not acknowledged, redelivered)
            raise ChargesUnavailable(f"{self.stream}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        pass


class KafkaCharges:
    def __init__(self, bootstrap: str, topic: str = TOPIC, idempotence: bool = True, timeout: float = 10.0):
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415  (aiokafka only when used)

        self.topic, self.timeout = topic, timeout
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotence,
                                         linger_ms=2)
        self._started = False

    async def publish(self, lines: Sequence[tuple]) -> None:
        msgs = messages(lines)
        if not msgs:
            return
        try:
            if not self._started:
                await self.producer.start()
                self._started = True
            acks = [await self.producer.send(self.topic, body, key=c.encode()) for c, body in msgs]
            await asyncio.wait_for(asyncio.gather(*acks), self.timeout)
        except Exception as e:  # noqa: BLE001
            raise ChargesUnavailable(f"kafka {self.topic}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._started:
            await self.producer.stop()


def from_settings(settings: Settings, redis) -> RedisCharges | KafkaCharges:
    """The configured transport; `redis`: the rater's client (the bus Redis)."""
    if settings.bus == "kafka":
        return KafkaCharges(settings.kafka_bootstrap, idempotence=settings.kafka_idempotence)
    return RedisCharges(redis, int(os.environ.get("TOLLGATE_CHARGES_MAXLEN", DEFAULT_MAXLEN)))


async def ledger_lines(conn: asyncpg.Connection, event_ids: Sequence[str]) -> list[tuple]:
    """The ledger lines of processed events (to publish again on a redelivery), LEDGER_COLUMNS order."""
    if not event_ids:
        return []
    rows = await conn.fetch(
        f"SELECT {', '.join('l.' + c for c in LEDGER_COLUMNS)} FROM unnest($1::text[]) AS u(id)"
        " JOIN ledger_lines l ON l.event_id = u.id ORDER BY l.event_id, l.line_no", list(event_ids))
    return [tuple(r.values()) for r in rows]
