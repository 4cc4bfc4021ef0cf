"""enforcer.clusterwire.ClusterWire against a real Redis Cluster: routing by the hash tag's slot,
MOVED after a reshard, ASK while a slot's keys move, and a master SIGKILLed: failures during the
gap, real replies after its replica is promoted, from the same wire."""
from __future__ import annotations

import asyncio
import time

from redis.crc import key_slot as redis_py_slot

import lua
from enforcer.clusterwire import ClusterWire, first_key, key_slot
from enforcer.failopen import Breaker, Guard
from enforcer.rediswire import Failure, ReplyError
from tests.tenants import provision, uid
from tollgate.keys import CustomerKeys
from tollgate.local_services import LocalCluster, free_port
from tollgate.redis_client import connect, seeds

_SUM = "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])"


def test_slot_is_redis_py_s_for_tagged_and_plain_keys():
    for key in ["tg:{cust_1}:wallet", "tg:key:abc", "{}x", "a{b}c{d}", "{", "x{}{y}", "tg:{c:1}:cfg", "é{ü}"]:
        assert key_slot(key) == redis_py_slot(key.encode()), key
    k = CustomerKeys("cust_42")
    assert len({key_slot(x) for x in (k.cfg, k.wallet, k.holds, k.spend("202601"), k.request("r1"))}) == 1


def test_first_key_of_the_commands_the_enforcer_sends():
    assert first_key(("EVALSHA", "sha", 3, "k1", "k2", "k3", "a")) == "k1"
    assert first_key(("EVALSHA", "sha", 0, "a")) is None
    assert first_key(("HGETALL", "tg:key:x")) == "tg:key:x"
    assert first_key(("PING",)) is None
    assert first_key(("SCRIPT", "LOAD", "return 1")) is None


async def test_routes_each_command_to_the_master_of_its_slot(cluster: LocalCluster):
    wire = ClusterWire(cluster.url)
    try:
        customers = [uid("cust") for _ in range(30)]
        for c in customers:
            k = CustomerKeys(c)
            assert await wire.call(("EVAL", _SUM, 2, k.wallet, k.held, 5), 2) == 10
        # every key sits on the master that owns its slot (asked directly, not through a client)
        for c in customers:
            k = CustomerKeys(c)
            assert cluster.master_of(key_slot(k.wallet)).cli("get", k.wallet) == "5"
        assert len({cluster.master_of(key_slot(CustomerKeys(c).wallet)).port for c in customers}) == 3
        assert await wire.call(("PING",), 2) == "PONG"
        assert wire.connected
    finally:
        wire.close()


async def test_moved_after_a_reshard_is_followed_and_remaps_the_slot(own_cluster: LocalCluster):
    cluster = own_cluster
    wire = ClusterWire(cluster.url, refresh_every_s=3600)  # only MOVED can tell it
    try:
        k = CustomerKeys(uid("cust"))
        slot = key_slot(k.wallet)
        assert await wire.call(("SET", k.wallet, "7"), 2) == "OK"
        src = cluster.master_of(slot)
        dst = next(cluster.node(a) for a in cluster.shape() if cluster.node(a) is not src)
        cluster.begin_migration(slot, src, dst)
        assert cluster.migrate_keys(slot, src, dst) == 1
        cluster.finish_migration(slot, dst)
        reads = wire.refreshes
        assert await wire.call(("GET", k.wallet), 2) == "7"  # sent to src, MOVED, then dst
        assert await wire.call(("INCRBY", k.wallet, 1), 2) == 8
        assert dst.cli("get", k.wallet) == "8" and src.cli("get", k.wallet).startswith("MOVED")
        await asyncio.sleep(0.3)
        assert wire.refreshes > reads  # the MOVED also asked for the whole map again
    finally:
        wire.close()


async def test_ask_while_keys_move_reads_the_moved_key_on_the_target(own_cluster: LocalCluster):
    cluster = own_cluster
    wire = ClusterWire(cluster.url, refresh_every_s=3600)
    try:
        c = uid("cust")
        k = CustomerKeys(c)
        slot = key_slot(k.wallet)
        await wire.call(("SET", k.wallet, "1"), 2)
        await wire.call(("SET", k.held, "2"), 2)
        src = cluster.master_of(slot)
        dst = next(cluster.node(a) for a in cluster.shape() if cluster.node(a) is not src)
        cluster.begin_migration(slot, src, dst)
        src.cli("migrate", "127.0.0.1", str(dst.port), "", "0", "5000", "keys", k.wallet)
        assert await wire.call(("GET", k.wallet), 2) == "1"  # moved: ASK, then ASKING + GET on dst
        assert await wire.call(("GET", k.held), 2) == "2"  # not moved yet: answered by src
        # a script whose keys are split between the nodes cannot run anywhere: Redis says TRYAGAIN
        # (the Guard fails open on it), never a wrong answer
        reply = await wire.call(("EVAL", _SUM, 2, k.wallet, k.held, 1), 2)
        assert type(reply) is ReplyError and str(reply).startswith("TRYAGAIN")
        cluster.migrate_keys(slot, src, dst)
        assert await wire.call(("EVAL", _SUM, 2, k.wallet, k.held, 1), 2) == 5  # all on dst: ASK
        cluster.finish_migration(slot, dst)
        assert await wire.call(("GET", k.held), 2) == "3"
        assert dst.cli("get", k.wallet) == "2"
    finally:
        wire.close()


