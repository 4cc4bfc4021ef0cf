"""POST /v1/check against a real enforcer and Redis: the decisions of the contract."""
from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from tests.tenants import check_body, plan_doc, provision, stream_events, uid
from tollgate.periods import period_of
from control.projection.writes import project_api_key

PER_REQUEST = 10_000  # micros: plan_doc prices a request at $0.01


async def test_100_concurrent_checks_against_a_wallet_for_37(enforcer, http, redis):
    t = await provision(redis, wallet=37 * PER_REQUEST)
    bodies = [check_body(t) for _ in range(100)]
    replies = await asyncio.gather(*(http.post(f"{enforcer.url}/v1/check", json=b) for b in bodies))

    allowed = [r for r in replies if r.status_code == 200]
    denied = [r for r in replies if r.status_code == 429]
    assert len(allowed) == 37 and len(denied) == 63
    assert all(r.json()["reason"] == "ok" for r in allowed)
    assert all(r.json()["reason"] == "insufficient_balance" for r in denied)
    assert all("x-tollgate-degraded" not in r.headers for r in replies)
    # No answer ever showed a balance below zero, and the books agree.
    assert min(Decimal(r.json()["remaining"]["balance"]) for r in replies) >= 0
    wallet, held = int(await redis.get(t.keys.wallet)), int(await redis.get(t.keys.held))
    assert held == 37 * PER_REQUEST and wallet - held == 0
    assert await redis.hlen(t.keys.holds) == 37
    assert {r.json()["hold_id"] for r in allowed} == {h.decode() for h in await redis.hkeys(t.keys.holds)}


async def test_allow_body_and_headers_follow_the_contract(enforcer, http, redis):
    t = await provision(redis, plan_doc(requests_per_minute=60, tokens_per_minute=10_000), wallet=5_000_000)
    r = await http.post(f"{enforcer.url}/v1/check", json=check_body(t, requests=1, input_tokens=1500, output_tokens=800))
    assert r.status_code == 200, r.text
    body = r.json()
    cost = PER_REQUEST + 1500 * 3 + 800 * 15
    assert body == {
        "decision": "ALLOW", "reason": "ok", "hold_id": body["hold_id"], "retry_after_ms": 0,
        "remaining": {"requests": 59, "tokens": 10_000 - 2300, "balance": "4.9735", "spend_cap": None},
        "tier": "default",
    }
    assert Decimal(body["remaining"]["balance"]) * 1_000_000 == 5_000_000 - cost  # the wallet less the hold
    assert body["hold_id"].startswith("hold_")
    h = r.headers
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"], h["x-tollgate-reason"]) == ("60", "59", "ok")
    assert int(h["x-ratelimit-reset"]) >= 1
    # the IETF draft: the tokens policy names its unit (without `qu` it would read as requests)
    assert h["ratelimit-policy"] == '"requests";q=60;w=60, "tokens";q=10000;qu="tokens";w=60'
    assert h["ratelimit"] == '"requests";r=59;t=1, "tokens";r=7700;t=14'  # 2,300 of 10,000/min back in 13.8 s
    # OpenAI's names and duration format: 1 request back in 1 s, 2,300 tokens in 13.8 s
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("60", "59")
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("10000", "7700")
    assert h["x-ratelimit-reset-requests"] == "1s"
    assert h["x-ratelimit-reset-tokens"] == "13.8s"
    assert h["content-type"] == "application/json"
    assert "x-tollgate-degraded" not in h and "retry-after" not in h


async def test_a_retried_request_id_places_no_second_hold(enforcer, http, redis):
    t = await provision(redis)
    body = check_body(t, requests=1, input_tokens=100)
    # Sent six times at once (a gateway retrying eagerly), then once more later.
    replies = await asyncio.gather(*(http.post(f"{enforcer.url}/v1/check", json=body) for _ in range(6)))
    replies.append(await http.post(f"{enforcer.url}/v1/check", json=body))
    same = {"decision": "ALLOW", "reason": "ok", "hold_id": replies[0].json()["hold_id"], "tier": "default"}
    assert all(r.status_code == 200 and r.json().items() >= same.items() for r in replies), [r.text for r in replies]
    assert same["hold_id"].startswith("hold_")
    assert all(r.headers["x-tollgate-hold-id"] == same["hold_id"] for r in replies)
    # One decision, six replays (Redis ran them one after another: whichever came first decided)
    assert sorted(r.headers.get("x-tollgate-replayed", "") for r in replies) == [""] + ["true"] * 6
    assert await redis.hlen(t.keys.holds) == 1
    assert int(await redis.get(t.keys.held)) == PER_REQUEST + 300
    # Every answer's balance is the wallet less the one hold: a replay charged nothing.
    assert {r.json()["remaining"]["balance"] for r in replies} == {"99.9897"}
    # The record is the hold id, kept TOLLGATE_IDEMPOTENCY_TTL_S (60 s by default)
    assert await redis.get(t.keys.request(body["request_id"])) == same["hold_id"].encode()
    assert 0 < await redis.pttl(t.keys.request(body["request_id"])) <= 60_000


