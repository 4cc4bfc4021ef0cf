"""Faults on a real Redis Cluster while the real enforcer (TOLLGATE_REDIS_CLUSTER=1) takes traffic:
- the slot of a customer's hash tag is resharded to another master (IMPORTING/MIGRATING, MIGRATE of
  its keys: ASK and TRYAGAIN; then SETSLOT NODE: MOVED) while the rater settles: every answer is a
  real decision or fail_open, a tight rate limit holds (real ALLOWs <= the limit), real decisions
  come back on the new master, every accepted usage event is on the bus and rated once, and the
  wallet is exact;
- the master owning a customer's slot is SIGKILLed: checks fail open during the gap, and real
  decisions (reason ok, with a hold id) come back once its replica is promoted, with the same
  enforcer process, never restarted.
The bus stream `tg:events` lives on another master in both (a customer is picked so): losing the
bus's own master is the spool's fault drill, not this one."""
from __future__ import annotations

import asyncio
import time

import httpx

from enforcer.clusterwire import key_slot
from control.accounts import api_keys, customers, plans, wallets
from tests.cluster.services import cluster_env, stream_event_ids
from tests.rater.processes import RaterProcess
from tests.servers import run_enforcer
from tests.tenants import Tenant, check_body, plan_doc, provision, uid
from tollgate.keys import EVENTS_STREAM, CustomerKeys
from tollgate.plans import parse_plan
from tollgate.local_services import LocalCluster
from tollgate.redis_client import connect

RPM = 30


async def _tenant_off_the_bus(redis, cluster: LocalCluster, **limits) -> Tenant:
    bus_master = cluster.master_of(key_slot(EVENTS_STREAM))
    while True:
        t = await provision(redis, **limits)
        if cluster.master_of(key_slot(t.keys.cfg)) is not bus_master:
            return t


async def _paying_customer(pg, redis, master, **limits) -> Tenant:
    """A customer made by the control plane (PostgreSQL and Redis) whose slot is on `master`,
    with an API key and a $10 top-up."""
    doc = plan_doc(**limits)
    plan = await plans.apply_plan(pg, redis, doc)
    while True:
        c = (await customers.create_customer(pg, redis, name="Acme", plan_id=plan["id"]))["id"]
        if master.port == _master_port(redis, CustomerKeys(c).cfg):
            break
    key = (await api_keys.create_api_key(pg, redis, c))["api_key"]
    await wallets.topup(pg, redis, c, "10.00")
    return Tenant(key, c, "", parse_plan(doc))


def _master_port(redis, key: str) -> int:
    return redis.get_node_from_key(key).port


async def _rated_exactly(pg, redis, c: str, accepted: list[str], rater: RaterProcess) -> None:
    """Every accepted usage event rated once, and the wallet in Redis is the top-up less what
    PostgreSQL says was debited."""
    await _rated(pg, c, len(accepted), rater)
    rated = {r["event_id"] for r in await pg.fetch(
        "SELECT event_id FROM processed_events WHERE customer_id = $1 AND kind = 'usage'", c)}
    assert rated == set(accepted)
    debited = await pg.fetchval("SELECT sum(wallet_micros) FROM processed_events WHERE customer_id = $1", c)
    assert debited > 0 and int(await redis.get(CustomerKeys(c).wallet)) == 10_000_000 - debited


async def _check_and_report(http: httpx.AsyncClient, t: Tenant, answers: list, accepted: list) -> dict:
    """One check; an ALLOW (real or fail-open) is followed by its usage report, as a gateway does."""
    r = await http.post("/v1/check", json=check_body(t, requests=1, input_tokens=10, output_tokens=10))
    assert r.status_code in (200, 429), r.text
    body = r.json()
    answers.append((time.monotonic(), body["decision"], body["reason"], body["hold_id"]))
    if body["decision"] == "ALLOW":
        eid = uid("evt")
        u = await http.post("/v1/usage", json={
            "event_id": eid, "api_key": t.api_key, "hold_id": body["hold_id"], "event_type": "llm.completion",
            "measurements": [{"metric": "input_tokens", "value": 10}]})
        assert u.status_code == 202, u.text
        accepted.append(eid)
    return body


