"""`billing.charges`: every rated ledger line, published on the bus after its rating transaction
commits, so a columnar store (ClickHouse reading the topic) or an ERP takes the charges without
touching PostgreSQL. Schema: docs/ARCHITECTURE.md, "Events on the bus".

At least once, with a stable id per line (`event_id` and `line_no`) for consumers to dedupe:
- the lines of a rating transaction are published after its commit and before the batch is
  acknowledged on the event bus (Pipeline awaits the publish); if publishing fails, the batch is
  not acknowledged and is redelivered;
- a redelivered batch finds its events processed already: their lines are read back from the
  ledger (the hash index on event_id) and published again.
Rows are the ledger's own COPY text rows (PostgreSQL's text format: tab-separated, NULL as \\N,
backslash escapes), columns in COLUMNS order; ClickHouse reads them as `TabSeparated` (the same
escapes), and `decode` reads them in Python. The rating transaction already builds exactly these
bytes for its COPY into ledger_lines, so publishing costs one XADD per batch and no encoding:
encoding each line again as JSON cost the rater ~12 % of its CPU (BENCHMARKS.md). Batched: Redis
Streams `tg:billing.charges` gets one entry per rated batch (fields `schema`, `format` and `rows`;
capped at about TOLLGATE_CHARGES_MAXLEN entries, oldest trimmed first: a consumer must keep up
within that); the Kafka topic `billing.charges` one message per customer per batch, keyed by
customer (its charges in order on one partition), headers `schema` and `format`. Transport as
TOLLGATE_BUS says.
"""
from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence

import asyncpg

from rater.ledger import LEDGER_COLUMNS, ledger_text
from tollgate.config import Settings

STREAM = "tg:billing.charges"
TOPIC = "billing.charges"
SCHEMA = "billing.charges/2"  # /2: cost, key path and session columns appended (issue 10)
FORMAT = "TabSeparated"  # PostgreSQL COPY text = ClickHouse TabSeparated
DEFAULT_MAXLEN = 100_000  # Redis entries kept (each a rated batch's lines: up to a few thousand)
COLUMNS = LEDGER_COLUMNS  # event_id, line_no, correlation_id, customer_id, plan_id, period, kind, charge_id,
#                           metric, dimension_key, quantity, unit_price (decimal), amount_micros (integer),
#                           cost_micros (integer), key_id, team_id, app_id, session_id

# What a rating publishes: chunks of ledger lines (LEDGER_COLUMNS tuples), each with the COPY
# payload the transaction built for them, or None (lines read back from the ledger).
Chunk = tuple[Sequence[tuple], "memoryview | bytes | None"]


class ChargesUnavailable(RuntimeError):
    """The charges could not be published: the batch stays unacknowledged and is redelivered."""


def text(chunks: Sequence[Chunk]) -> bytes:
    """The rows of every chunk, in order: each chunk's payload as it is, or built for it."""
    return b"".join(bytes(payload) if payload is not None else bytes(ledger_text(lines))
                    for lines, payload in chunks if lines)


_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def decode(rows: bytes) -> list[dict[str, str | None]]:
    """A consumer's reading of `rows`: one dict per line, COLUMNS names, values as text (None for
    NULL); quantity, line_no and amount_micros are integers in text, unit_price a decimal."""
    out = []
    for line in rows.decode().split("\n"):
        if not line:
            continue
        values = [None if f == "\\N" else _unescape(f) for f in line.split("\t")]
        out.append(dict(zip(COLUMNS, values, strict=True)))
    return out


def _unescape(f: str) -> str:
    if "\\" not in f:
        return f
    chars, i = [], 0
    while i < len(f):
        if f[i] == "\\":
            chars.append(_UNESCAPE.get(f[i + 1], f[i + 1]))
            i += 2
        else:
            chars.append(f[i])
            i += 1
    return "".join(chars)


class RedisCharges:
    def __init__(self, redis, maxlen: int = DEFAULT_MAXLEN, stream: str = STREAM):
        self.redis, self.maxlen, self.stream = redis, maxlen, stream

    async def publish(self, chunks: Sequence[Chunk]) -> None:
        """One entry per call (a rated batch): one XADD."""
        body = text(chunks)
        if not body:
            return
        try:
            await self.redis.xadd(self.stream, {"schema": SCHEMA, "format": FORMAT, "rows": body},
                                  maxlen=self.maxlen, approximate=True)
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

    async def publish(self, chunks: Sequence[Chunk]) -> None:
        """One message per customer per call, keyed by customer (its charges in order on one partition)."""
        by_customer: dict[str, list[tuple]] = defaultdict(list)
        for lines, _ in chunks:
            for ln in lines:
                by_customer[ln[3]].append(ln)
        if not by_customer:
            return
        try:
            if not self._started:
                await self.producer.start()
                self._started = True
            headers = [("schema", SCHEMA.encode()), ("format", FORMAT.encode())]
            acks = [await self.producer.send(self.topic, bytes(ledger_text(lines)), key=c.encode(), headers=headers)
                    for c, lines in by_customer.items()]
            await asyncio.wait_for(asyncio.gather(*acks), self.timeout)
        except Exception as e:  # noqa: BLE001
            raise ChargesUnavailable(f"kafka {self.topic}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._started:
            await self.producer.stop()


def enabled() -> bool:
    """TOLLGATE_CHARGES=0 turns publishing off."""
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
