"""The event bus producers (Redis Streams, Kafka) and the spool, against real Redis and a real broker."""
from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.tenants import check_body, provision, uid
from tests.servers import run_enforcer
from tollgate.bus import BusUnavailable, parse_entry_id, partition_key
from tollgate.bus.kafka import KafkaProducerBus
from tollgate.bus.redis_streams import RedisStreamsProducer, decode_entry
from tollgate.bus.spool import Spool, SpooledPublisher
from tollgate.keys import EVENTS_EPOCH, EVENTS_STREAM
from tollgate.local_services import LocalRedis, free_port, redis_server_binary, start_redis
from tollgate.redis_client import connect


def events(n: int, customer: str = "cust_a") -> list[dict]:
    return [{"kind": "usage", "id": uid("evt"), "customer_id": customer, "n": i} for i in range(n)]


class FlakyBus:
    """A real in-memory bus that can be switched off: stands in for 'the bus is unreachable'.
    Durable on the ack, as Kafka is."""

    durable_on_ack = True

    def __init__(self):
        self.up = True
        self.received: list[dict] = []

    async def start(self): ...

    async def close(self): ...

    async def floor(self):
        return None

    async def publish(self, batch):
        if not self.up:
            raise BusUnavailable("down")
        self.received.extend(batch)


def wal_lines(base: str) -> list[dict]:
    """Every event in the spool's segment files of every slot, in file order."""
    out = []
    for p in sorted(glob.glob(glob.escape(base) + "*.wal.*")):
        out += [orjson.loads(x) for x in open(p, "rb").read().splitlines()]
    return out


