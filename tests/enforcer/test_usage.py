"""POST /v1/usage: 202 once the bus has the event; the event as the rater reads it.

The `redis` fixture empties Redis before each test: to the enforcer that is a bus Redis that lost
its stream, so it publishes again what its spool holds (no rater consumes here). Events are
therefore looked up by id, and a copy may appear more than once (the rater drops duplicates).
"""
from __future__ import annotations

import glob

import orjson

from control.projection.writes import project_api_key
from tests.tenants import check_body, provision, stream_events, uid


async def published(redis, event_id: str) -> list[dict]:
    """The copies of one event on the stream (at least once: see above)."""
    return [e for e in await stream_events(redis, "usage") if e["id"] == event_id]


def report(api_key: str, **over) -> dict:
    doc = {"event_id": uid("evt"), "api_key": api_key, "correlation_id": "req_abc123", "hold_id": "hold_x",
           "event_type": "llm.completion", "timestamp": "2026-11-21T11:00:00+01:00",
           "properties": {"model": "claude-sonnet-4-6", "request_type": "standard"},
           "measurements": [{"metric": "input_tokens", "value": 1500}, {"metric": "output_tokens", "value": 800},
                            {"metric": "cache_read_tokens", "value": 500}]}
    doc.update(over)
    return doc


async def test_usage_is_on_the_bus_before_the_202(enforcer, http, redis):
    t = await provision(redis)
    check = await http.post(f"{enforcer.url}/v1/check", json=check_body(t, "req_abc123"))
    doc = report(t.api_key, hold_id=check.json()["hold_id"])
    r = await http.post(f"{enforcer.url}/v1/usage", json=doc)
    assert r.status_code == 202
    assert r.json() == {"status": "accepted", "event_id": doc["event_id"], "spooled": False}
    assert "x-tollgate-degraded" not in r.headers
    [event, *again] = await published(redis, doc["event_id"])  # no waiting: acknowledged before the 202
    assert all(e == event for e in again)
    received = event.pop("received_at")
    assert received.endswith("Z")
    assert event == {
        "kind": "usage", "id": doc["event_id"], "customer_id": t.customer_id, "key_id": t.key_id,
        "plan_id": t.plan.id, "correlation_id": "req_abc123", "hold_id": check.json()["hold_id"],
        "event_type": "llm.completion", "timestamp": "2026-11-21T10:00:00Z",  # normalised to UTC
        "properties": doc["properties"], "measurements": doc["measurements"],
    }
    assert t.api_key not in orjson.dumps(event).decode()  # the key itself never travels
    spooled = b"".join(open(p, "rb").read() for p in glob.glob(enforcer.spool_path + "*.wal.*"))
    assert doc["event_id"].encode() in spooled  # and written ahead (kept until the bus has it durably)


async def test_minimal_report_gets_defaults(enforcer, http, redis):
    t = await provision(redis)
    doc = {"event_id": uid("evt"), "api_key": t.api_key, "measurements": [{"metric": "requests", "value": 0}]}
    assert (await http.post(f"{enforcer.url}/v1/usage", json=doc)).status_code == 202
    [event, *_] = await published(redis, doc["event_id"])
    assert event["timestamp"] == event["received_at"] and event["properties"] == {}
    assert event["hold_id"] is None and event["correlation_id"] is None


async def test_usage_of_a_revoked_key_is_still_billed(enforcer, http, redis):
    """The call was allowed before the revocation; what it consumed is owed."""
    t = await provision(redis)
    await project_api_key(redis, t.key_hash, t.key_id, t.customer_id, t.plan.id, "revoked")
    doc = report(t.api_key)
    r = await http.post(f"{enforcer.url}/v1/usage", json=doc)
    assert r.status_code == 202
    assert {e["customer_id"] for e in await published(redis, doc["event_id"])} == {t.customer_id}


async def test_usage_of_an_unknown_key_is_401(enforcer, http, redis):
    doc = report("tg_live_nobody")
    r = await http.post(f"{enforcer.url}/v1/usage", json=doc)
    assert r.status_code == 401
    assert await published(redis, doc["event_id"]) == []


async def test_a_resent_report_is_accepted_again(enforcer, http, redis):
    """Gateways retry; the rater drops the duplicate by event id."""
    t = await provision(redis)
    doc = report(t.api_key)
    for _ in range(2):
        assert (await http.post(f"{enforcer.url}/v1/usage", json=doc)).status_code == 202
    assert len(await published(redis, doc["event_id"])) >= 2


async def test_session_id_travels_and_only_session_boundaries_may_measure_nothing(enforcer, http, redis):
    """An agent session's events name it (top-level `session_id`, an id); its start and end may
    carry no measurements, any other event still must (400 naming the field)."""
    t = await provision(redis)
    start = report(t.api_key, event_type="agent.session.start", session_id="ses_42", measurements=[])
    end = {k: v for k, v in report(t.api_key, event_type="agent.session.end", session_id="ses_42").items()
           if k != "measurements"}
    call = report(t.api_key, event_type="agent.tool_call", session_id="ses_42")
    for doc in (start, end, call):
        assert (await http.post(f"{enforcer.url}/v1/usage", json=doc)).status_code == 202
    events = {e["id"]: e for e in await stream_events(redis, "usage")}
    assert [events[d["event_id"]]["session_id"] for d in (start, end, call)] == ["ses_42"] * 3
    assert events[start["event_id"]]["measurements"] == events[end["event_id"]]["measurements"] == []
    for bad, field in ((report(t.api_key, event_type="agent.tool_call", measurements=[]), "measurements"),
                       ({k: v for k, v in call.items() if k != "measurements"}, "measurements"),
                       (report(t.api_key, session_id="bad id!"), "session_id"),
                       (report(t.api_key, session_id=7), "session_id")):
        r = await http.post(f"{enforcer.url}/v1/usage", json={**bad, "event_id": uid("evt")})
        assert (r.status_code, r.json()["field"]) == (400, field), r.text