async def test_a_replay_reports_what_is_left_now_and_charges_nothing(enforcer, http, redis):
    t = await provision(redis, plan_doc(requests_per_minute=60, tokens_per_minute=6_000), wallet=1_000_000)
    url = f"{enforcer.url}/v1/check"
    first_body = check_body(t, requests=1, input_tokens=1000)
    first = await http.post(url, json=first_body)
    assert first.status_code == 200 and "x-tollgate-replayed" not in first.headers
    assert first.json()["remaining"] == {"requests": 59, "tokens": 5000, "balance": "0.987", "spend_cap": None}
    other = await http.post(url, json=check_body(t, requests=1, input_tokens=2000))  # another request since
    assert other.status_code == 200 and other.json()["remaining"]["balance"] == "0.971"

    retry = await http.post(url, json=first_body)
    assert retry.status_code == 200 and retry.headers["x-tollgate-replayed"] == "true"
    assert retry.json() == {
        "decision": "ALLOW", "reason": "ok", "hold_id": first.json()["hold_id"], "retry_after_ms": 0,
        # what is left now (both requests counted once, within the 1 s / 10 ms refill of the buckets)
        "remaining": {"requests": retry.json()["remaining"]["requests"], "tokens": retry.json()["remaining"]["tokens"],
                      "balance": "0.971", "spend_cap": None},
        "tier": "default",
    }
    assert 58 <= retry.json()["remaining"]["requests"] <= 59
    assert 3000 <= retry.json()["remaining"]["tokens"] < 5000
    assert retry.headers["x-tollgate-hold-id"] == first.json()["hold_id"]
    assert await redis.hlen(t.keys.holds) == 2 and int(await redis.get(t.keys.held)) == 29_000
    # The replay charged no rate budget: the next new request is the third charged (57 left, 58 after a refill).
    nxt = await http.post(url, json=check_body(t, requests=1))
    assert nxt.json()["remaining"]["requests"] in (57, 58)
    # A wallet that has run dry since does not turn the replay into a DENY: it was allowed.
    await redis.set(t.keys.wallet, 0)
    again = await http.post(url, json=first_body)
    assert again.status_code == 200 and again.json()["hold_id"] == first.json()["hold_id"]
    assert again.json()["remaining"]["balance"] == "-0.039"
    # The decision event of a replay repeats the ALLOW's id, flagged
    deadline = time.monotonic() + 5
    while len(mine := [e for e in await stream_events(redis, "decision")
                       if e["request_id"] == first_body["request_id"]]) < 3:
        assert time.monotonic() < deadline, mine
        await asyncio.sleep(0.05)
    assert [(e["id"], e.get("replayed", False)) for e in mine] == [(f"dec_{first_body['request_id']}", False)] + [
        (f"dec_{first_body['request_id']}", True)] * 2
    assert {e["hold_id"] for e in mine} == {first.json()["hold_id"]}


async def test_requests_per_minute_burst_then_deny_then_refill(enforcer, http, redis):
    t = await provision(redis, plan_doc(requests_per_minute=60))
    url = f"{enforcer.url}/v1/check"
    burst = [await http.post(url, json=check_body(t)) for _ in range(60)]
    assert [r.status_code for r in burst] == [200] * 60
    denied = await http.post(url, json=check_body(t))
    assert denied.status_code == 429
    assert denied.json()["decision"] == "DENY" and denied.json()["reason"] == "rate_limited_requests"
    assert denied.headers["x-tollgate-reason"] == "rate_limited_requests"
    retry = int(denied.headers["retry-after"])
    assert "x-should-retry" not in denied.headers  # waiting helps: clients may retry
    assert retry >= 1 and denied.json()["retry_after_ms"] > 0
    assert denied.headers["x-ratelimit-remaining"] == "0"
    await asyncio.sleep(retry + 0.1)
    again = await http.post(url, json=check_body(t))
    assert again.status_code == 200, again.text
    # A DENY placed nothing: exactly the 61 allowed requests hold money.
    assert await redis.hlen(t.keys.holds) == 61