async def test_a_killed_master_fails_calls_until_its_replica_is_promoted(own_cluster: LocalCluster):
    cluster = own_cluster
    wire = ClusterWire(cluster.url)
    try:
        k = CustomerKeys(uid("cust"))
        slot = key_slot(k.wallet)
        master = cluster.master_of(slot)
        replica = cluster.node(cluster.shape()[master.addr][0])
        assert await wire.call(("SET", k.wallet, "5"), 2) == "OK"
        assert await wire.call(("WAIT", 1, 2000), 3) == 1  # on the replica before the kill
        cluster.kill(master)
        failures, replies = 0, []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = await wire.call(("GET", k.wallet), 0.2)
            if isinstance(r, (Failure, ReplyError)):
                failures += 1
                await asyncio.sleep(0.02)
                continue
            replies.append(r)
            break
        assert failures > 0  # the gap was seen, as failures (not exceptions, not wrong values)
        assert replies == ["5"], f"no reply within 20 s of the kill ({failures} failures)"
        assert cluster.master_of(slot) is replica
        assert await wire.call(("INCRBY", k.wallet, 1), 1) == 6
    finally:
        wire.close()


def test_a_cluster_url_may_list_several_seeds():
    assert seeds("redis://10.0.0.1:7000,10.0.0.2:7001/0") == ("redis://10.0.0.1:7000/0", [("10.0.0.1", 7000), ("10.0.0.2", 7001)])
    assert seeds("rediss://u:pw@[::1]:7000,h:7001/0") == ("rediss://u:pw@[::1]:7000/0", [("::1", 7000), ("h", 7001)])
    assert seeds("redis://h/0") == ("redis://h/0", [("h", 6379)])


async def test_a_dead_seed_is_skipped(cluster: LocalCluster):
    """A client started while the first seed is down (e.g. a master that failed over) still
    finds the cluster through the next one: the wire and redis-py both."""
    dead = f"127.0.0.1:{free_port()}"
    url = cluster.url.replace("redis://", f"redis://{dead},")
    wire = ClusterWire(url)
    try:
        assert await wire.call(("SET", "tg:{seedtest}:x", "1"), 3) == "OK"
    finally:
        wire.close()
    client = connect(url, cluster=True)
    assert await client.get("tg:{seedtest}:x") == b"1"
    await client.aclose()


async def test_the_guard_reloads_a_flushed_script_on_the_customer_s_master(cluster: LocalCluster):
    """NOSCRIPT (a master restarted, or a replica promoted, without the script): the Guard's
    SCRIPT LOAD has no key, so it goes to every master, queued ahead of the retried EVALSHA."""
    script = lua.load("check")
    wire = ClusterWire(cluster.url, prelude=(("SCRIPT", "LOAD", script.source),))
    guard = Guard(wire, Breaker(), 2.0)
    try:
        client = connect(cluster.url, cluster=True)
        t = await provision(client)
        await client.aclose()
        assert await guard.call(("PING",)) == "PONG"  # connected: the prelude loaded the script
        for master in cluster.shape():
            assert cluster.node(master).cli("script", "flush") == "OK"
        k = t.keys
        keys = (k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.spend("202601"), k.request(uid("req")),
                k.rate_requests(t.key_id), k.rate_tokens(t.key_id))
        reply = await guard.evalsha(script.sha, script.source, keys, ("hold_1", 1, 10, 100, 300_000, 60_000, t.key_id))
        assert isinstance(reply, list) and reply[1] == "ok", reply
    finally:
        wire.close()


_BUSY_20MS = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 20000
return redis.call('INCR', KEYS[1])
"""


async def test_a_late_reply_reaches_on_late_through_the_node_s_wire(cluster: LocalCluster):
    """The undo of orphaned holds hangs on `on_late`: set on the ClusterWire, it must be called by
    whichever node's wire the late reply comes back on."""
    late = []
    wire = ClusterWire(cluster.url, max_wait=0.002)
    wire.on_late = lambda args, reply: late.append((args[3], reply))
    try:
        key = f"tg:{{{uid('cust')}}}:late"
        assert await wire.call(("PING",), 2) == "PONG"
        reply = await wire.call(("EVAL", _BUSY_20MS, 1, key), 0.002)  # Redis busy 20 ms: gives up first
        assert type(reply) is Failure, reply
        deadline = time.monotonic() + 5
        while not late:
            assert time.monotonic() < deadline, "the late reply never reached on_late"
            await asyncio.sleep(0.01)
        assert late == [(key, 1)]
    finally:
        wire.close()
