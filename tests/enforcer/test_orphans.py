"""No orphaned holds: a hold exists only for a check whose answer carried its id, or it is gone
within a second; the same for the rate budget a late script consumed. Faults are caused to real
processes: Redis SIGSTOPped and resumed, a proxy that delays Redis's replies. The invariant is
checked against what the answers carried, whatever the timing did on a busy machine."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest_asyncio
import redis.asyncio as aioredis

import lua
from tests.redis_proxies import DelayingProxy
from tests.enforcer.test_failopen import FAIL_OPEN_ENV, metric, until_real_decision
from tests.tenants import check_body, provision
from tests.servers import run_enforcer
from tollgate.keys import INVALIDATION_CHANNEL
from tollgate.local_services import start_redis
from tollgate.periods import period_of

# A request is 1 s of the requests bucket and a token 1 ms of the tokens bucket: TATs stay whole
# milliseconds, so "the budget is unchanged" is an exact comparison. The warm-up takes 20 s of
# each, so both TATs stay in the future (and their keys alive) for the whole test.
LIMITS = {"requests_per_minute": 60, "tokens_per_minute": 60_000}
TOKENS = 100  # per check
REQ_MS, TOKEN_MS = 1000, 1
WARM = {"requests": 20, "input_tokens": 20_000}


async def snapshot(redis, t) -> dict:
    k = t.keys
    return {
        "holds": {h.decode() for h in await redis.hkeys(k.holds)},
        "hold_exp": {h.decode() for h in await redis.zrange(k.hold_expiry, 0, -1)},
        "held": int(await redis.get(k.held) or 0),
        "tat_r": float(await redis.get(k.rate_requests(t.key_id)) or 0),
        "tat_t": float(await redis.get(k.rate_tokens(t.key_id)) or 0),
    }


async def assert_no_orphans(redis, t, before: dict, answers: list, within: float = 1.0) -> dict:
    """Within `within` s: Redis holds exactly the holds the answers carried (beyond `before`),
    and the rate buckets moved by exactly what those answers consumed."""
    carried = {r.json()["hold_id"] for r in answers if r.json()["hold_id"]}
    costs = {h: int(v.split(b":")[0]) for h, v in (await redis.hgetall(t.keys.holds)).items() for h in [h.decode()]}
    want = {
        "holds": before["holds"] | carried,
        "hold_exp": before["hold_exp"] | carried,
        "held": before["held"] + sum(costs.get(h, 0) for h in carried),
        "tat_r": before["tat_r"] + len(carried) * REQ_MS,
        "tat_t": before["tat_t"] + len(carried) * TOKENS * TOKEN_MS,
    }
    deadline = time.monotonic() + within
    while (now := await snapshot(redis, t)) != want:
        assert time.monotonic() < deadline, f"orphans after {within} s:\nhave {now}\nwant {want}"
        await asyncio.sleep(0.02)
    return now


async def warm(http, enf, redis, t):
    """A real decision (key cached, connection up) that leaves both buckets' TATs in the future."""
    deadline = time.monotonic() + 10
    # The key cache is cleared when its invalidation listener (re)subscribes: warm it after that.
    while not (await redis.pubsub_numsub(INVALIDATION_CHANNEL))[0][1]:
        assert time.monotonic() < deadline, "the enforcer never subscribed to invalidations"
        await asyncio.sleep(0.05)
    while (r := await http.post(f"{enf.url}/v1/check", json=check_body(t, **WARM))).json()["reason"] != "ok":
        assert time.monotonic() < deadline, f"no real decision before the fault: {r.text}\n{enf.logs()}"
        await asyncio.sleep(0.05)
    return r, await snapshot(redis, t)


@pytest_asyncio.fixture
async def stoppable():
    """A Redis of the test's own (it gets SIGSTOPped), a client on it, and an enforcer on it."""
    server = start_redis()
    redis = aioredis.Redis.from_url(server.url)
    try:
        with run_enforcer({**FAIL_OPEN_ENV, "TOLLGATE_REDIS_URL": server.url}) as enf:
            yield server, redis, enf
    finally:
        await redis.aclose()
        server.stop()


