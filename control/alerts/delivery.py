"""Delivery of alerts (a worker of every control process, control.service.WORKERS): each alert
row goes to the bus as an event and to every matching webhook endpoint as a signed POST.

Wake-up: LISTEN tg_alerts (tollgate.alerts notifies at the raiser's commit), and a poll every
TOLLGATE_ALERTS_POLL_S (0.5 s) in case a notification was missed (the listening connection lost).
Several control processes may run: every step claims its rows with FOR UPDATE SKIP LOCKED.
1. Fan-out: alerts not yet `dispatched` -> one webhook_deliveries row per matching enabled
   endpoint (the customer's and the global ones, by kind), then `dispatched`.
2. Bus: alerts not yet `published` -> events on the bus (Redis stream `tg:alerts`, or the Kafka
   topic TOLLGATE_KAFKA_ALERTS_TOPIC), then `published`. At least once: consumers dedupe by `id`.
3. Webhooks: due pending deliveries are leased (attempts + 1, next_attempt_at = now + lease, so
   a process that dies mid-POST leaves them to another) and POSTed concurrently. 2xx: delivered.
   Anything else: again after an exponential backoff with jitter, until give_up_at (created +
   24 h): then `failed`. Every attempt is logged (webhook_attempts).

Signature: header `Tollgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`;
`Tollgate-Delivery-Id` and `Tollgate-Alert-Id` let receivers drop repeats (docs/ARCHITECTURE.md
has the verification recipe).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass, field

import asyncpg
import httpx
import orjson

from control import metrics
from control.alerts.sweep import CommitSweep
from control.alerts.manage import event_of
from tollgate.alerts import NOTIFY_CHANNEL
from tollgate.config import Settings

log = logging.getLogger("tollgate.alerts")

ALERTS_STREAM = "tg:alerts"
STREAM_MAXLEN = 100_000  # approximate: the stream is a feed, not a store (the table is the store)
USER_AGENT = "tollgate-webhooks/1"


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(f"TOLLGATE_{name}", default))


@dataclass(frozen=True)
class DeliverySettings:
    poll_s: float = field(default_factory=lambda: _env_float("ALERTS_POLL_S", 0.5))
    backoff_s: float = field(default_factory=lambda: _env_float("WEBHOOK_BACKOFF_S", 10))  # first retry
    max_backoff_s: float = field(default_factory=lambda: _env_float("WEBHOOK_MAX_BACKOFF_S", 3600))
    retry_for_s: float = field(default_factory=lambda: _env_float("WEBHOOK_RETRY_FOR_S", 86400))
    timeout_s: float = field(default_factory=lambda: _env_float("WEBHOOK_TIMEOUT_S", 10))
    sweep_s: float = field(default_factory=lambda: _env_float("ALERTS_SWEEP_S", 60))  # commit at risk, idle customers
    concurrency: int = 64  # POSTs in flight per process

    @property
    def lease_s(self) -> float:
        return self.timeout_s + 30


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Tollgate-Signature header value."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff(attempts: int, s: DeliverySettings) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling, capped, +-20 % jitter
    (so endpoints that failed together do not all come back at once)."""
    base = min(s.backoff_s * 2 ** min(attempts - 1, 40), s.max_backoff_s)
    return base * random.uniform(0.8, 1.2)


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(10)


class AlertBus:
    """Alerts as bus events: a Redis stream of their own (`tg:alerts`, beside `tg:events`, which the
    rater consumes) or a Kafka topic of their own."""

    def __init__(self, settings: Settings, redis=None):
        self.settings = settings
        self._redis = redis
        self._kafka = None

    async def publish(self, events: list[dict]) -> None:
        if not events:
            return
        if self.settings.bus == "kafka":
            if self._kafka is None:
                from tollgate.bus.kafka import KafkaProducerBus  # noqa: PLC0415

                topic = os.environ.get("TOLLGATE_KAFKA_ALERTS_TOPIC", "tollgate.alerts")
                self._kafka = KafkaProducerBus(self.settings.kafka_bootstrap, topic,
                                               idempotence=self.settings.kafka_idempotence)
            await self._kafka.publish(events)
            return
        if self._redis is None:
            from tollgate.redis_client import connect  # noqa: PLC0415

            self._redis = connect(self.settings.redis_url)
        async with self._redis.pipeline(transaction=False) as p:
            for e in events:
                p.xadd(ALERTS_STREAM, {"key": e["customer_id"], "event": orjson.dumps(e)},
                       maxlen=STREAM_MAXLEN, approximate=True)
            await p.execute()

    async def close(self) -> None:
        if self._kafka is not None:
            await self._kafka.close()