async def test_tokens_per_minute_uses_the_estimate(enforcer, http, redis):
    t = await provision(redis, plan_doc(tokens_per_minute=20_000))
    url = f"{enforcer.url}/v1/check"
    est = {"requests": 1, "input_tokens": 300, "output_tokens": 200}  # 500 tokens: 40 fit in the budget
    burst = [await http.post(url, json=check_body(t, **est)) for _ in range(40)]
    assert [r.status_code for r in burst] == [200] * 40
    denied = await http.post(url, json=check_body(t, **est))
    assert denied.status_code == 429 and denied.json()["reason"] == "rate_limited_tokens"
    retry = int(denied.headers["retry-after"])
    assert 1 <= retry <= 2  # 500 tokens at 20,000/min come back in 1.5 s
    await asyncio.sleep(retry + 0.1)
    assert (await http.post(url, json=check_body(t, **est))).status_code == 200


async def test_an_estimate_above_the_whole_budget_is_denied_without_retry_after(enforcer, http, redis):
    t = await provision(redis, plan_doc(tokens_per_minute=1_000))
    r = await http.post(f"{enforcer.url}/v1/check", json=check_body(t, requests=1, input_tokens=5_000))
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited_tokens"
    assert "retry-after" not in r.headers and r.headers["x-should-retry"] == "false"  # waiting cannot help


async def test_spend_cap_and_the_tier_multiplier(enforcer, http, redis):
    doc = plan_doc(requests_per_minute=5, monthly_spend_cap="1.00")
    doc["tiers"] = [{"name": "free", "threshold": 0, "multiplier": 1}, {"name": "build", "threshold": 5, "multiplier": 2}]
    doc["billing_mode"] = "postpaid"
    t = await provision(redis, doc, mode="postpaid", tier="free", wallet=0)
    url = f"{enforcer.url}/v1/check"
    # Spend cap: $0.995 spent this period, a $0.01 request would cross the $1.00 cap.
    await redis.set(t.keys.spend(period_of(time.time())), 995_000)
    capped = await http.post(url, json=check_body(t))
    assert capped.status_code == 429 and capped.json()["reason"] == "spend_cap"
    assert capped.json()["remaining"]["spend_cap"] == "0.005"
    assert "retry-after" not in capped.headers  # money, not time, lifts a cap
    assert capped.headers["x-should-retry"] == "false"

    # Promotion to `build` doubles the cap ($2.00) and the requests/minute (10).
    await redis.hset(t.keys.cfg, "tier", "build")
    allowed = [await http.post(url, json=check_body(t)) for _ in range(10)]
    assert [r.status_code for r in allowed] == [200] * 10
    assert allowed[0].json()["tier"] == "build" and allowed[0].headers["x-ratelimit-limit"] == "10"
    assert allowed[-1].json()["remaining"]["spend_cap"] == "0.905"  # 2.00 - 0.995 - 10 x 0.01 held
    over = await http.post(url, json=check_body(t))
    assert over.status_code == 429 and over.json()["reason"] == "rate_limited_requests"

    # Spend 1 micro over the cap reads as over the cap, not as "no cap".
    await redis.set(t.keys.spend(period_of(time.time())), 2_000_001 - 10 * PER_REQUEST)
    over_cap = await http.post(url, json={**check_body(t), "estimate": {"requests": 0}})
    assert over_cap.json()["remaining"]["spend_cap"] == "-0.000001"

    # Back in `free` the limit is 5 again: the 10 used requests are over it.
    await redis.hset(t.keys.cfg, "tier", "free")
    r = await http.post(url, json=check_body(t))
    assert r.status_code == 429 and r.headers["x-ratelimit-limit"] == "5"


