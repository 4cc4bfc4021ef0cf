"""The whole flow on a Redis Cluster, every service a real process with TOLLGATE_REDIS_CLUSTER=1:
the admin API creates a plan, a customer, a key and a top-up; the enforcer decides for real (ALLOW,
then DENY at the rate limit); /v1/usage reaches the bus; the rater settles (wallet debited in Redis,
ledger lines in PostgreSQL); then every master is emptied and `tollgate redis rebuild` brings the
projection back (the balance included), decisions real again."""
from __future__ import annotations

import asyncio
import time

import httpx

from tests.cluster.services import ADMIN_TOKEN, cluster_env, run_admin, tollgate_cli
from tests.rater.processes import RaterProcess
from tests.servers import run_enforcer
from rater import holds
from control.projection.writes import project_api_key
from tests.tenants import check_body, plan_doc, provision, uid
from tollgate.keys import CustomerKeys
from tollgate.local_services import LocalCluster
from tollgate.money import format_micros
from tollgate.redis_client import connect

RPM = 5


async def test_control_plane_enforcer_rater_and_rebuild_on_a_cluster(own_cluster: LocalCluster, pg, pg_dsn):
    cluster = own_cluster
    env = cluster_env(cluster, pg_dsn)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    doc = plan_doc(requests_per_minute=RPM)
    with run_admin(env) as admin:
        async with httpx.AsyncClient(base_url=admin, headers=auth, timeout=10) as http:
            r = await http.post("/admin/plans", json=doc)
            assert r.status_code == 201, r.text
            # hybrid: the rater reads the wallet before routing (its redis-py fallback on a cluster)
            r = await http.post("/admin/customers", json={"name": "Acme", "plan_id": doc["id"], "billing_mode": "hybrid"})
            assert r.status_code == 201, r.text
            c = r.json()["id"]
            r = await http.post(f"/admin/customers/{c}/keys")
            assert r.status_code == 201, r.text
            key = r.json()["api_key"]
            r = await http.post(f"/admin/customers/{c}/wallet/topups", json={"amount": "10.00", "id": uid("top")})
            assert r.status_code == 201 and r.json()["balance"] == "10.00", r.text
            r = await http.get(f"/admin/customers/{c}/wallet")  # an MGET of the customer's keys (one slot)
            assert r.status_code == 200 and r.json()["available"] == "10.00", r.text
    k = CustomerKeys(c)

    with run_enforcer(env) as enf:
        async with httpx.AsyncClient(base_url=enf.url, timeout=10) as http:
            answers, events = [], []
            for i in range(RPM + 2):
                rid = uid("req")
                r = await http.post("/v1/check", json={"api_key": key, "request_id": rid, "dimensions": {"model": "m"},
                                                       "estimate": {"requests": 1, "input_tokens": 100, "output_tokens": 50}})
                answers.append((r.status_code, r.json()["reason"]))
                if r.status_code == 200:
                    assert r.json()["hold_id"], r.text
                    eid = uid("evt")
                    u = await http.post("/v1/usage", json={
                        "event_id": eid, "api_key": key, "correlation_id": rid, "hold_id": r.json()["hold_id"],
                        "event_type": "llm.completion", "measurements": [
                            {"metric": "input_tokens", "value": 100 + i}, {"metric": "output_tokens", "value": 50}]})
                    assert u.status_code == 202, u.text
                    events.append(eid)
            assert answers == [(200, "ok")] * RPM + [(429, "rate_limited_requests")] * 2, enf.logs()[-3000:]

        # per event: 3 micros an input token, 15 an output token (no `requests` measured: not billed)
        spend = sum(3 * (100 + i) + 15 * 50 for i in range(RPM))
        rater = RaterProcess(env, ["--sweep-interval", "0"]).start()
        try:
            deadline = time.monotonic() + 90
            while await pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = $1 AND kind = 'usage'", c) < RPM:
                assert rater.alive() and time.monotonic() < deadline, rater.logs()[-3000:]
                await asyncio.sleep(0.1)
            redis = connect(cluster.url, cluster=True)
            while int(await redis.get(k.held) or 0) != 0:  # settled: holds released
                assert time.monotonic() < deadline, rater.logs()[-3000:]
                await asyncio.sleep(0.05)
        finally:
            assert rater.stop() == 0, rater.logs()[-3000:]
        assert int(await redis.get(k.wallet)) == 10_000_000 - spend
        assert await pg.fetchval("SELECT sum(wallet_micros) FROM processed_events WHERE customer_id = $1", c) == spend
        ledger = await pg.fetchval("SELECT sum(amount_micros) FROM ledger_lines WHERE customer_id = $1", c)
        assert ledger == spend
        assert {r["event_id"] for r in await pg.fetch(
            "SELECT DISTINCT event_id FROM ledger_lines WHERE customer_id = $1", c)} == set(events)

        # Every master emptied (a cluster-wide Redis loss), then the rebuild, as a CLI run.
        for master in cluster.shape():
            cluster.node(master).cli("flushall")
        out = tollgate_cli(env, "redis", "rebuild")
        assert "customers" in out, out
        assert int(await redis.get(k.wallet)) == 10_000_000 - spend
        async with httpx.AsyncClient(base_url=enf.url, timeout=10) as http:
            deadline = time.monotonic() + 15
            while True:  # the enforcer's cache may still hold the key; its buckets were reset
                r = await http.post("/v1/check", json={"api_key": key, "request_id": uid("req"),
                                                       "estimate": {"requests": 1}})
                if r.json()["reason"] == "ok":
                    break
                assert r.json()["reason"] == "fail_open" and time.monotonic() < deadline, r.text
                await asyncio.sleep(0.1)
            # the rebuilt wallet, less this check's own hold ($0.01, one request)
            assert r.json()["remaining"]["balance"] == format_micros(10_000_000 - spend - 10_000), r.text

    # The sweeper (release_expired.lua per customer, pipelined over the masters) releases that hold
    # once it expires (`now` an hour on), and PostgreSQL records it.
    expired = await holds.sweep_expired(redis, pg, now_ms=int(time.time() * 1000) + 3_600_000)
    # (of this customer: the rebuild projected every customer of the session's database, and what
    # earlier tests left open expires too)
    assert [(e.customer_id, e.hold_id, e.amount_micros) for e in expired if e.customer_id == c] == [
        (c, r.json()["hold_id"], 10_000)]
    assert int(await redis.get(k.held)) == 0
    assert await pg.fetchval("SELECT status FROM holds WHERE hold_id = $1", r.json()["hold_id"]) == "expired"
    await redis.aclose()


