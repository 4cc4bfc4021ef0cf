"""check.lua's idempotency record, straight on a real Redis: an ALLOW stores only its hold id
under the request id; a retry replays it (same hold, nothing charged); a retry after an undo or
after the record's TTL is decided afresh."""
from __future__ import annotations

import asyncio

import orjson

import lua
from tests.enforcer.test_orphans import LIMITS, TOKENS, WARM, check_args, snapshot
from tests.tenants import provision


async def run(redis, keys, argv):
    return await redis.eval(lua.load("check").source, len(keys), *keys, *argv)


async def test_the_record_is_the_hold_id_and_a_retry_replays_it(redis):
    t = await provision(redis, **LIMITS)
    await run(redis, *check_args(t, "r0", "hold_warm", None, WARM["requests"], WARM["input_tokens"]))
    first = await run(redis, *check_args(t, "r1", "hold_a", None))
    assert first[:4] == [1, b"ok", b"hold_a", 0] and first[12] == 0
    assert await redis.get(t.keys.request("r1")) == b"hold_a"
    assert 0 < await redis.pttl(t.keys.request("r1")) <= 900_000
    after_first = await snapshot(redis, t)
    # The retry comes with the hold id the enforcer made for it: the record's wins, nothing moves.
    retry = await run(redis, *check_args(t, "r1", "hold_b", None))
    assert retry[:4] == [1, b"ok", b"hold_a", 0] and retry[12] == 1
    assert await snapshot(redis, t) == after_first
    # What is left now: the same as the first answer said, since nothing else happened (the
    # buckets refill 1 per 1 s / 1 ms: some may have come back meanwhile, and the reset is nearer).
    assert retry[4] in (first[4], first[4] + 1) and retry[5] >= first[5] and retry[11] <= first[11]
    assert retry[6:11] == first[6:11]  # balance, cap, tier, limits


async def test_a_retry_after_an_undo_is_decided_afresh(redis):
    t = await provision(redis, **LIMITS)
    await run(redis, *check_args(t, "r0", "hold_warm", None, WARM["requests"], WARM["input_tokens"]))
    before = await snapshot(redis, t)
    placed = await run(redis, *check_args(t, "r1", "hold_late", None))
    k = t.keys
    undo_keys = [k.held, k.holds, k.hold_expiry, k.request("r1"), k.rate_requests(t.key_id), k.rate_tokens(t.key_id), k.cfg]
    undo = lua.load("undo_hold")
    assert await redis.eval(undo.source, 7, *undo_keys, "hold_late", 1, TOKENS, placed[9], placed[10]) > 0
    assert await snapshot(redis, t) == before and not await redis.exists(k.request("r1"))
    retry = await run(redis, *check_args(t, "r1", "hold_retry", None))
    assert retry[:3] == [1, b"ok", b"hold_retry"] and retry[12] == 0
    assert (await snapshot(redis, t))["holds"] == before["holds"] | {"hold_retry"}


async def test_a_retry_after_the_record_expired_is_decided_afresh(redis):
    """The documented limit of a short TTL: a retry later than it places a second hold (the
    sweeper releases whichever hold no usage report names, at the hold's TTL)."""
    t = await provision(redis, **LIMITS)
    keys, argv = check_args(t, "r1", "hold_a", None)
    argv[5] = 50  # idempotency TTL, ms
    assert (await run(redis, keys, argv))[2] == b"hold_a"
    assert (await run(redis, keys, ["hold_b", *argv[1:]]))[2] == b"hold_a"  # within it: a replay
    await asyncio.sleep(0.1)
    late = await run(redis, keys, ["hold_c", *argv[1:]])
    assert late[:3] == [1, b"ok", b"hold_c"] and late[12] == 0
    assert (await snapshot(redis, t))["holds"] == {"hold_a", "hold_c"}


async def test_a_record_of_the_older_format_still_replays(redis):
    """During a rolling upgrade the record may be the whole reply (JSON) an older check.lua stored."""
    t = await provision(redis, **LIMITS)
    old = [1, "ok", "hold_old", 0, 59, 59_900, 99_989_700, False, "default", 60, 60_000, 1000, 0]  # cjson's encoding
    await redis.set(t.keys.request("r1"), orjson.dumps(old), px=60_000)
    retry = await run(redis, *check_args(t, "r1", "hold_new", None))
    assert retry[:3] == [1, b"ok", b"hold_old"] and retry[12] == 1
    assert (await snapshot(redis, t))["holds"] == set()