def check(t) -> dict:
    return check_body(t, requests=1, input_tokens=TOKENS)


async def test_checks_sent_while_redis_is_stopped_leave_no_hold_and_no_budget(stoppable, http):
    """Redis SIGSTOPped for longer than the enforcer waits: the checks fail open; when Redis
    resumes it runs the queued scripts (from a connection the enforcer has meanwhile dropped), and
    check.lua, past its deadline in Redis's clock, writes nothing."""
    server, redis, enf = stoppable
    t = await provision(redis, **LIMITS)
    first, before = await warm(http, enf, redis, t)
    before_calls = await evalsha_calls(redis)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        answers = [await http.post(f"{enf.url}/v1/check", json=check(t)) for _ in range(3)]
        await asyncio.sleep(0.7)  # past the hang timeout: the next miss drops the connection
        answers.append(await http.post(f"{enf.url}/v1/check", json=check(t)))
        assert all(r.json()["reason"] == "fail_open" for r in answers), [r.text for r in answers]
        assert "dropping the connection" in enf.logs()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    await redis.connection_pool.disconnect()
    await assert_no_orphans(redis, t, before, answers)
    # The scripts did reach Redis and run (they were refused, not lost on the way)...
    assert await evalsha_calls(redis) >= before_calls + 4
    text = (await (http.get(f"{enf.url}/metrics"))).text
    assert metric(text, 'tollgate_fail_open_total{cause="deadline"}') >= 1
    # ...and decisions are real again, on a new connection.
    after = await until_real_decision(http, enf, t, "after SIGCONT")
    assert await redis.hexists(t.keys.holds, after.json()["hold_id"])
    assert await redis.hexists(t.keys.holds, first.json()["hold_id"])


async def test_a_short_stop_leaves_no_orphan_either(stoppable, http):
    """Redis stopped for less than the enforcer's cap: the checks fail open on silence, Redis then
    runs the scripts within their deadline and answers; those late ALLOWs are undone."""
    server, redis, enf = stoppable
    t = await provision(redis, **LIMITS)
    _, before = await warm(http, enf, redis, t)
    answers = []
    for _ in range(3):
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            answers.append(await http.post(f"{enf.url}/v1/check", json=check(t)))
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.1)
    await assert_no_orphans(redis, t, before, answers)


async def evalsha_calls(redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_late_replies_are_undone(redis_server, redis, http):
    """Replies held back 30 ms (under the 40 ms cap): each check fails open after 3 ms of silence,
    its script ran in time and placed a hold, and the late ALLOW reply is undone: the hold, the
    reserved amount, the rate budget and the idempotency record, within a second."""
    t = await provision(redis, **LIMITS)
    proxy = await DelayingProxy(redis_server.port).start()
    try:
        with run_enforcer({**FAIL_OPEN_ENV, "TOLLGATE_REDIS_URL": proxy.url}) as enf:
            _, before = await warm(http, enf, redis, t)
            proxy.delay = 0.03
            bodies = [check(t) for _ in range(4)]
            answers = []
            for body in bodies:
                answers.append(await http.post(f"{enf.url}/v1/check", json=body))
                await asyncio.sleep(0.1)  # the late reply arrives and closes the breaker again
            assert any(r.json()["reason"] == "fail_open" for r in answers), [r.text for r in answers]
            await assert_no_orphans(redis, t, before, answers)
            deadline = time.monotonic() + 2
            while True:  # the undo's own reply comes back through the proxy too
                text = (await http.get(f"{enf.url}/metrics")).text
                late, undone = metric(text, "tollgate_late_allows_total"), metric(text, "tollgate_holds_undone_total")
                if late >= 1 and undone == late:
                    break
                assert time.monotonic() < deadline, f"late allows {late}, undone {undone}"
                await asyncio.sleep(0.05)
            # An undone request's retry is decided afresh (its stored reply was dropped): a new
            # hold that exists, not a replay of the undone one.
            proxy.delay = 0.0
            body = next(b for b, r in zip(bodies, answers) if r.json()["reason"] == "fail_open")
            deadline = time.monotonic() + 10
            while (retry := await http.post(f"{enf.url}/v1/check", json=body)).json()["reason"] != "ok":
                assert time.monotonic() < deadline, retry.text  # 3 ms through a Python proxy: may miss
                await asyncio.sleep(0.05)
            assert await redis.hexists(t.keys.holds, retry.json()["hold_id"])
    finally:
        await proxy.close()


# ---------------------------------------------------------------- the two scripts, straight on Redis


def check_args(t, request_id: str, hold_id: str, deadline: int | None, requests: int = 1, tokens: int = TOKENS):
    k = t.keys
    keys = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.spend(period_of(time.time())),
            k.request(request_id), k.rate_requests(t.key_id), k.rate_tokens(t.key_id)]
    argv = [hold_id, requests, tokens, 10_000 * requests + tokens * 3, 300_000, 900_000, t.key_id]
    if deadline is not None:
        argv.append(deadline)
    return keys, argv


