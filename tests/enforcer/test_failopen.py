"""Fail open: Redis stopped, or accepting connections and never answering. The check still answers
ALLOW within the deadline (plus a generous margin for a busy machine), flagged degraded, recorded
for billing; once Redis is back, decisions are real again without a restart."""
from __future__ import annotations

import asyncio
import glob
import re
import statistics
import time

import orjson
import redis.asyncio as aioredis

from tests.tenants import check_body, project_tenant, provision, stream_events, uid
from tests.redis_proxies import FreezableProxy
from tests.servers import run_enforcer
from tollgate.local_services import start_redis

DEADLINE_MS = 3
MARGIN_S = 0.15  # loopback HTTP on a shared 2-core machine; a connect or hang timeout would exceed it
FAIL_OPEN_ENV = {"TOLLGATE_CHECK_DEADLINE_MS": str(DEADLINE_MS), "TOLLGATE_BUS": "redis",
                 "TOLLGATE_NEGATIVE_CACHE_TTL_S": "60", "TOLLGATE_BREAKER_COOLDOWN_S": "0.5"}


async def timed_check(http, url: str, body: dict):
    start = time.perf_counter()
    r = await http.post(f"{url}/v1/check", json=body)
    return r, time.perf_counter() - start


def assert_fail_open(r) -> None:
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "ALLOW" and r.json()["reason"] == "fail_open"
    assert r.headers["x-tollgate-degraded"] == "fail-open"
    assert r.headers["x-tollgate-reason"] == "fail_open"
    assert "x-ratelimit-limit" in r.headers and "ratelimit-policy" in r.headers
    assert "x-ratelimit-limit-tokens" in r.headers and "x-ratelimit-reset-tokens" in r.headers


def metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def until_real_decision(http, enf, t, when: str):
    """The first /v1/check answered from Redis (not failed open) within 10 s."""
    deadline = time.monotonic() + 10
    while (r := await http.post(f"{enf.url}/v1/check", json=check_body(t))).json()["reason"] != "ok":
        assert time.monotonic() < deadline, f"no real decisions {when}: {r.text}\n{enf.logs()}"
        await asyncio.sleep(0.05)
    return r


async def test_redis_stopped_then_back(redis_server, redis, http):
    t = await provision(redis)
    stranger = "tg_test_" + uid("stranger")
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, **FAIL_OPEN_ENV}) as enf:
        await until_real_decision(http, enf, t, "before the outage")  # 3 ms deadlines: a busy box may miss one
        deadline = time.monotonic() + 10
        while (r := await http.post(f"{enf.url}/v1/check", json=check_body(stranger))).status_code != 401:
            assert time.monotonic() < deadline, r.text  # the unknown key, once Redis has answered for it
            await asyncio.sleep(0.05)

        redis_server.stop()
        try:
            outage_ids, times = [], []
            for _ in range(30):
                body = check_body(t)
                r, elapsed = await timed_check(http, enf.url, body)
                assert_fail_open(r)
                outage_ids.append(body["request_id"])
                times.append(elapsed)
            assert max(times) < DEADLINE_MS / 1000 + MARGIN_S, times
            assert statistics.median(times) < 0.05, times
            # What the cache knows still holds: an unknown key is 401 without Redis...
            assert (await http.post(f"{enf.url}/v1/check", json=check_body(stranger))).status_code == 401
            # ...and a key it never saw is let through.
            never_seen = check_body("tg_test_" + uid("new"))
            assert_fail_open((await timed_check(http, enf.url, never_seen))[0])
            # Usage reported during the outage is spooled, durably, and still accepted.
            usage = {"event_id": uid("evt"), "api_key": t.api_key, "timestamp": "2026-11-21T10:00:00Z",
                     "measurements": [{"metric": "input_tokens", "value": 5}]}
            u = await http.post(f"{enf.url}/v1/usage", json=usage)
            assert u.status_code == 202 and u.json()["spooled"] is True
            assert (await http.get(f"{enf.url}/readyz")).status_code == 503
        finally:
            redis_server.start()
            await redis.connection_pool.disconnect()  # the test's own client: drop the dead connections

        # Redis is back, empty (no persistence): the control plane re-projects, decisions are real.
        await project_tenant(redis, t)
        deadline = time.monotonic() + 10
        while True:
            r = await http.post(f"{enf.url}/v1/check", json=check_body(t))
            if r.json()["reason"] == "ok":
                break
            assert time.monotonic() < deadline, f"still degraded after Redis came back: {r.text}\n{enf.logs()}"
            await asyncio.sleep(0.1)
        assert "x-tollgate-degraded" not in r.headers
        assert (await http.get(f"{enf.url}/readyz")).status_code == 200

        # Every fail-open check was recorded, spooled, and replayed in order; the usage report too.
        while True:
            events = await stream_events(redis)
            fail_opens = [e for e in events if e["kind"] == "fail_open"]
            if len(fail_opens) >= 31 and any(e["kind"] == "usage" for e in events):
                break
            assert time.monotonic() < deadline, f"{len(fail_opens)} fail_open events on the bus"
            await asyncio.sleep(0.1)
        assert [e["request_id"] for e in fail_opens[:30]] == outage_ids
        assert all(e["id"] == f"fo_{e['request_id']}" and e["customer_id"] == t.customer_id for e in fail_opens[:30])
        assert fail_opens[30]["request_id"] == never_seen["request_id"] and "customer_id" not in fail_opens[30]
        assert fail_opens[30]["api_key_hash"]
        spooled_usage = {(e["id"], e["customer_id"]) for e in events if e["kind"] == "usage"}  # at least once
        assert spooled_usage == {(usage["event_id"], t.customer_id)}

        text = (await http.get(f"{enf.url}/metrics")).text
        assert metric(text, "tollgate_fail_open_total") >= 31
        assert metric(text, "tollgate_spool_depth") == 0