async def wait_for(cond, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- Redis Streams


async def test_redis_streams_publish_and_read_back(redis, redis_server):
    bus = RedisStreamsProducer(redis_server.url)
    batch = events(3) + [{"kind": "fail_open", "id": "fo_1", "api_key_hash": "abc"}]
    try:
        receipt = await bus.publish(batch)
    finally:
        await bus.close()
    entries = await redis.xrange(EVENTS_STREAM)
    assert [decode_entry(f) for _, f in entries] == batch
    assert [f[b"key"].decode() for _, f in entries] == ["cust_a"] * 3 + ["abc"]
    assert receipt.last_id == parse_entry_id(entries[-1][0])
    assert receipt.epoch == await redis.get(EVENTS_EPOCH)


async def test_redis_streams_unreachable_raises_bus_unavailable():
    bus = RedisStreamsProducer(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(BusUnavailable):
            await bus.publish(events(1))
    finally:
        await bus.close()


async def test_the_epoch_names_the_incarnation_of_the_stream():
    """Same stream, same epoch; a Redis restarted empty or a deleted stream, a new one."""
    server = start_redis()
    bus = RedisStreamsProducer(server.url)
    try:
        first = (await bus.publish(events(2))).epoch
        assert (await bus.publish(events(1))).epoch == first
        assert (await bus.floor()).epoch == first
        server.stop()
        server.start()  # empty: no persistence
        assert (await bus.floor()).epoch is None
        second = (await bus.publish(events(1))).epoch
        assert second != first
        client = connect(server.url)
        await client.delete(EVENTS_STREAM)  # the stream alone goes; its epoch key stays
        assert (await bus.publish(events(1))).epoch not in (first, second)
        await client.aclose()
    finally:
        await bus.close()
        server.stop()


async def test_the_floor_is_what_every_group_acknowledged(redis, redis_server):
    bus = RedisStreamsProducer(redis_server.url)
    try:
        await bus.publish(events(4))
        ids = [parse_entry_id(i) for i, _ in await redis.xrange(EVENTS_STREAM)]
        assert (await bus.floor()).consumed(ids[0]) is False  # no group: nobody consumed anything
        await redis.xgroup_create(EVENTS_STREAM, "rater", id="0")
        await redis.xgroup_create(EVENTS_STREAM, "audit", id="0")
        read = await redis.xreadgroup("rater", "c", {EVENTS_STREAM: ">"}, count=3)
        got = [i for i, _ in read[0][1]]
        await redis.xack(EVENTS_STREAM, "rater", got[0], got[2])  # got[1] still pending
        await redis.xreadgroup("audit", "c", {EVENTS_STREAM: ">"})
        await redis.xack(EVENTS_STREAM, "audit", *[i for i, _ in await redis.xrange(EVENTS_STREAM)])
        floor = await bus.floor()
        assert [floor.consumed(i) for i in ids] == [True, False, False, False]
        await redis.xack(EVENTS_STREAM, "rater", got[1])
        floor = await bus.floor()
        assert [floor.consumed(i) for i in ids] == [True, True, True, False]  # the 4th was never read
    finally:
        await bus.close()


# --------------------------------------------------------------------------- the write-ahead spool


async def test_spool_logs_durably_and_replays_in_order(tmp_path):
    bus = FlakyBus()
    pub = SpooledPublisher(bus, Spool(str(tmp_path / "spool.jsonl")))
    first, second = events(3), events(2)
    assert await pub.publish(first) is True
    assert wal_lines(str(tmp_path / "spool.jsonl")) == first  # written ahead, even though the bus has them
    bus.up = False
    assert await asyncio.gather(pub.publish(second[:1]), pub.publish(second[1:])) == [False, False]
    assert pub.spool.depth == 2
    assert wal_lines(str(tmp_path / "spool.jsonl")) == first + second
    with pytest.raises(BusUnavailable):
        await pub.replay()
    bus.up = True
    assert await pub.replay() == 2
    assert bus.received == first + second and pub.spool.depth == 0
    pub.spool.close()


async def test_decision_events_are_logged_only_when_the_bus_fails(tmp_path):
    bus = FlakyBus()
    base = str(tmp_path / "spool.jsonl")
    pub = SpooledPublisher(bus, Spool(base))
    decisions = [{"kind": "decision", "id": uid("dec")} for _ in range(3)]
    assert await pub.publish(decisions[:1], durable=False) is True
    assert wal_lines(base) == []
    bus.up = False
    assert await pub.publish(decisions[1:], durable=False) is False
    assert wal_lines(base) == decisions[1:]
    bus.up = True
    await pub.replay()
    assert bus.received == decisions
    pub.spool.close()


async def test_spool_survives_a_restart_and_drops_a_torn_line(tmp_path):
    base = str(tmp_path / "spool.jsonl")
    bus = FlakyBus()
    pub = SpooledPublisher(bus, Spool(base))
    kept = events(2)
    await pub.publish(kept)
    pub.spool.close()  # the process dies: what the bus had is not known to be consumed
    [seg] = glob.glob(base + ".wal.*")
    with open(seg, "ab") as f:
        f.write(b'{"kind": "usage", "id": "half-writ')  # a crash in the middle of a write
    again = SpooledPublisher(bus, Spool(base))
    assert again.spool.depth == 2  # published again: duplicates are dropped by the rater
    later = events(1)
    assert await again.publish(later) is False  # behind the backlog, to keep the order
    await again.replay()
    assert bus.received == kept + kept + later
    again.spool.close()


async def test_each_process_gets_its_own_slot_and_orphans_are_taken_over(tmp_path):
    base = str(tmp_path / "spool.jsonl")
    bus = FlakyBus()
    a = Spool(base)
    b = SpooledPublisher(bus, Spool(base))  # the first slot is locked by `a`
    assert (a.path, b.spool.path) == (base, base + ".1")
    orphan = events(2)
    await b.publish(orphan)
    b.spool.close()  # its process is gone; its segment is left behind
    c = Spool(base)  # e.g. a restarted worker: takes the free slot and what the orphan held
    assert c.path == base + ".1" and c.depth == 2
    d = Spool(base)
    assert d.path == base + ".2" and d.depth == 0
    pub = SpooledPublisher(bus, c)
    await pub.replay()
    assert bus.received == orphan + orphan
    a.close()
    e = Spool(base)  # a's slot: free, nothing in it
    assert e.path == base and e.depth == 0
    for s in (c, d, e):
        s.close()
    f = Spool(base + "x")  # an unrelated name shares nothing
    assert f.depth == 0
    f.close()


async def test_a_spool_of_the_old_format_is_taken_over(tmp_path):
    base = str(tmp_path / "spool.jsonl")
    old = events(3)
    with open(base, "wb") as f:
        f.write(b"".join(orjson.dumps(e) + b"\n" for e in old))
    bus = FlakyBus()
    pub = SpooledPublisher(bus, Spool(base))
    await pub.replay()
    assert bus.received == old and os.path.getsize(base) == 0
    pub.spool.close()


async def test_spooled_publisher_keeps_order_across_an_outage(tmp_path):
    bus = FlakyBus()
    pub = SpooledPublisher(bus, Spool(str(tmp_path / "s.jsonl")), confirm_every_s=0.01, roll_after_s=0)
    runner = asyncio.create_task(pub.run())
    try:
        e = events(6)
        assert await pub.publish(e[:1]) is True
        bus.up = False
        assert await pub.publish(e[1:3]) is False
        bus.up = True
        # The spool is not empty yet: this goes behind it, not ahead of it.
        await asyncio.gather(pub.publish(e[3:4]), pub.publish(e[4:]))

        async def drained():
            return pub.spool.depth == 0 and len(bus.received) == 6
        await wait_for(drained, "the backlog was not replayed")
        assert [x["n"] for x in bus.received] == [0, 1, 2, 3, 4, 5]

        async def trimmed():  # acknowledged by a bus that is durable on the ack: dropped
            return pub.spool.unconfirmed == 0 and not glob.glob(str(tmp_path / "s.jsonl.wal.*"))[1:]
        await wait_for(trimmed, "the spool kept events the bus has durably")
    finally:
        runner.cancel()
        pub.spool.close()


async def test_spool_keeps_events_until_consumed_and_republishes_after_a_redis_loss(tmp_path):
    """The promise of a 202 on the embedded bus: a Redis restarted empty loses nothing."""
    server = start_redis()
    bus = RedisStreamsProducer(server.url)
    base = str(tmp_path / "spool.jsonl")
    pub = SpooledPublisher(bus, Spool(base, segment_bytes=600), confirm_every_s=3600)
    client = connect(server.url)
    try:
        await client.xgroup_create(EVENTS_STREAM, "rater", id="0", mkstream=True)
        batch = events(40)
        for i in range(0, 40, 4):
            assert await pub.publish(batch[i:i + 4]) is True
        assert len(pub.spool.segments) > 2
        await pub.confirm()
        assert pub.spool.unconfirmed == 40  # on the stream, but nobody consumed anything

        # The rater consumes (and acknowledges) the first 20.
        read = await client.xreadgroup("rater", "r", {EVENTS_STREAM: ">"}, count=20)
        await client.xack(EVENTS_STREAM, "rater", *[i for i, _ in read[0][1]])
        await pub.confirm()
        kept = wal_lines(base)
        assert 0 < 40 - len(kept) <= 20 and kept == batch[40 - len(kept):]  # whole segments, consumed ones only

        # Redis dies and comes back empty: the other 20 existed only on the stream and in the spool.
        server.stop()
        server.start()
        await client.connection_pool.disconnect()
        await pub.confirm()  # sees the stream gone
        assert pub.spool.depth == len(kept)
        await pub.replay()
        on_stream = [decode_entry(f) for _, f in await client.xrange(EVENTS_STREAM)]
        assert on_stream == kept
        assert {e["id"] for e in batch[20:]} <= {e["id"] for e in on_stream}
    finally:
        pub.spool.close()
        await bus.close()
        await client.aclose()
        server.stop()


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


async def test_a_failover_that_lost_the_streams_tail_is_seen_and_repaired(tmp_path):
    """Replication is asynchronous: a replica promoted in a failover may lack the last entries its
    master acknowledged. The epoch is replicated, so it cannot tell; the producer's high-water
    mark can. Real master and replica: the replica is cut off and promoted, the old master
    acknowledges the tail and is SIGKILLed; the producer then talks to the new master, as a
    cluster client does after a failover."""
    master = start_redis()
    replica = LocalRedis(free_port())
    replica.proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(replica.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(master.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    on_master = RedisStreamsProducer(master.url)
    pub = SpooledPublisher(on_master, Spool(str(tmp_path / "spool.jsonl")), confirm_every_s=3600)
    m, r = connect(master.url), connect(replica.url)
    try:
        await m.xgroup_create(EVENTS_STREAM, "rater", id="0", mkstream=True)
        head, tail = events(5), events(5)
        assert await pub.publish(head) is True
        await wait_for(lambda: _replicated(m, 1), "the replica did not sync")
        await r.execute_command("REPLICAOF", "NO", "ONE")  # cut off and promoted (a partition)
        assert await pub.publish(tail) is True  # acknowledged by the old master alone
        master.stop()  # SIGKILL
        assert len(await r.xrange(EVENTS_STREAM)) == 5  # the tail is gone; the epoch is not
        assert await r.get(EVENTS_EPOCH) == pub.epoch

        on_replica = RedisStreamsProducer(replica.url)
        on_replica.producer_key = on_master.producer_key  # the same producer, its client moved over
        pub.bus = on_replica
        await pub.confirm()
        assert pub.spool.depth == 10  # everything not proven consumed goes out again
        await pub.replay()
        ids = [decode_entry(f)["id"] for _, f in await r.xrange(EVENTS_STREAM)]
        assert ids == [e["id"] for e in head + head + tail]
        await on_replica.close()
    finally:
        pub.spool.close()
        await on_master.close()
        for c in (m, r):
            await c.aclose()
        replica.stop()
        master.stop()


async def _replicated(master, n: int) -> bool:
    return await master.execute_command("WAIT", n, 100) >= n