async def test_revocation_reaches_the_enforcer_s_cache_through_cluster_pub_sub(cluster: LocalCluster):
    """The key cache's listener subscribes through redis-py's RedisCluster (a classic PUBLISH
    reaches every node): a revoked key is refused at once, though its record is cached."""
    redis = connect(cluster.url, cluster=True)
    t = await provision(redis)
    with run_enforcer(cluster_env(cluster)) as enf:
        async with httpx.AsyncClient(base_url=enf.url, timeout=10) as http:
            deadline = time.monotonic() + 15
            while (r := await http.post("/v1/check", json=check_body(t))).json()["reason"] != "ok":
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.1)
            r = await http.get("/readyz")  # a PING of every master
            assert r.status_code == 200 and r.json()["status"] == "ready", r.text
            await asyncio.sleep(0.5)  # the listener has subscribed (it starts with the process)
            await project_api_key(redis, t.key_hash, t.key_id, t.customer_id, t.plan.id, "revoked")
            deadline = time.monotonic() + 3
            while (r := await http.post("/v1/check", json=check_body(t))).status_code != 401:
                assert r.json()["reason"] == "ok" and time.monotonic() < deadline, enf.logs()[-3000:]  # cached until the message
                await asyncio.sleep(0.05)
            assert r.json() == {"error": "invalid_api_key", "message": "revoked API key"}, r.text
    await redis.aclose()
