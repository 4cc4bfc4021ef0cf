import re

import pytest

from control.accounts import api_keys
from control.errors import NotFound
from tollgate.keys import INVALIDATION_CHANNEL, api_key_hash, api_key_record


async def test_key_is_shown_once_and_stored_only_as_a_hash(pg, redis, customer_id, plan_id):
    k = await api_keys.create_api_key(pg, redis, customer_id)
    key = k["api_key"]
    assert re.fullmatch(r"tg_live_[A-Za-z0-9_-]{32}", key)
    assert k["prefix"] == key[:12] and k["status"] == "active"

    row = await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", k["id"])
    assert row["key_hash"] == api_key_hash(key)
    secret = key[12:]
    assert secret not in await pg.fetchval("SELECT api_keys::text FROM api_keys WHERE id = $1", k["id"])

    # The enforcer resolves the key through its hash alone.
    record = await redis.hgetall(api_key_record(api_key_hash(key)))
    assert record == {b"customer_id": customer_id.encode(), b"key_id": k["id"].encode(),
                      b"plan_id": plan_id.encode(), b"status": b"active"}
    async for name in redis.scan_iter():
        assert secret.encode() not in name
        kind = await redis.type(name)
        values = [await redis.get(name)] if kind == b"string" else list((await redis.hgetall(name)).values())
        assert all(secret.encode() not in v for v in values)

    listed = await api_keys.list_api_keys(pg, customer_id)
    assert [x["id"] for x in listed] == [k["id"]]
    assert "api_key" not in listed[0] and all(secret not in str(v) for v in listed[0].values())


async def test_two_keys_differ(pg, redis, customer_id):
    a = await api_keys.create_api_key(pg, redis, customer_id)
    b = await api_keys.create_api_key(pg, redis, customer_id)
    assert a["api_key"] != b["api_key"] and a["id"] != b["id"]


async def test_revoke_flips_status_in_redis_and_announces_it(pg, redis, customer_id):
    k = await api_keys.create_api_key(pg, redis, customer_id)
    h = api_key_hash(k["api_key"])
    pubsub = redis.pubsub()
    await pubsub.subscribe(INVALIDATION_CHANNEL)
    await pubsub.get_message(timeout=1)

    revoked = await api_keys.revoke_api_key(pg, redis, k["id"])
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert await redis.hget(api_key_record(h), "status") == b"revoked"
    assert await redis.hget(api_key_record(h), "customer_id") == customer_id.encode()
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    await pubsub.aclose()
    assert msg and msg["data"] == f"key:{h}".encode()
    row = await pg.fetchrow("SELECT status, revoked_at FROM api_keys WHERE id = $1", k["id"])
    assert row["status"] == "revoked" and row["revoked_at"] is not None

    again = await api_keys.revoke_api_key(pg, redis, k["id"])  # idempotent: keeps the first time
    assert again["revoked_at"] == revoked["revoked_at"]


async def test_unknown_ids(pg, redis):
    with pytest.raises(NotFound) as err:
        await api_keys.create_api_key(pg, redis, "cus_nobody")
    assert err.value.field == "customer_id"
    with pytest.raises(NotFound) as err:
        await api_keys.revoke_api_key(pg, redis, "key_nothing")
    assert err.value.field == "key_id"
    with pytest.raises(NotFound):
        await api_keys.list_api_keys(pg, "cus_nobody")