class Deliverer:
    def __init__(self, db: asyncpg.Pool, bus: AlertBus, settings: DeliverySettings | None = None,
                 client: httpx.AsyncClient | None = None, redis=None):
        """`redis` (the hot-path Redis): also run the commit-at-risk sweep (control.alerts.sweep)."""
        self.db = db
        self.redis = redis
        self.sweep = CommitSweep()
        self._next_sweep = 0.0
        self.bus = bus
        self.s = settings or DeliverySettings()
        self.client = client or httpx.AsyncClient(timeout=self.s.timeout_s, follow_redirects=False,
                                                  headers={"User-Agent": USER_AGENT})
        self.wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._bus_retry_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    await self.tick()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    log.warning("alert delivery: %r (again in %.1f s)", e, self.s.poll_s)
                waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
                await asyncio.wait(waits, timeout=self.s.poll_s, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            listener.cancel()
            for t in list(self._inflight):
                t.cancel()
            await asyncio.gather(listener, *self._inflight, return_exceptions=True)
            await self.client.aclose()

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on a connection of its own; reconnect after a loss (the poll covers the gap)."""
        def notified(*_):
            self.wake.set()

        while not stop.is_set():
            try:
                conn = await self.db.acquire()
                try:
                    await conn.add_listener(NOTIFY_CHANNEL, notified)
                    self.wake.set()  # whatever was raised before we listened
                    while not stop.is_set() and not conn.is_closed():
                        await asyncio.sleep(1)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.remove_listener(NOTIFY_CHANNEL, notified)
                    await self.db.release(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("alert listener: %r", e)
                await asyncio.sleep(1)

    async def tick(self) -> None:
        await self.fan_out()
        if time.monotonic() >= self._bus_retry_at:
            try:
                await self.publish()
            except Exception as e:  # the bus is down: webhooks go on, the bus is tried again later
                log.warning("alerts to the bus: %r (again in 1 s)", e)
                self._bus_retry_at = time.monotonic() + 1
        await self.deliver_due()
        if self.redis is not None and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.s.sweep_s
            try:
                await self.sweep.run(self.db, self.redis)
            except Exception as e:  # Redis away, say: the next sweep tries again
                log.warning("commit-at-risk sweep: %r", e)

    async def fan_out(self, limit: int = 500) -> int:
        async with self.db.acquire() as conn, conn.transaction():
            alerts = await conn.fetch("SELECT id, customer_id, kind FROM alerts WHERE NOT dispatched"
                                      " ORDER BY raised_at, id LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
            if not alerts:
                return 0
            endpoints = await conn.fetch(
                "SELECT id, customer_id, kinds FROM webhook_endpoints WHERE enabled"
                " AND (customer_id IS NULL OR customer_id = ANY($1::text[]))", list({a["customer_id"] for a in alerts}))
            rows = [(new_delivery_id(), a["id"], e["id"], a["customer_id"])
                    for a in alerts for e in endpoints
                    if e["customer_id"] in (None, a["customer_id"]) and (not e["kinds"] or a["kind"] in e["kinds"])]
            if rows:
                await conn.execute(
                    "INSERT INTO webhook_deliveries (id, alert_id, endpoint_id, customer_id, give_up_at)"
                    " SELECT d, a, e, c, now() + make_interval(secs => $5)"
                    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(d, a, e, c)"
                    " ON CONFLICT (alert_id, endpoint_id) DO NOTHING",
                    [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                    self.s.retry_for_s)
            await conn.execute("UPDATE alerts SET dispatched = true WHERE id = ANY($1::text[])", [a["id"] for a in alerts])
        return len(rows)

    async def publish(self, limit: int = 500) -> int:
        async with self.db.acquire() as conn, conn.transaction():
            alerts = await conn.fetch("SELECT * FROM alerts WHERE NOT published"
                                      " ORDER BY raised_at, id LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
            if not alerts:
                return 0
            await self.bus.publish([{"kind": "alert", **event_of(a)} for a in alerts])
            await conn.execute("UPDATE alerts SET published = true WHERE id = ANY($1::text[])", [a["id"] for a in alerts])
        for a in alerts:
            metrics.ALERTS_PUBLISHED.labels(a["kind"]).inc()
        return len(alerts)

    async def deliver_due(self, limit: int = 100) -> int:
        room = self.s.concurrency - len(self._inflight)
        if room <= 0:
            return 0
        async with self.db.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                "SELECT d.id, d.alert_id, d.attempts, e.url, e.secret, e.enabled FROM webhook_deliveries d"
                " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
                " ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED", min(limit, room))
            if not due:
                return 0
            await conn.execute("UPDATE webhook_deliveries SET attempts = attempts + 1,"
                               " next_attempt_at = now() + make_interval(secs => $2) WHERE id = ANY($1::text[])",
                               [d["id"] for d in due], self.s.lease_s)
            alerts = {a["id"]: a for a in await conn.fetch(
                "SELECT * FROM alerts WHERE id = ANY($1::text[])", list({d["alert_id"] for d in due}))}
        for d in due:
            body = orjson.dumps(event_of(alerts[d["alert_id"]]))
            task = asyncio.create_task(self._attempt(d, d["attempts"] + 1, body, alerts[d["alert_id"]]["kind"]))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(due)

    async def _attempt(self, d: asyncpg.Record, attempt: int, body: bytes, kind: str) -> None:
        code: int | None = None
        error: str | None = None
        started = time.monotonic()
        if not d["enabled"]:
            error = "endpoint disabled"
        else:
            t = int(time.time())
            headers = {"Content-Type": "application/json", "Tollgate-Signature": sign(d["secret"], t, body),
                       "Tollgate-Delivery-Id": d["id"], "Tollgate-Alert-Id": d["alert_id"],
                       "Tollgate-Attempt": str(attempt)}
            try:
                r = await self.client.post(d["url"], content=body, headers=headers)
                code = r.status_code
                if not 200 <= code < 300:
                    error = f"HTTP {code}"
            except (httpx.HTTPError, OSError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"[:500]
        ms = int((time.monotonic() - started) * 1000)
        ok = error is None
        delay = 0.0 if ok else backoff(attempt, self.s)
        try:
            async with self.db.acquire() as conn, conn.transaction():
                status = await conn.fetchval(
                    "UPDATE webhook_deliveries SET last_status_code = $2, last_error = $3,"
                    " status = CASE WHEN $4 THEN 'delivered'"
                    "   WHEN $6 OR now() + make_interval(secs => $5) > give_up_at THEN 'failed' ELSE 'pending' END,"
                    " delivered_at = CASE WHEN $4 THEN now() END,"
                    " next_attempt_at = now() + make_interval(secs => $5)"
                    " WHERE id = $1 AND attempts = $7 RETURNING status",
                    d["id"], code, error, ok, delay, not d["enabled"], attempt)
                await conn.execute(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", d["id"], attempt, code, error, ms)
            if status is not None:  # None: the lease ran out and another attempt took over
                metrics.WEBHOOK_ATTEMPTS.labels(kind, "retrying" if status == "pending" else status).inc()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:  # the lease runs out: tried again
            log.warning("delivery %s: result not recorded: %r", d["id"], e)
        if not ok:
            log.info("delivery %s attempt %d: %s (next in %.1f s)", d["id"], attempt, error, delay)


async def alert_delivery(settings: Settings, stop: asyncio.Event) -> None:
    """The control process's worker (control.service.WORKERS)."""
    db = None
    while db is None and not stop.is_set():
        try:
            db = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4, timeout=10)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("alert delivery: cannot reach PostgreSQL (%r); again in 1 s", e)
            try:
                await asyncio.wait_for(stop.wait(), 1)
            except TimeoutError:
                pass
    if db is None:
        return
    from tollgate.redis_client import connect  # noqa: PLC0415

    redis = connect(settings.redis_url)
    bus = AlertBus(settings, redis)
    try:
        await Deliverer(db, bus, redis=redis).run(stop)
    finally:
        await bus.close()
        await redis.aclose()
        await db.close()