async def test_redis_that_accepts_and_never_answers(black_hole, http):
    env = {**FAIL_OPEN_ENV, "TOLLGATE_REDIS_URL": black_hole.url}
    with run_enforcer(env) as enf:
        times = []
        for _ in range(40):
            r, elapsed = await timed_check(http, enf.url, check_body("tg_test_" + uid("k")))
            assert_fail_open(r)
            times.append(elapsed)
        assert max(times) < DEADLINE_MS / 1000 + MARGIN_S, times
        assert black_hole.conns, "the enforcer never even connected to the hung Redis"
        text = (await http.get(f"{enf.url}/metrics")).text
        assert metric(text, 'tollgate_fail_open_total{cause="deadline"}') >= 1
        # The breaker opened: the rest failed open without paying the deadline each time.
        assert metric(text, "tollgate_breaker_trips_total") >= 1
        assert metric(text, 'tollgate_fail_open_total{cause="breaker_open"}') >= 20
        start = time.perf_counter()
        assert (await http.get(f"{enf.url}/readyz")).status_code == 503
        assert time.perf_counter() - start < 0.25 + MARGIN_S


async def test_usage_with_the_bus_down_is_spooled_and_replayed_in_order(redis_server, redis, http):
    t = await provision(redis)
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, **FAIL_OPEN_ENV}) as enf:
        # Resolve the key while Redis is up, so the events carry the customer.
        await until_real_decision(http, enf, t, "before the outage")
        redis_server.stop()
        try:
            ids = [uid("evt") for _ in range(20)]
            for event_id in ids:
                r = await http.post(f"{enf.url}/v1/usage", json={
                    "event_id": event_id, "api_key": t.api_key, "measurements": [{"metric": "output_tokens", "value": 3}]})
                assert r.status_code == 202 and r.json() == {"status": "accepted", "event_id": event_id, "spooled": True}
                assert r.headers["x-tollgate-degraded"] == "spooled"
            # a CloudEvents batch: the same promise, one spool write for all of it
            batch = [{"specversion": "1.0", "id": uid("evt"), "source": "//gw", "type": "llm.completion",
                      "data": {"api_key": t.api_key, "measurements": [{"metric": "output_tokens", "value": 3}]}}
                     for _ in range(3)]
            r = await http.post(f"{enf.url}/v1/usage", content=orjson.dumps(batch),
                                headers={"content-type": "application/cloudevents-batch+json"})
            assert r.status_code == 202, r.text
            assert r.json() == {"status": "accepted", "event_ids": [ce["id"] for ce in batch], "spooled": True}
            ids += [ce["id"] for ce in batch]
            spooled = b"".join(open(p, "rb").read() for p in glob.glob(enf.spool_path + ".wal.*"))
            assert all(i.encode() in spooled for i in ids)  # on disk before the 202
        finally:
            redis_server.start()
            await redis.connection_pool.disconnect()  # the test's own client: drop the dead connections
        deadline = time.monotonic() + 15
        while len(usage := await stream_events(redis, "usage")) < len(ids):
            assert time.monotonic() < deadline, enf.logs()
            await asyncio.sleep(0.1)
        assert [e["id"] for e in usage] == ids
        assert all(e["customer_id"] == t.customer_id for e in usage)
        while (await http.get(f"{enf.url}/readyz")).json()["spool_depth"]:
            assert time.monotonic() < deadline, "the spool still has events to publish after the replay"
            await asyncio.sleep(0.1)


