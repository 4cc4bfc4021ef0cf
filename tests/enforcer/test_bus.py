"""The event bus producers (Redis Streams, Kafka) and the spool, against real Redis and a real broker."""
from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.tenants import check_body, provision, uid
from tests.servers import run_enforcer
from tollgate.bus import BusUnavailable, partition_key
from tollgate.bus.kafka import KafkaProducerBus
from tollgate.bus.redis_streams import RedisStreamsProducer, decode_entry
from tollgate.bus.spool import Spool, SpooledPublisher
from tollgate.keys import EVENTS_STREAM
from tollgate.local_services import free_port


def events(n: int, customer: str = "cust_a") -> list[dict]:
    return [{"kind": "usage", "id": uid("evt"), "customer_id": customer, "n": i} for i in range(n)]


class FlakyBus:
    """A real in-memory bus that can be switched off: stands in for 'the bus is unreachable'."""

    def __init__(self):
        self.up = True
        self.received: list[dict] = []

    async def start(self): ...

    async def close(self): ...

    async def publish(self, batch):
        if not self.up:
            raise BusUnavailable("down")
        self.received.extend(batch)


# --------------------------------------------------------------------------- Redis Streams


async def test_redis_streams_publish_and_read_back(redis, redis_server):
    bus = RedisStreamsProducer(redis_server.url)
    batch = events(3) + [{"kind": "fail_open", "id": "fo_1", "api_key_hash": "abc"}]
    try:
        await bus.publish(batch)
    finally:
        await bus.close()
    entries = await redis.xrange(EVENTS_STREAM)
    assert [decode_entry(f) for _, f in entries] == batch
    assert [f[b"key"].decode() for _, f in entries] == ["cust_a"] * 3 + ["abc"]