async def test_per_model_price_override_sizes_the_hold(enforcer, http, redis):
    doc = plan_doc()
    input_charge = next(c for c in doc["charges"] if c["id"] == "in")
    input_charge["overrides"] = [{"match": {"model": "big"}, "unit_price": "0.00003"}]
    t = await provision(redis, doc)
    body = check_body(t, requests=1, input_tokens=1000)
    body["dimensions"] = {"model": "big"}
    r = await http.post(f"{enforcer.url}/v1/check", json=body)
    assert r.status_code == 200
    assert int(await redis.get(t.keys.held)) == PER_REQUEST + 30_000


async def test_unknown_and_revoked_keys_are_401(enforcer, http, redis):
    url = f"{enforcer.url}/v1/check"
    unknown = await http.post(url, json=check_body("tg_live_nobody"))
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_api_key"
    t = await provision(redis, status="revoked")
    revoked = await http.post(url, json=check_body(t))
    assert revoked.status_code == 401
    assert await redis.exists(t.keys.held) == 0


async def test_revocation_is_visible_within_a_second(enforcer, http, redis):
    t = await provision(redis)
    url = f"{enforcer.url}/v1/check"
    assert (await http.post(url, json=check_body(t))).status_code == 200  # now cached
    await project_api_key(redis, t.key_hash, t.key_id, t.customer_id, t.plan.id, "revoked")
    revoked_at = time.monotonic()
    while (await http.post(url, json=check_body(t))).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0, "revocation not seen within 1 s"
        await asyncio.sleep(0.02)


async def test_a_new_key_is_found_after_it_was_unknown(enforcer, http, redis):
    """The negative cache is dropped when the control plane announces the key."""
    t = await provision(redis)
    ghost = "tg_test_" + uid("late")
    url = f"{enforcer.url}/v1/check"
    assert (await http.post(url, json=check_body(ghost))).status_code == 401
    from tollgate.keys import api_key_hash  # noqa: PLC0415

    await project_api_key(redis, api_key_hash(ghost), uid("key"), t.customer_id, t.plan.id, "active")
    deadline = time.monotonic() + 1.0
    while (r := await http.post(url, json=check_body(ghost))).status_code == 401:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert r.status_code == 200


async def test_a_customer_not_projected_fails_open_with_a_metric(enforcer, http, redis):
    t = await provision(redis)
    await redis.delete(t.keys.cfg)
    r = await http.post(f"{enforcer.url}/v1/check", json=check_body(t))
    assert r.status_code == 200 and r.json()["reason"] == "fail_open"
    assert r.headers["x-tollgate-degraded"] == "fail-open"
    metrics = (await http.get(f"{enforcer.url}/metrics")).text
    assert 'tollgate_fail_open_total{cause="not_provisioned"}' in metrics


async def test_a_lost_script_cache_is_reloaded_not_failed_open(enforcer, http, redis):
    t = await provision(redis)
    await redis.script_flush()
    r = await http.post(f"{enforcer.url}/v1/check", json=check_body(t))
    assert r.status_code == 200 and r.json()["reason"] == "ok", r.text
    assert await redis.hlen(t.keys.holds) == 1


async def test_every_decision_is_an_event_on_the_bus(enforcer, http, redis):
    t = await provision(redis, wallet=PER_REQUEST)
    url = f"{enforcer.url}/v1/check"
    ok = await http.post(url, json=check_body(t, "req_one"))
    no = await http.post(url, json=check_body(t, "req_two"))
    assert (ok.status_code, no.status_code) == (200, 429)
    deadline = time.monotonic() + 5
    while len(mine := [e for e in await stream_events(redis, "decision") if e["customer_id"] == t.customer_id]) < 2:
        assert time.monotonic() < deadline, "decision events did not reach the stream"
        await asyncio.sleep(0.05)
    by_req = {e["request_id"]: e for e in mine}
    assert by_req["req_one"]["id"] == "dec_req_one"
    assert by_req["req_one"]["decision"] == "ALLOW" and by_req["req_one"]["hold_id"] == ok.json()["hold_id"]
    assert by_req["req_one"]["estimate_micros"] == PER_REQUEST and by_req["req_one"]["key_id"] == t.key_id
    assert by_req["req_two"]["decision"] == "DENY" and by_req["req_two"]["reason"] == "insufficient_balance"
    assert len({e["id"] for e in mine}) == 2