async def _all_on_the_bus(redis, accepted: list[str]) -> None:
    deadline = time.monotonic() + 15
    while missing := set(accepted) - await stream_event_ids(redis):
        assert time.monotonic() < deadline, f"{len(missing)} of {len(accepted)} accepted events not on the bus"
        await asyncio.sleep(0.1)


async def test_reshard_of_a_customer_slot_under_traffic(own_cluster: LocalCluster, pg, pg_dsn):
    cluster = own_cluster
    redis = connect(cluster.url, cluster=True)
    await redis.initialize()
    bus_master = cluster.master_of(key_slot(EVENTS_STREAM))
    src, dst = [cluster.node(a) for a in cluster.shape() if cluster.node(a) is not bus_master]
    t = await _paying_customer(pg, redis, src, requests_per_minute=RPM)
    slot = key_slot(t.keys.cfg)
    answers, accepted, phases = [], [], {}
    env = cluster_env(cluster, pg_dsn)
    rater = RaterProcess(env, ["--sweep-interval", "0"]).start().wait_started()  # settles while the slot moves
    with run_enforcer(env) as enf:
        async with httpx.AsyncClient(base_url=enf.url, timeout=10) as http:
            while (await _check_and_report(http, t, answers, accepted))["reason"] != "ok":
                await asyncio.sleep(0.05)  # the enforcer's first real decision

            async def traffic(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    await _check_and_report(http, t, answers, accepted)
                    await asyncio.sleep(0.03)

            async def reshard() -> None:
                await asyncio.sleep(0.3)
                phases["begin"] = time.monotonic()
                await asyncio.to_thread(cluster.begin_migration, slot, src, dst)
                await asyncio.sleep(0.5)  # MIGRATING, no key moved yet: the source still answers
                phases["moved"] = await asyncio.to_thread(cluster.migrate_keys, slot, src, dst, 2)
                await asyncio.sleep(0.5)  # every key on the target: ASK (and TRYAGAIN for the script)
                await asyncio.to_thread(cluster.finish_migration, slot, dst)
                phases["end"] = time.monotonic()
                await asyncio.sleep(3.0)  # MOVED, then the new map

            stop = asyncio.Event()
            running = asyncio.create_task(traffic(stop))
            await reshard()
            stop.set()
            await running
    try:
        await _rated_exactly(pg, redis, t.customer_id, accepted, rater)  # no event lost or settled twice
    finally:
        assert rater.stop() == 0, rater.logs()[-3000:]
    assert phases["moved"] >= 5  # the customer's keys did move (cfg, wallet, holds, buckets, ...)
    assert cluster.master_of(slot) is dst and dst.cli("exists", t.keys.cfg) == "1"
    kinds = {(d, r) for _, d, r, _ in answers}
    assert kinds <= {("ALLOW", "ok"), ("ALLOW", "fail_open"), ("DENY", "rate_limited_requests")}, kinds
    real_allows = [a for a in answers if a[2] == "ok"]
    # The limit held through the move (a bucket lost or reset would allow RPM more): a full
    # bucket, plus what GCRA refills (one request per 60/RPM s) while the test ran.
    window = real_allows[-1][0] - real_allows[0][0]
    assert len(real_allows) <= RPM + int(window * RPM / 60) + 1, (len(real_allows), window)
    assert all(h for _, _, _, h in real_allows)
    during = [r for at, _, r, _ in answers if phases["begin"] < at < phases["end"]]
    # While the slot moves, check.lua cannot run (some of its keys are always missing, e.g. the
    # request's idempotency record: Redis answers TRYAGAIN), so those checks fail open
    assert "fail_open" in during
    after = [a for a in answers if a[0] > phases["end"] + 1.5]
    assert after and all(r != "fail_open" for _, _, r, _ in after), after  # real decisions on the new master
    assert len(answers) > RPM  # the traffic did run into the limit
    await _all_on_the_bus(redis, accepted)
    await redis.aclose()


async def test_failover_of_a_customer_s_master_without_restart(own_cluster: LocalCluster):
    cluster = own_cluster
    redis = connect(cluster.url, cluster=True)
    t = await _tenant_off_the_bus(redis, cluster)
    slot = key_slot(t.keys.cfg)
    answers, accepted = [], []
    with run_enforcer(cluster_env(cluster)) as enf:
        pid = enf.proc.pid
        async with httpx.AsyncClient(base_url=enf.url, timeout=10) as http:
            while (await _check_and_report(http, t, answers, accepted))["reason"] != "ok":
                await asyncio.sleep(0.05)
            await asyncio.to_thread(cluster.wait_replicated)
            master = cluster.master_of(slot)
            cluster.kill(master)
            killed_at = time.monotonic()
            deadline = killed_at + 30
            while True:
                body = await _check_and_report(http, t, answers, accepted)
                if body["reason"] == "ok" and any(a[2] == "fail_open" and a[0] > killed_at for a in answers):
                    break
                assert time.monotonic() < deadline, answers[-5:]
                await asyncio.sleep(0.05)
            for _ in range(5):  # and they stay real
                assert (await _check_and_report(http, t, answers, accepted))["reason"] == "ok"
        assert enf.proc.pid == pid and enf.proc.poll() is None  # the same process throughout
    assert cluster.master_of(slot) is not master
    gap = [a for a in answers if a[0] > killed_at]
    assert {(d, r) for _, d, r, _ in gap} == {("ALLOW", "fail_open"), ("ALLOW", "ok")}
    assert all(h for _, _, r, h in gap if r == "ok") and all(h is None for _, _, r, h in gap if r == "fail_open")
    await _all_on_the_bus(redis, accepted)
    await redis.aclose()


async def test_the_rater_settles_across_a_failover_without_restart(own_cluster: LocalCluster, pg, pg_dsn):
    """The rater (redis-py RedisCluster) keeps consuming while the master of a customer's slot is
    SIGKILLed and replaced: every accepted usage event, real or fail-open, is rated once, and
    the wallet in Redis is the top-up less what PostgreSQL says was debited."""
    cluster = own_cluster
    redis = connect(cluster.url, cluster=True)
    # The customer is on the master of slot 0, which is not the bus's (slot 13529) and is the node
    # redis-py's RedisCluster first takes as its default (it asks that node where XREADGROUP's
    # key is): the consumer must not stay stuck on it once it is gone.
    target = cluster.master_of(0)
    assert target is not cluster.master_of(key_slot(EVENTS_STREAM))
    await redis.initialize()
    t = await _paying_customer(pg, redis, target)
    c = t.customer_id
    env = cluster_env(cluster, pg_dsn)
    answers, accepted = [], []
    rater = RaterProcess(env, ["--sweep-interval", "0"]).start().wait_started()
    try:
        with run_enforcer(env) as enf:
            async with httpx.AsyncClient(base_url=enf.url, timeout=10) as http:
                for _ in range(10):
                    await _check_and_report(http, t, answers, accepted)
                await _rated(pg, c, len(accepted), rater)
                await asyncio.to_thread(cluster.wait_replicated)
                cluster.kill(cluster.master_of(key_slot(CustomerKeys(c).cfg)))
                killed_at = time.monotonic()
                while not any(a[2] == "ok" and a[0] > killed_at + 0.5 for a in answers):
                    await _check_and_report(http, t, answers, accepted)
                    assert time.monotonic() < killed_at + 30, answers[-3:]
                    await asyncio.sleep(0.05)
                for _ in range(10):
                    await _check_and_report(http, t, answers, accepted)
        await _rated_exactly(pg, redis, c, accepted, rater)
    finally:
        assert rater.stop() == 0, rater.logs()[-3000:]
    assert any(a[2] == "fail_open" for a in answers)  # the gap was crossed
    await redis.aclose()


async def _rated(pg, c: str, n: int, rater: RaterProcess) -> None:
    deadline = time.monotonic() + 60
    while await pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = $1 AND kind = 'usage'", c) < n:
        assert rater.alive() and time.monotonic() < deadline, rater.logs()[-3000:]
        await asyncio.sleep(0.1)
