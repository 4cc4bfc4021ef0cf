"""The preview equals the invoice the close then writes; invoices and their sources, the trace by
correlation id, tier transitions and holds, dead letters (list, replay through the bus), and the
customer-scoped access with the customer's own API key."""
from __future__ import annotations

import orjson

from control.accounts import api_keys
from rater import periods
from tests.rater.conftest import raw, usage
from tests.rater.test_periods import LAST, LAST_PERIOD, LAST_TS, events_for, sample_plan
from tests.read.conftest import ADMIN
from tollgate.keys import EVENTS_STREAM
from tollgate.money import to_micros


async def test_preview_is_the_invoice_the_close_writes(pg, redis, client, pipeline, make_customer):
    text = sample_plan("hybrid")
    c = await make_customer(text, wallet_micros=3_000_000)
    evs = events_for(c)
    assert (await pipeline.process_raw(raw(evs), now=LAST.timestamp())).rated == len(evs)

    # The preview as of the last period (the period is still current at `now`).
    from control.read.preview import preview  # noqa: PLC0415
    pv = await preview(pg, redis, c, now=LAST.timestamp())
    assert pv["period"] == LAST_PERIOD and pv["tier"] and pv["balance"]["currency"]
    assert to_micros(pv["projected_commit_true_up"]) > 0 and pv["next_tier"]["name"]
    spent = await pg.fetchval("SELECT sum(spend_micros)::int8 FROM processed_events WHERE customer_id = $1", c)
    assert to_micros(pv["spend_to_date"]) == spent
    assert to_micros(pv["total"]) == spent + to_micros(pv["close"]["total"])

    out = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert out[0].get("error") is None
    r = await client.get(f"/admin/customers/{c}/invoices", headers=ADMIN)
    assert r.status_code == 200, r.text
    [listed] = r.json()["invoices"]
    assert listed["total"] == pv["total"] and listed["period"] == LAST_PERIOD
    r = await client.get(f"/admin/invoices/{listed['invoice_id']}", headers=ADMIN)
    inv = r.json()
    billed = {(x["kind"], x["charge_id"], x["dimension_key"]): x["amount"] for x in inv["lines"]
              if x["kind"] in ("usage", "metered", "flat", "percentage")}
    previewed = {(x["kind"], x["charge_id"], x["dimension_key"]): x["amount"] for x in pv["lines"]
                 if x["kind"] in ("usage", "metered", "flat", "percentage")}
    assert billed == previewed

    # Each usage line down to the correlation ids, paged.
    line = next(x for x in inv["lines"] if x["kind"] == "usage" and x["ledger_lines"] >= 2)
    url = f"/admin/invoices/{inv['invoice_id']}/lines/{line['line_no']}/sources"
    first = (await client.get(url, params={"limit": 1}, headers=ADMIN)).json()
    rest = (await client.get(url, params={"limit": 1000, **first["next"]}, headers=ADMIN)).json()
    sources = first["sources"] + rest["sources"]
    assert len(sources) == line["ledger_lines"] and rest["next"] is None
    assert {s["correlation_id"] for s in sources} <= {e["correlation_id"] for e in evs}
    assert sum(to_micros(s["amount"]) for s in sources) == to_micros(line["amount"])
    assert (await client.get(f"/admin/invoices/{inv['invoice_id']}/lines/999/sources", headers=ADMIN)).status_code == 404
    assert (await client.get("/admin/invoices/inv_nope", headers=ADMIN)).status_code == 404

    # The period reset is a tier transition.
    r = await client.get(f"/admin/customers/{c}/tier-transitions", headers=ADMIN)
    assert r.status_code == 200 and all(t["reason"] in ("promotion", "period_reset") for t in r.json()["tier_transitions"])


