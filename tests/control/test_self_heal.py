"""Self-healing projection: a Redis that lost everything is rebuilt by the control plane's
processes (tollgate-control) themselves, one rebuild at a time, exactly, while settlement and control-plane writes go on; the enforcer fails
open (never 401) until it is back, and the rater waits for it. Real processes where it matters:
an enforcer, a `tollgate-rater` and a `tollgate-control` on a redis-server of the test's own,
SIGKILLed and started empty."""
from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from control.accounts import api_keys, wallets
from control.projection.writes import hold_off_rebuild
from control.projection.rebuild import projected, rebuild_locked
from control.projection.self_heal import SelfHeal
from tests.rater.conftest import make_customer, pipeline, plan_for, raw, redis_state, usage  # noqa: F401  (fixtures)
from tests.rater.processes import RaterProcess
from tests.servers import ControlProcess, run_enforcer
from tests.tenants import uid
from tollgate.keys import EVENTS_STREAM, PROJECTION_MARKER, api_key_hash
from tollgate.local_services import start_redis

START_WALLET = 50_000_000


async def _until(cond, timeout: float, what: str, rater: RaterProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if rater is not None and not rater.alive():
            raise AssertionError(f"the rater exited waiting for {what}:\n{rater.logs()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f":\n{rater.logs()[-3000:]}" if rater else "")
        await asyncio.sleep(0.05)


async def pg_wallet(pg, customer_id: str) -> int:
    """What the wallet is by PostgreSQL: top-ups minus the wallet part of every processed event."""
    return await pg.fetchval(
        "SELECT (SELECT coalesce(sum(amount_micros), 0) FROM wallet_transactions WHERE customer_id = $1)"
        " - (SELECT coalesce(sum(wallet_micros), 0) FROM processed_events WHERE customer_id = $1)", customer_id)


@pytest.mark.slow
async def test_redis_restarted_empty_under_running_services_heals_with_no_human_step(
        pg, pg_dsn, redis, plan_for, make_customer):
    c = await make_customer(plan_for("prepaid"), wallet_micros=START_WALLET)
    key = (await api_keys.create_api_key(pg, redis, c))["api_key"]
    stranger = "tg_test_" + uid("stranger")
    own = start_redis()  # a fresh install: empty, no marker
    own_client = Redis.from_url(own.url)
    env = {"TOLLGATE_REDIS_URL": own.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_CHECK_DEADLINE_MS": "1000"}
    rater = RaterProcess(env, ["--sweep-interval", "0"]).start()
    control = ControlProcess(env)
    try:
        rater.wait_started()
        control.start()

        async def marked() -> bool:
            return bool(await own_client.get(PROJECTION_MARKER))
        await _until(marked, 10, "the control plane to project the empty Redis")
        assert int(await own_client.get(f"tg:{{{c}}}:wallet")) == START_WALLET
        with run_enforcer(env) as enf:
            async with httpx.AsyncClient(timeout=10) as http:
                async def check(api_key: str) -> httpx.Response:
                    return await http.post(f"{enf.url}/v1/check", json={
                        "api_key": api_key, "request_id": uid("req"), "estimate": {"requests": 1, "input_tokens": 10}})

                async def report(api_key: str) -> httpx.Response:
                    return await http.post(f"{enf.url}/v1/usage", json={
                        "event_id": uid("evt"), "api_key": api_key,
                        "measurements": [{"metric": "input_tokens", "value": 10}]})

                r = await check(key)
                assert r.status_code == 200 and r.json()["reason"] == "ok", r.text
                assert (await check(stranger)).status_code == 401

                own.stop()  # SIGKILL: Redis keeps nothing
                own.start()  # same port, empty
                await own_client.connection_pool.disconnect()  # the test's own client: drop the dead connection
                deadline = time.monotonic() + 30
                while True:
                    r = await check(key)
                    assert r.status_code == 200, f"a valid key was refused after the Redis loss: {r.text}"
                    u = await report(key)
                    assert u.status_code == 202, f"usage of a valid key was refused: {u.text}"
                    if r.json()["reason"] == "ok":
                        break
                    assert r.json()["reason"] == "fail_open", r.text
                    assert time.monotonic() < deadline, f"no real decision 30 s after the restart:\n{control.logs()[-3000:]}"
                    await asyncio.sleep(0.05)
                assert r.json()["hold_id"], r.text  # a real decision: a hold, from the rebuilt wallet

                async def rebuilt_twice() -> bool:  # at its start, and after the loss
                    return control.logs().count("projection rebuilt") >= 2
                await _until(rebuilt_twice, 10, "the control plane's log of its rebuild")

                async def stranger_refused() -> bool:
                    return (await check(stranger)).status_code == 401
                await _until(stranger_refused, 10, "the unknown key to be 401 again", rater)
        assert await own_client.get(PROJECTION_MARKER)
        assert rater.stop() == 0, rater.logs()[-3000:]  # graceful: what it committed, it settled
        # The wallet is PostgreSQL's: the rebuilt figure, and whatever was rated since.
        assert int(await own_client.get(f"tg:{{{c}}}:wallet")) == await pg_wallet(pg, c)
    finally:
        rater.stop()
        control.stop()
        await own_client.aclose()
        own.stop()


@pytest.mark.slow
async def test_rebuilds_while_settlement_and_top_ups_run_leave_exact_wallets(pg, pg_dsn, redis, plan_for, make_customer):
    """Rebuilds read PostgreSQL then write Redis: without the locks, a settlement or a top-up in
    between would be overwritten by the older figures. A real rater rates a backlog in small
    batches while rebuilds and top-ups run back to back."""
    text = plan_for("hybrid")
    cs = [await make_customer(text, wallet_micros=START_WALLET) for _ in range(6)]
    events = [usage(c, 1000 + i, 500 + i) for i in range(150) for c in cs]
    async with redis.pipeline(transaction=False) as p:
        for e in events:
            p.xadd(EVENTS_STREAM, {"key": e["customer_id"], "event": orjson.dumps(e)})
        await p.execute()
    env = {"TOLLGATE_REDIS_URL": f"redis://127.0.0.1:{redis.connection_pool.connection_kwargs['port']}/0",
           "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis"}
    rater = RaterProcess(env, ["--sweep-interval", "0", "--batch", "30"]).start()

    async def processed() -> int:
        return await pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = ANY($1::text[])", cs)

    rebuilds_during = top_ups = 0
    try:
        rater.wait_started()
        await _until(lambda: _positive(processed), 60, "the rater to start rating", rater)
        async with pg.acquire() as conn:
            while await processed() < len(events):
                assert rater.alive(), rater.logs()[-3000:]
                top_up = asyncio.ensure_future(wallets.topup(pg, redis, cs[top_ups % len(cs)], "0.25"))
                counts = await rebuild_locked(redis, conn)
                await top_up
                top_ups += 1
                rebuilds_during += 1
                assert counts["customers"] >= len(cs)
        await _until(lambda: _acknowledged(redis), 30, "the last settlement", rater)
    finally:
        assert rater.stop() == 0, rater.logs()[-3000:]
    assert rebuilds_during >= 2, "the rebuilds did not overlap the rating"
    for c in cs:
        spend = await pg.fetchval("SELECT sum(spend_micros) FROM processed_events WHERE customer_id = $1", c)
        assert await redis_state(redis, c) == {"wallet": await pg_wallet(pg, c), "spend": spend, "held": 0}
    async with pg.acquire() as conn:  # and one more rebuild, at rest, changes nothing
        before = {c: await redis_state(redis, c) for c in cs}
        await rebuild_locked(redis, conn)
        assert {c: await redis_state(redis, c) for c in cs} == before


async def _positive(count) -> bool:
    return await count() > 0


async def _acknowledged(redis) -> bool:
    """Once every event is in PostgreSQL: all acknowledged, hence settled on Redis."""
    return (await redis.xpending(EVENTS_STREAM, "rater"))["pending"] == 0


async def test_of_several_raters_seeing_the_marker_missing_one_rebuilds(redis, pg, pg_dsn, plan_for, make_customer):
    c = await make_customer(plan_for("prepaid"), wallet_micros=1_234_567)
    await redis.flushall()
    healers = [SelfHeal(redis, pg_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(h.check() for h in healers))
    finally:
        for h in healers:
            await h.close()
    assert sum(r is not None for r in results) == 1, results
    assert await projected(redis)
    assert int(await redis.get(f"tg:{{{c}}}:wallet")) == 1_234_567


async def test_a_rebuild_is_held_off_by_a_control_plane_write_in_flight(redis, pg, plan_for, make_customer):
    """A revocation committing while a rebuild reads must not come back as active."""
    c = await make_customer(plan_for("prepaid"))
    key = await api_keys.create_api_key(pg, redis, c)
    async with pg.acquire() as writer, pg.acquire() as rebuilder:
        tx = writer.transaction()
        await tx.start()
        await hold_off_rebuild(writer)
        await writer.execute("UPDATE api_keys SET status = 'revoked' WHERE id = $1", key["id"])
        task = asyncio.ensure_future(rebuild_locked(redis, rebuilder))
        await asyncio.sleep(0.3)
        assert not task.done()  # waiting for the write to commit
        await tx.commit()
        await task
    rec = await redis.hgetall(f"tg:key:{api_key_hash(key['api_key'])}")
    assert rec[b"status"] == b"revoked"


async def test_events_with_an_unknown_key_hash_are_dead_letters(pg, redis, pipeline):
    """What the enforcer sends while not projected, for a key PostgreSQL does not know either."""
    ghost = api_key_hash("tg_test_" + uid("ghost"))
    ev = usage(None, 10, 10)
    del ev["customer_id"]
    ev["api_key_hash"] = ghost
    fo = {"kind": "fail_open", "id": uid("fo"), "api_key_hash": ghost, "request_id": uid("req"),
          "dimensions": {}, "estimate": {"requests": 1}, "cause": "not_projected", "timestamp": "2026-01-01T00:00:00Z"}
    res = await pipeline.process_raw(raw([ev, fo]))
    assert [d.reason for d in res.dead] == ["unknown_customer", "unknown_customer"]
    assert await pg.fetchval("SELECT count(*) FROM dead_letters WHERE event_id = ANY($1::text[])", [ev["id"], fo["id"]]) == 2


@pytest.fixture
def cluster(tmp_path):
    """Three masters of a real Redis Cluster (no replicas: this test needs slot routing only)."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from tollgate.local_services import free_port, port_open, redis_server_binary  # noqa: PLC0415

    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is needed to create a cluster")
    ports, procs = [], []
    while len(ports) < 3:  # a node's cluster bus listens on its port + 10000
        if (port := free_port()) < 55000 and port not in ports:
            ports.append(port)
    try:
        for port in ports:
            d = tmp_path / str(port)
            d.mkdir()
            procs.append(subprocess.Popen(
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--save", "", "--appendonly", "no", "--dir", str(d)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", port):
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.02)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def test_the_rater_rebuilds_a_redis_cluster(cluster, pg, pg_dsn, redis, plan_for, make_customer):
    from redis.asyncio import RedisCluster  # noqa: PLC0415

    c = await make_customer(plan_for("prepaid"), wallet_micros=7_000_000)
    key = await api_keys.create_api_key(pg, redis, c)
    client = RedisCluster.from_url(cluster)
    heal = SelfHeal(client, pg_dsn)
    try:
        async def cluster_ready() -> bool:
            try:
                return (await client.cluster_info())["cluster_state"] == "ok"
            except Exception:  # noqa: BLE001  (still forming)
                return False
        await _until(cluster_ready, 20, "the cluster to form")
        counts = await heal.check()
        assert counts is not None and counts["customers"] >= 1
        assert await projected(client)
        assert int(await client.get(f"tg:{{{c}}}:wallet")) == 7_000_000
        rec = await client.hgetall(f"tg:key:{api_key_hash(key['api_key'])}")
        assert rec[b"customer_id"] == c.encode() and rec[b"status"] == b"active"
        assert await heal.check() is None  # projected: nothing to do
    finally:
        await heal.close()
        await client.aclose()


@pytest.mark.slow
async def test_a_redis_loss_keeps_the_hierarchy_and_margin_guard_of_a_paying_key(pg, pg_dsn, redis, plan_for,
                                                                                  make_customer):
    """A key under a team and an agent, whose agent a Margin Guard trip stops: Redis SIGKILLed and
    started empty under a real enforcer and tollgate-control. The key is never refused 401 (fail
    open meanwhile), and once rebuilt the trip (PostgreSQL's) and the team's budget deny again."""
    from control.accounts import hierarchy  # noqa: PLC0415
    from tollgate import guard_trips  # noqa: PLC0415
    from tollgate.guard_trips import Trip  # noqa: PLC0415

    c = await make_customer(plan_for("prepaid"), wallet_micros=START_WALLET)
    team = (await hierarchy.create_team(pg, redis, c, name="ops", limits={"spend_cap": "0.000001"}))["id"]
    agent = (await hierarchy.create_app(pg, redis, c, team_id=team, name="bot", kind="agent"))["id"]
    key = (await api_keys.create_api_key(pg, redis, c, app_id=agent))["api_key"]
    async with pg.acquire() as conn, conn.transaction():
        await guard_trips.record(conn, [Trip(c, "loop", f"app:{agent}", "209912", "deny", {})])
    own = start_redis()
    own_client = Redis.from_url(own.url)
    env = {"TOLLGATE_REDIS_URL": own.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_CHECK_DEADLINE_MS": "1000"}
    control = ControlProcess(env)
    try:
        control.start()

        async def marked() -> bool:
            return bool(await own_client.get(PROJECTION_MARKER))
        await _until(marked, 10, "the control plane to project the empty Redis")
        with run_enforcer(env) as enf:
            async with httpx.AsyncClient(timeout=10) as http:
                async def check() -> httpx.Response:
                    return await http.post(f"{enf.url}/v1/check", json={
                        "api_key": key, "request_id": uid("req"), "estimate": {"requests": 1, "input_tokens": 10}})

                r = await check()
                assert (r.status_code, r.json()["reason"], r.json().get("level")) == (429, "margin_guard", "agent")
                own.stop()  # SIGKILL: Redis keeps nothing
                own.start()  # same port, empty
                await own_client.connection_pool.disconnect()
                deadline = time.monotonic() + 30
                while True:
                    r = await check()
                    assert r.status_code != 401, f"a paying key was refused after the Redis loss: {r.text}"
                    if r.json()["reason"] != "fail_open":
                        break
                    assert time.monotonic() < deadline, f"no real decision 30 s after the restart:\n{control.logs()[-3000:]}"
                    await asyncio.sleep(0.05)
                assert (r.status_code, r.json()["reason"], r.json().get("level")) == (429, "margin_guard", "agent"), r.text
                # the operator lifts the guard: the team's budget (restored with the limits) decides next
                async with pg.acquire() as conn:
                    await guard_trips.reset(conn, own_client, c, subject=f"app:{agent}", by="test")
                r = await check()
                assert (r.status_code, r.json()["reason"], r.json().get("level")) == (429, "spend_cap", "team"), r.text
    finally:
        control.stop()
        await own_client.aclose()
        own.stop()
