"""`billing.charges`: every rated ledger line, published on the bus after its rating transaction
commits, so a columnar store (ClickHouse reading the topic) or an ERP takes the charges without
touching PostgreSQL. Schema: docs/ARCHITECTURE.md, "Events on the bus".

At least once, with a stable id per line (`<event_id>:<line_no>`) for consumers to dedupe:
- the lines of a rating transaction are published after its commit and before the batch is
  acknowledged on the event bus (Pipeline awaits the publish); if publishing fails, the batch is
  not acknowledged and is redelivered;
- a redelivered batch finds its events processed already: their lines are read back from the
  ledger (the hash index on event_id) and published again.
Rows are JSON arrays in COLUMNS order, one per line, newline-separated: ClickHouse's
JSONCompactEachRow format, which its Kafka engine reads as it is. Batched: Redis Streams
`tg:billing.charges` gets one entry per rated batch (fields `schema` and `rows`; capped at about
TOLLGATE_CHARGES_MAXLEN entries, oldest trimmed first: a consumer must keep up within that); the
Kafka topic `billing.charges` one message per customer per batch, keyed by customer (its charges
in order on one partition), header `schema`. Transport as TOLLGATE_BUS says.
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
DEFAULT_MAXLEN = 100_000  # Redis entries kept (each a rated batch's lines: up to a few thousand)


class ChargesUnavailable(RuntimeError):
    """The charges could not be published: the batch stays unacknowledged and is redelivered."""


COLUMNS = ("id", "event_id", "line_no", "correlation_id", "customer_id", "plan_id", "period", "kind", "charge_id",
           "metric", "dimension_key", "quantity", "unit_price", "amount", "amount_micros")


def rows(lines: Sequence[tuple]) -> dict[str, list[bytes]]:
    """Per customer, its lines as JSON arrays in COLUMNS order (ClickHouse's JSONCompactEachRow);
    `lines`: ledger tuples in LEDGER_COLUMNS order. ~1 µs per line: a dict per line and one JSON
    object cost twice that."""
    out: dict[str, list[bytes]] = defaultdict(list)
    dumps, fmt = orjson.dumps, format_micros
    for ev, n, corr, cus, plan, period, kind, charge, metric, dim, qty, price, amount in lines:
        out[cus].append(dumps((f"{ev}:{n}", ev, n, corr, cus, plan, period, kind, charge, metric, dim, qty,
                               None if price is None else str(price), fmt(amount), amount)))
    return out


class RedisCharges:
    def __init__(self, redis, maxlen: int = DEFAULT_MAXLEN, stream: str = STREAM):
        self.redis, self.maxlen, self.stream = redis, maxlen, stream

    async def publish(self, lines: Sequence[tuple]) -> None:
        """One entry per call (a rated batch): one XADD."""
        if not lines:
            return
        body = b"\n".join(r for rs in rows(lines).values() for r in rs)
        try:
            await self.redis.xadd(self.stream, {"schema": SCHEMA, "rows": body}, maxlen=self.maxlen, approximate=True)
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
        """One message per customer per call, keyed by customer (its charges in order on one partition)."""
        by_customer = rows(lines)
        if not by_customer:
            return
        try:
            if not self._started:
                await self.producer.start()
                self._started = True
            acks = [await self.producer.send(self.topic, b"\n".join(rs), key=c.encode(),
                                             headers=[("schema", SCHEMA.encode())])
                    for c, rs in by_customer.items()]
            await asyncio.wait_for(asyncio.gather(*acks), self.timeout)
        except Exception as e:  # noqa: BLE001
            raise ChargesUnavailable(f"kafka {self.topic}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._started:
            await self.producer.stop()


def enabled() -> bool:
    """TOLLGATE_CHARGES=0 turns publishing off (the rater's CPU per event is ~5 µs lower: BENCHMARKS.md)."""
    return os.environ.get("TOLLGATE_CHARGES", "1") != "0"


def from_settings(settings: Settings, redis) -> RedisCharges | KafkaCharges | None:
    """The configured transport (None: publishing turned off); `redis`: the rater's client (the bus Redis)."""
    if not enabled():
        return None
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