async def test_redis_streams_unreachable_raises_bus_unavailable():
    bus = RedisStreamsProducer(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(BusUnavailable):
            await bus.publish(events(1))
    finally:
        await bus.close()


# --------------------------------------------------------------------------- spool


async def test_spool_appends_durably_and_replays_in_order(tmp_path):
    spool = Spool(str(tmp_path / "spool.jsonl"))
    bus = FlakyBus()
    first, second = events(3), events(2)
    await spool.append(first)
    await asyncio.gather(spool.append(second[:1]), spool.append(second[1:]))  # one fsync for both
    assert spool.depth == 5
    lines = (tmp_path / "spool.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == first + second

    bus.up = False
    with pytest.raises(BusUnavailable):
        await spool.replay(bus)
    assert spool.depth == 5 and (tmp_path / "spool.jsonl").stat().st_size > 0
    bus.up = True
    assert await spool.replay(bus, batch_size=2) == 5
    assert bus.received == first + second
    assert spool.depth == 0 and (tmp_path / "spool.jsonl").stat().st_size == 0
    spool.close()


async def test_spool_survives_a_restart_and_drops_a_torn_line(tmp_path):
    path = str(tmp_path / "spool.jsonl")
    spool = Spool(path)
    kept = events(2)
    await spool.append(kept)
    spool.close()
    with open(path, "ab") as f:
        f.write(b'{"kind": "usage", "id": "half-writ')  # a crash in the middle of a write
    again = Spool(path)
    assert again.depth == 2
    later = events(1)
    await again.append(later)
    bus = FlakyBus()
    await again.replay(bus)
    assert bus.received == kept + later
    again.close()


async def test_each_process_gets_its_own_spool_and_orphans_are_taken_over(tmp_path):
    base = str(tmp_path / "spool.jsonl")
    a = Spool(base)
    b = Spool(base)  # the first file is locked by `a`
    assert (a.path, b.path) == (base, base + ".1")
    orphan = events(2)
    await b.append(orphan)
    b.close()  # its process is gone; its file is left behind
    c = Spool(base)  # e.g. a restarted worker: takes the free slot and what the orphan held
    assert c.path == base + ".1"
    assert c.depth == 2
    d = Spool(base)
    assert d.path == base + ".2" and d.depth == 0
    bus = FlakyBus()
    await c.replay(bus)
    assert bus.received == orphan
    for s in (a, c, d):
        s.close()
    e = Spool(base + "x")  # an unrelated name shares nothing
    assert e.depth == 0
    e.close()


async def test_spooled_publisher_keeps_order_across_an_outage(tmp_path):
    bus = FlakyBus()
    pub = SpooledPublisher(bus, Spool(str(tmp_path / "s.jsonl")))
    replay = asyncio.create_task(pub.run_replay(min_wait=0.01, max_wait=0.05))
    try:
        e = events(6)
        assert await pub.publish(e[:1]) is True
        bus.up = False
        assert await pub.publish(e[1:3]) is False
        bus.up = True
        # The spool is not empty yet: this goes behind it, not ahead of it.
        await asyncio.gather(pub.publish(e[3:4]), pub.publish(e[4:]))
        for _ in range(200):
            if pub.spool.depth == 0 and len(bus.received) == 6:
                break
            await asyncio.sleep(0.01)
        assert [x["n"] for x in bus.received] == [0, 1, 2, 3, 4, 5]
        assert os.path.getsize(pub.spool.path) == 0
    finally:
        replay.cancel()
        pub.spool.close()


# --------------------------------------------------------------------------- Kafka


@pytest.mark.kafka
async def test_kafka_publish_and_read_back(kafka_bootstrap, kafka_idempotence):
    topic = uid("tollgate_events")
    bus = KafkaProducerBus(kafka_bootstrap, topic, idempotence=kafka_idempotence)
    batch = events(3, "cust_k1") + events(2, "cust_k2")
    try:
        await bus.publish(batch)
    finally:
        await bus.close()
    got = await _consume(kafka_bootstrap, topic, len(batch))
    assert sorted((m.key.decode(), orjson.loads(m.value)["id"]) for m in got) == sorted((partition_key(e), e["id"]) for e in batch)
    per_key = {}
    for m in got:
        per_key.setdefault(m.key.decode(), []).append(orjson.loads(m.value)["n"])
    assert per_key == {"cust_k1": [0, 1, 2], "cust_k2": [0, 1]}  # one customer, one partition: in order


async def test_kafka_unreachable_raises_bus_unavailable():
    bus = KafkaProducerBus(f"127.0.0.1:{free_port()}", "nowhere", idempotence=False, timeout=1.0)
    try:
        with pytest.raises(BusUnavailable):
            await bus.publish(events(1))
    finally:
        await bus.close()


@pytest.mark.kafka
async def test_enforcer_on_kafka(kafka_bootstrap, kafka_idempotence, redis_server, redis, http):
    topic = uid("tollgate_events")
    t = await provision(redis)
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_BUS": "kafka", "TOLLGATE_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "TOLLGATE_KAFKA_TOPIC": topic, "TOLLGATE_KAFKA_IDEMPOTENCE": "1" if kafka_idempotence else "0",
           "TOLLGATE_CHECK_DEADLINE_MS": "1000"}
    with run_enforcer(env) as enf:
        check = await http.post(f"{enf.url}/v1/check", json=check_body(t, "req_k"))
        assert check.status_code == 200
        r = await http.post(f"{enf.url}/v1/usage", json={
            "event_id": "evt_k", "api_key": t.api_key, "correlation_id": "req_k", "hold_id": check.json()["hold_id"],
            "measurements": [{"metric": "input_tokens", "value": 7}]})
        assert r.status_code == 202 and r.json()["spooled"] is False, r.text
    got = {orjson.loads(m.value)["id"]: m for m in await _consume(kafka_bootstrap, topic, 2)}
    assert set(got) == {"dec_req_k", "evt_k"}
    usage = orjson.loads(got["evt_k"].value)
    assert usage["customer_id"] == t.customer_id and usage["hold_id"] == check.json()["hold_id"]
    assert got["evt_k"].key.decode() == t.customer_id


async def _consume(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    return got