# Busy in Lua for `ms` milliseconds: past busy-reply-threshold, Redis answers BUSY to everyone else.
_BUSY_LUA = """local t = redis.call('TIME'); local t0 = t[1] * 1000000 + t[2]
while true do
  t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - t0 > tonumber(ARGV[1]) * 1000 then return 1 end
end"""


async def test_a_redis_answering_busy_opens_the_breaker(http):
    """Error replies that mean "cannot serve now" (BUSY, LOADING, ...) are failures: the checks
    fail open with cause "unavailable", and in a row they open the breaker. (A reply used to count
    as a success as it arrived and as a failure when its caller resumed, so in a row they reset
    each other and the breaker never opened.)"""
    server = start_redis()  # its own: busy-reply-threshold is changed
    admin, busy = aioredis.Redis.from_url(server.url), aioredis.Redis.from_url(server.url)
    try:
        await admin.config_set("busy-reply-threshold", 20)
        t = await provision(admin)
        with run_enforcer({**FAIL_OPEN_ENV, "TOLLGATE_CHECK_DEADLINE_MS": "200", "TOLLGATE_REDIS_URL": server.url}) as enf:
            await until_real_decision(http, enf, t, "before the script")
            script = asyncio.ensure_future(busy.eval(_BUSY_LUA, 0, 2000))
            await asyncio.sleep(0.2)  # past the threshold: Redis now answers BUSY
            for _ in range(30):
                assert_fail_open(await http.post(f"{enf.url}/v1/check", json=check_body(t)))
            text = (await http.get(f"{enf.url}/metrics")).text
            assert metric(text, 'tollgate_fail_open_total{cause="unavailable"}') >= 1
            assert metric(text, "tollgate_breaker_trips_total") >= 1
            assert metric(text, 'tollgate_fail_open_total{cause="breaker_open"}') >= 1
            assert metric(text, 'tollgate_fail_open_total{cause="script_error"}') == 0
            assert await script == 1
            await until_real_decision(http, enf, t, "after the script")
    finally:
        await admin.aclose()
        await busy.aclose()
        server.stop()


async def test_a_hung_redis_that_comes_back(redis_server, redis, http):
    t = await provision(redis)
    proxy = await FreezableProxy(redis_server.port).start()
    try:
        with run_enforcer({**FAIL_OPEN_ENV, "TOLLGATE_REDIS_URL": proxy.url}) as enf:
            # the first check also connects through the proxy: on a busy machine it can miss the
            # short deadline and fail open, which is not what this test is about
            before = await until_real_decision(http, enf, t, "before the freeze")
            proxy.frozen = True
            times = []
            for _ in range(20):
                r, elapsed = await timed_check(http, enf.url, check_body(t))
                assert_fail_open(r)
                times.append(elapsed)
            assert max(times) < DEADLINE_MS / 1000 + MARGIN_S, times
            proxy.frozen = False
            r = await until_real_decision(http, enf, t, "after the thaw")
            assert "x-tollgate-degraded" not in r.headers
            # both real decisions placed their holds (a check that failed open on its deadline
            # may still have reached Redis late, so the count is not asserted)
            for decided in (before, r):
                assert await redis.hexists(t.keys.holds, decided.json()["hold_id"])
    finally:
        await proxy.close()