async def redis_ms(redis) -> int:
    sec, usec = await redis.time()
    return sec * 1000 + usec // 1000


async def test_check_lua_writes_nothing_past_its_deadline(redis):
    t = await provision(redis, **LIMITS)
    check = lua.load("check")
    keys, argv = check_args(t, "r0", "hold_warm", None, WARM["requests"], WARM["input_tokens"])
    assert (await redis.eval(check.source, len(keys), *keys, *argv))[1] == b"ok"  # no deadline: as before
    before = await snapshot(redis, t)
    keys, argv = check_args(t, "r1", "hold_late", await redis_ms(redis) - 1)
    late = await redis.eval(check.source, len(keys), *keys, *argv)
    assert late[0] == 0 and late[1] == b"expired"
    assert await snapshot(redis, t) == before and not await redis.exists(t.keys.request("r1"))
    keys, argv = check_args(t, "r2", "hold_ok", await redis_ms(redis) + 60_000)
    ok = await redis.eval(check.source, len(keys), *keys, *argv)
    assert ok[1] == b"ok" and await redis.hexists(t.keys.holds, "hold_ok")


async def test_undo_hold_lua_gives_back_exactly_what_check_lua_took(redis):
    t = await provision(redis, **LIMITS)
    check, undo = lua.load("check"), lua.load("undo_hold")
    keys, argv = check_args(t, "r0", "hold_warm", None, WARM["requests"], WARM["input_tokens"])
    await redis.eval(check.source, len(keys), *keys, *argv)  # TATs now in the future
    before = await snapshot(redis, t)
    keys, argv = check_args(t, "r1", "hold_x", None)
    placed = await redis.eval(check.source, len(keys), *keys, *argv)
    assert placed[1] == b"ok" and await snapshot(redis, t) != before
    k = t.keys
    undo_keys = [k.held, k.holds, k.hold_expiry, k.request("r1"), k.rate_requests(t.key_id), k.rate_tokens(t.key_id), k.cfg]
    undo_argv = ["hold_x", 1, TOKENS, placed[9], placed[10]]
    assert await redis.eval(undo.source, 7, *undo_keys, *undo_argv) == 10_000 + TOKENS * 3
    assert await snapshot(redis, t) == before
    assert not await redis.exists(k.request("r1"))
    assert await redis.eval(undo.source, 7, *undo_keys, *undo_argv) == 0  # idempotent
    assert await snapshot(redis, t) == before
    # Without the reply's limits (the connection was lost), the customer's current tier's are used.
    keys, argv = check_args(t, "r2", "hold_y", None)
    await redis.eval(check.source, len(keys), *keys, *argv)
    undo_keys[3] = k.request("r2")
    assert await redis.eval(undo.source, 7, *undo_keys, "hold_y", 1, TOKENS, "", "") == 10_000 + TOKENS * 3
    assert await snapshot(redis, t) == before