async def test_trace_by_correlation_id(pg, redis, client, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for())
    ev = usage(c, 1200, 300, hold_id="hold_t1")
    decision = {"kind": "decision", "id": "dec_" + ev["id"], "customer_id": c, "hold_id": "hold_t1",
                "request_id": ev["correlation_id"], "decision": "ALLOW", "estimate_micros": 50_000,
                "timestamp": ev["timestamp"], "estimate": {"input_tokens": 1500}}
    await pipeline.process_raw(raw([decision]))
    r = await client.get(f"/admin/customers/{c}/holds", headers=ADMIN)
    assert [h["hold_id"] for h in r.json()["holds"]] == ["hold_t1"]
    await pipeline.process_raw(raw([ev]))
    r = await client.get(f"/admin/trace/{ev['correlation_id']}", headers=ADMIN)
    assert r.status_code == 200, r.text
    t = r.json()
    assert [h["hold_id"] for h in t["holds"]] == ["hold_t1"] and t["holds"][0]["amount"] == "0.05"
    [e] = t["events"]
    assert e["event_id"] == ev["id"] and e["settlement"]["settle_seq"] == 1
    assert [ln["metric"] for ln in e["ledger_lines"]] == ["input_tokens", "output_tokens"]
    assert sum(to_micros(ln["amount"]) for ln in e["ledger_lines"]) == to_micros(e["settlement"]["spend"])
    assert (await client.get("/admin/trace/req_unknown", headers=ADMIN)).status_code == 404


async def test_dead_letters_listed_and_replayed_through_the_bus(pg, redis, client, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for())
    bad = usage(c, 1, 1, extra=[{"metric": "no_such_metric", "value": 1}])
    res = await pipeline.process_raw(raw([bad]))
    assert [d.reason for d in res.dead] == ["unknown_metric"]
    r = await client.get("/admin/dead-letters", params={"customer_id": c}, headers=ADMIN)
    [letter] = r.json()["dead_letters"]
    assert letter["event_id"] == bad["id"] and letter["reason"] == "unknown_metric"

    r = await client.post("/admin/dead-letters/replay", json={"ids": [letter["id"], 10**12]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"replayed": [letter["id"]], "unreadable": [], "not_open": [10**12]}
    entries = await redis.xrange(EVENTS_STREAM)
    assert any(orjson.loads(f[b"event"])["id"] == bad["id"] for _, f in entries)
    r = await client.get("/admin/dead-letters", params={"customer_id": c, "status": "replayed"}, headers=ADMIN)
    assert [x["id"] for x in r.json()["dead_letters"]] == [letter["id"]]
    for body in ({"ids": []}, {"ids": ["x"]}, {"ids": 3}, {}):
        r = await client.post("/admin/dead-letters/replay", json=body, headers=ADMIN)
        assert r.status_code == 422 and r.json()["field"] == "ids"


async def test_customer_reads_its_own_usage_preview_and_invoices_with_its_api_key(pg, redis, client, pipeline,
                                                                                   make_customer):
    text = sample_plan("postpaid")
    c = await make_customer(text)
    other = await make_customer(text)
    key = await api_keys.create_api_key(pg, redis, c)
    evs = events_for(c)
    await pipeline.process_raw(raw(evs + events_for(other)), now=LAST.timestamp())
    await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c, other])
    mine = {"Authorization": f"Bearer {key['api_key']}"}

    r = await client.get("/v1/customer/usage", params={"from": LAST_TS[:10], "to": LAST_TS[:10] + "T23:59:59Z",
                                                       "group_by": "model"}, headers=mine)
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == c
    assert {x["metric"]: x["quantity"] for x in r.json()["totals"]}["input_tokens"] == \
        sum(m["value"] for e in evs for m in e["measurements"] if m["metric"] == "input_tokens")
    r = await client.get("/v1/customer/preview", headers=mine)
    assert r.status_code == 200 and r.json()["customer_id"] == c
    r = await client.get("/v1/customer/invoices", headers=mine)
    [inv] = r.json()["invoices"]
    assert inv["customer_id"] == c
    assert (await client.get(f"/v1/customer/invoices/{inv['invoice_id']}", headers=mine)).status_code == 200
    theirs = f"inv_{LAST_PERIOD}_{other}"
    assert (await client.get(f"/admin/invoices/{theirs}", headers=ADMIN)).status_code == 200
    assert (await client.get(f"/v1/customer/invoices/{theirs}", headers=mine)).status_code == 404

    # The admin token is not a customer key, a customer key is not the admin token; revoked: 401.
    assert (await client.get("/v1/customer/usage", headers=ADMIN)).status_code == 401
    assert (await client.get(f"/admin/customers/{c}/usage", headers=mine)).status_code == 401
    assert (await client.get("/v1/customer/usage")).status_code == 401
    await api_keys.revoke_api_key(pg, redis, key["id"])
    r = await client.get("/v1/customer/preview", headers=mine)
    assert r.status_code == 401 and r.json()["field"] == "authorization"
