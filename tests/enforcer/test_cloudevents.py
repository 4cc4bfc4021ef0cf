"""POST /v1/usage with a usage event as a structured-mode CloudEvent (and a CloudEvents batch),
over HTTP against a real enforcer and its Redis bus: the attributes map onto the usage event, the
id is the idempotency key, and every bad attribute is a 4xx naming it."""
from __future__ import annotations

import orjson
import pytest

from tests.enforcer.test_usage import published, report
from tests.tenants import provision, uid

CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def cloudevent(api_key: str, **over) -> dict:
    data = report(api_key)
    for field in ("event_id", "timestamp", "event_type"):  # given by the attributes below
        data.pop(field)
    doc = {"specversion": "1.0", "id": uid("evt"), "source": "//gateway.example.com/eu-1",
           "type": "llm.completion", "time": "2026-11-21T11:00:00+01:00",
           "datacontenttype": "application/json", "data": data}
    doc.update(over)
    return doc


async def post(http, enforcer, body, ctype: str = CE):
    return await http.post(f"{enforcer.url}/v1/usage", content=orjson.dumps(body),
                           headers={"content-type": ctype})


async def test_a_cloudevent_is_the_usage_event_its_attributes_name(enforcer, http, redis):
    t = await provision(redis)
    doc = cloudevent(t.api_key)
    r = await post(http, enforcer, doc, CE + "; charset=utf-8")
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "event_id": doc["id"], "spooled": False}
    [event, *_] = await published(redis, doc["id"])
    event.pop("received_at")
    assert event == {
        "kind": "usage", "id": doc["id"], "customer_id": t.customer_id, "key_id": t.key_id, "plan_id": t.plan.id,
        "correlation_id": "req_abc123", "hold_id": "hold_x", "event_type": "llm.completion",
        "timestamp": "2026-11-21T10:00:00Z",  # `time`, normalised to UTC
        "properties": doc["data"]["properties"], "measurements": doc["data"]["measurements"],
    }


async def test_the_id_is_the_idempotency_key_and_data_may_repeat_what_the_attributes_say(enforcer, http, redis):
    t = await provision(redis)
    doc = cloudevent(t.api_key, time=None)  # no time: when the enforcer received it
    doc["data"].update(event_id=doc["id"], event_type="agent.tool_call")  # data's own event_type wins
    for _ in range(2):  # a gateway's retry: the same id, billed once by the rater (same event id on the bus)
        assert (await post(http, enforcer, doc)).status_code == 202
    copies = await published(redis, doc["id"])
    assert {c["id"] for c in copies} == {doc["id"]} and {c["event_type"] for c in copies} == {"agent.tool_call"}
    assert copies[0]["timestamp"] == copies[0]["received_at"]
    # the same instant written with another offset is the same time
    same = cloudevent(t.api_key)
    same["data"]["timestamp"] = "2026-11-21T10:00:00Z"
    assert (await post(http, enforcer, same)).status_code == 202


async def test_a_batch_is_accepted_or_refused_whole(enforcer, http, redis):
    t = await provision(redis)
    events = [cloudevent(t.api_key) for _ in range(3)]
    r = await post(http, enforcer, events, BATCH)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "event_ids": [e["id"] for e in events], "spooled": False}
    for e in events:
        assert len(await published(redis, e["id"])) >= 1
    # one bad event refuses the batch, naming it; none of it reaches the bus
    good, bad = cloudevent(t.api_key), cloudevent(t.api_key)
    bad["data"]["measurements"][1]["value"] = -1
    r = await post(http, enforcer, [good, bad], BATCH)
    assert (r.status_code, r.json()["field"]) == (400, "[1].data.measurements[1].value"), r.text
    assert await published(redis, good["id"]) == []
    # an unknown key anywhere in the batch: 401, nothing published
    stranger = cloudevent("tg_test_nobody")
    r = await post(http, enforcer, [good, stranger], BATCH)
    assert r.status_code == 401 and await published(redis, good["id"]) == []
    for body, field in (([], None), ({"id": "x"}, None), ([1], "[0]"), ([good] * 101, None)):
        r = await post(http, enforcer, body, BATCH)
        assert r.status_code == 400 and r.json().get("field") == field, (body, r.text)


def _without(name: str):
    return lambda doc: doc.pop(name)


@pytest.mark.parametrize("change, field", [
    (_without("specversion"), "specversion"),
    (lambda d: d.update(specversion="0.3"), "specversion"),
    (_without("id"), "id"),
    (lambda d: d.update(id=""), "id"),
    (lambda d: d.update(id="has space"), "id"),
    (lambda d: d.update(id=7), "id"),
    (_without("source"), "source"),
    (_without("type"), "type"),
    (lambda d: d.update(type=["llm"]), "type"),
    (lambda d: d.update(time="yesterday"), "time"),
    (lambda d: d.update(time="2026-13-01T00:00:00Z"), "time"),
    (lambda d: d.update(datacontenttype="text/plain"), "datacontenttype"),
    (lambda d: d.update(data_base64="e30="), "data_base64"),
    (_without("data"), "data"),
    (lambda d: d.update(data=[1]), "data"),
    (lambda d: d["data"].pop("api_key"), "data.api_key"),
    (lambda d: d["data"].pop("measurements"), "data.measurements"),
    (lambda d: d["data"].update(measurements=[{"metric": "x", "value": 1.5}]), "data.measurements[0].value"),
    (lambda d: d["data"].update(event_id="evt_other"), "data.event_id"),
    (lambda d: d["data"].update(timestamp="2026-11-21T11:00:00Z"), "data.timestamp"),
])
async def test_a_bad_attribute_is_a_400_naming_it(enforcer, http, redis, change, field):
    t = await provision(redis)
    doc = cloudevent(t.api_key)
    change(doc)
    r = await post(http, enforcer, doc)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and r.json()["message"].startswith(field), r.text


async def test_over_the_plans_maximum_is_422_and_other_media_types_415(enforcer, http, redis):
    t = await provision(redis)
    doc = cloudevent(t.api_key)
    doc["data"]["measurements"][0]["value"] = 10**12
    r = await post(http, enforcer, doc)
    assert (r.status_code, r.json()["field"]) == (422, "data.measurements[0].value"), r.text
    r = await post(http, enforcer, cloudevent(t.api_key), "application/cloudevents+xml")
    assert r.status_code == 415 and "application/cloudevents+json" in r.json()["message"]
    r = await post(http, enforcer, [cloudevent(t.api_key)], CE)  # a batch sent as one event
    assert r.status_code == 400, r.text
