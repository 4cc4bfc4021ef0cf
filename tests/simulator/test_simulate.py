"""The billing simulator: with the current plan it reproduces the invoices to the micro; with a
draft it gives what the pure stages give for the same events under the draft; over HTTP and the
CLI; bad input is a 4xx naming the field."""
from __future__ import annotations

import json
from decimal import Decimal

import yaml

from control.simulator.simulate import simulate
from control.accounts import plans
from rater import periods, rollups
from rater.pipeline import decompose
from tests.rater.conftest import PERIOD, raw, usage
from tests.rater.test_periods import LAST_PERIOD, LAST_TS, events_for, sample_plan
from tests.simulator.conftest import ADMIN
from tollgate.money import format_micros
from tollgate.plans import load_plan_text
from tollgate.rating.stages.pipeline import run_batch, run_event

COMMIT_UP = ('minimum_commit: "25.00"', 'minimum_commit: "30.00"')  # +5.00, less 10 %, plus 8.25 % tax
CHEAPER_OPUS = ('match: {model: claude-opus-4-1}\n        unit_price: "0.000015"',
                'match: {model: claude-opus-4-1}\n        unit_price: "0.000012"')


def more_events(c: str) -> list[dict]:
    """events_for plus a failed call, a third model and an event with an outcome and other metrics."""
    return events_for(c) + [
        usage(c, 7_000, 900, ts=LAST_TS, properties={"model": "claude-haiku-4-5", "status": "error"}),
        usage(c, 3_000, 100, cache=50_000, ts=LAST_TS, model="claude-haiku-4-5",
              extra=[{"metric": "contract_reviewed", "value": 2}, {"metric": "requests", "value": 3}]),
    ]


def batch_of(plan_text: str, evs: list[dict], mode: str):
    """The period under `plan_text` by the pure stages alone, event by event: the expected figure."""
    plan = load_plan_text(plan_text)
    cum = {}
    for e in evs:
        cum = run_event(plan, e["properties"], decompose(e["measurements"]), cum, billing_mode=mode).cumulative_after
    return run_batch(plan, cum, billing_mode=mode)


async def rated_and_closed(pg, redis, pipeline, make_customer, text: str, mode: str, wallet: int = 0):
    c = await make_customer(text, wallet_micros=wallet)
    idle = await make_customer(text)  # no usage: the recurring fee, the commit
    evs = more_events(c)
    res = await pipeline.process_raw(raw(evs))
    assert (res.rated, res.dead) == (len(evs), [])
    out = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c, idle])
    assert [o.get("error") for o in out] == [None, None]
    return c, idle, evs


async def test_the_current_plan_reproduces_every_invoice_line_by_line(pg, redis, pipeline, make_customer):
    for mode, wallet in (("postpaid", 0), ("hybrid", 3_000_000)):
        text = sample_plan(mode)
        c, idle, _ = await rated_and_closed(pg, redis, pipeline, make_customer, text, mode, wallet)
        out = await simulate(pg, plans.validate(yaml.safe_load(text)), LAST_PERIOD, [c, idle])
        assert [x["customer_id"] for x in out["customers"]] == sorted([c, idle])
        for x in out["customers"]:
            inv = await pg.fetchrow("SELECT * FROM invoices WHERE customer_id = $1 AND period = $2",
                                    x["customer_id"], LAST_PERIOD)
            assert x["current_source"] == "invoice" and x["error"] is None and x["unpriced"] == {}
            assert x["current_total"] == x["draft_total"] == format_micros(inv["total_micros"])
            assert x["difference"] == "0.00"
            for line in x["lines"]:  # every line matches: usage by model, metered, flat, true-up, discount, tax
                assert line["current"] == line["draft"], line
        kinds = {ln["kind"] for x in out["customers"] for ln in x["lines"]}
        assert kinds >= {"usage", "metered", "flat", "percentage", "true_up", "discount"}
        busy = next(x for x in out["customers"] if x["customer_id"] == c)
        assert any(ln["dimension_key"] == "override0" for ln in busy["lines"])  # the opus override
        assert out["totals"]["difference"] == "0.00"
        async with pg.acquire() as conn:  # the same from the compacted daily rollups as from the deltas
            assert await rollups.compact(conn) > 0
        assert await simulate(pg, plans.validate(yaml.safe_load(text)), LAST_PERIOD, [c, idle]) == out


async def test_a_draft_price_is_what_the_pure_stages_give_for_the_same_events(pg, redis, pipeline, make_customer):
    text = sample_plan("postpaid")
    c, idle, evs = await rated_and_closed(pg, redis, pipeline, make_customer, text, "postpaid")
    draft_text = text.replace(*CHEAPER_OPUS).replace('minimum_commit: "25.00"', 'minimum_commit: "40.00"')
    assert draft_text.count("0.000012") == 2  # the opus price changed (and the output tier kept)
    draft = plans.validate(yaml.safe_load(draft_text))
    out = await simulate(pg, draft, LAST_PERIOD, [c, idle])
    busy = next(x for x in out["customers"] if x["customer_id"] == c)
    want = batch_of(draft_text, evs, "postpaid")
    assert busy["draft_total"] == format_micros(want.total_micros)
    inv = await pg.fetchval("SELECT total_micros FROM invoices WHERE customer_id = $1 AND period = $2", c, LAST_PERIOD)
    assert busy["current_total"] == format_micros(inv)
    assert busy["difference"] == format_micros(want.total_micros - inv) != "0.00"
    opus = next(ln for ln in busy["lines"] if ln["charge_id"] == "input_tokens" and ln["dimension_key"] == "override0")
    assert opus["draft"] != opus["current"]
    assert Decimal(out["totals"]["draft"]) == sum(Decimal(x["draft_total"]) for x in out["customers"])


async def test_a_draft_with_other_charges_rekeys_the_usage(pg, redis, pipeline, make_customer):
    """The draft prices by model differently (its one override is sonnet: override0 was opus) and
    drops the outcome, and failed calls are not billed: the usage is keyed through the draft's own
    charges."""
    text = sample_plan("postpaid")
    c, _, evs = await rated_and_closed(pg, redis, pipeline, make_customer, text, "postpaid")
    doc = yaml.safe_load(text)
    doc["charges"] = [ch for ch in doc["charges"] if ch["id"] not in ("contract_reviewed",)]
    doc["charges"][0]["overrides"] = [{"match": {"model": "claude-sonnet-4-6"}, "unit_price": "0.000002"}]
    doc["charges"][3]["bill_failed"] = False
    draft_text = yaml.safe_dump(doc)
    out = await simulate(pg, plans.validate(doc), LAST_PERIOD, [c])
    (x,) = out["customers"]
    evs_known = [{**e, "measurements": [m for m in e["measurements"] if m["metric"] != "contract_reviewed"]}
                 for e in evs]
    assert x["draft_total"] == format_micros(batch_of(draft_text, evs_known, "postpaid").total_micros)
    assert x["unpriced"] == {"contract_reviewed": 3}
    haiku = next(ln for ln in x["lines"] if ln["charge_id"] == "input_tokens" and ln["dimension_key"] == "override1")
    assert haiku["draft"] == "0.00" != haiku["current"]  # haiku now pays the default price


async def test_an_open_period_compares_with_its_cumulatives(pg, redis, pipeline, make_customer, client):
    text = sample_plan("postpaid")
    c = await make_customer(text)
    await pipeline.process_raw(raw([usage(c, 20_000, 3_000, model="claude-opus-4-1")]))
    r = await client.post(f"/admin/simulate?period={PERIOD}&customers={c}", content=text,
                          headers={**ADMIN, "Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    (x,) = r.json()["customers"]
    preview = (await client.get(f"/admin/customers/{c}/preview", headers=ADMIN)).json()
    assert x["current_source"] == "cumulatives"
    assert x["current_total"] == x["draft_total"] == preview["total"]


async def test_admin_api_json_wrapper_and_default_customers(pg, redis, pipeline, make_customer, client):
    text = sample_plan("postpaid")
    c, idle, _ = await rated_and_closed(pg, redis, pipeline, make_customer, text, "postpaid")
    doc = yaml.safe_load(text)
    await pg.execute("UPDATE customers SET created_at = created_at - interval '62 days' WHERE id = ANY($1::text[])",
                     [c, idle])
    r = await client.post("/admin/simulate", json={"plan": doc, "period": LAST_PERIOD}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(x["customer_id"] for x in body["customers"]) == sorted([c, idle])  # the plan's customers
    invoiced = await pg.fetchval("SELECT sum(total_micros)::int8 FROM invoices WHERE customer_id = ANY($1::text[])"
                                 " AND period = $2", [c, idle], LAST_PERIOD)
    assert body["totals"] == {"customers": 2, "current": format_micros(invoiced), "draft": format_micros(invoiced),
                              "difference": "0.00"}
    dearer = yaml.safe_load(text.replace(*COMMIT_UP))
    r = await client.post(f"/admin/simulate?period={LAST_PERIOD}&customers={c}", json=dearer, headers=ADMIN)
    assert r.status_code == 200 and r.json()["totals"]["difference"] == "4.87125", r.text


async def test_bad_input_is_a_4xx_naming_the_field(pg, redis, make_customer, client):
    text = sample_plan("postpaid")
    c = await make_customer(text)
    yaml_h = {**ADMIN, "Content-Type": "application/yaml"}

    async def post(url: str, body: str, headers=yaml_h):
        return await client.post(url, content=body, headers=headers)

    cases = [
        (await post(f"/admin/simulate?period={LAST_PERIOD}", "id: [unclosed"), 400, "body"),
        (await post(f"/admin/simulate?period={LAST_PERIOD}", text.replace("model: per_unit", "model: nope", 1)),
         422, "charges[0].model"),
        (await post(f"/admin/simulate?period={LAST_PERIOD}", "- a list"), 422, "plan"),
        (await post("/admin/simulate", text), 422, "period"),
        (await post("/admin/simulate?period=2026-11", text), 422, "period"),
        (await post("/admin/simulate?period=209901", text), 422, "period"),
        (await post("/admin/simulate?period=000001", text), 422, "period"),
        (await post(f"/admin/simulate?period={LAST_PERIOD}&customers={c},cus_nobody", text), 404, "customers"),
        (await post(f"/admin/simulate?period={LAST_PERIOD}&customers=bad%20id", text), 422, "customers"),
        (await post(f"/admin/simulate?period={LAST_PERIOD}&customers={c}", text.replace("currency: USD", "currency: EUR")),
         422, "currency"),
        (await post(f"/admin/simulate?period={LAST_PERIOD}", text, {**ADMIN, "Content-Type": "text/plain"}),
         415, "content-type"),
        (await client.post("/admin/simulate", json={"plan": {"id": "x"}, "period": LAST_PERIOD, "extra": 1},
                           headers=ADMIN), 422, "extra"),
    ]
    for r, status, field in cases:
        assert (r.status_code, r.json().get("field")) == (status, field), r.text
    assert (await post(f"/admin/simulate?period={LAST_PERIOD}", text, {"Content-Type": "application/yaml"})
            ).status_code == 401


async def test_cli_prints_the_comparison_and_json(cli, pg, redis, pipeline, make_customer, tmp_path):  # noqa: F811
    text = sample_plan("postpaid")
    c, idle, _ = await rated_and_closed(pg, redis, pipeline, make_customer, text, "postpaid")
    draft = tmp_path / "draft.yaml"
    draft.write_text(text.replace(*COMMIT_UP))
    got = json.loads(cli("--json", "simulate", "--plan", str(draft), "--period", LAST_PERIOD,
                         "--customers", f"{c},{idle}").stdout)
    assert [x["customer_id"] for x in got["customers"]] == sorted([c, idle])
    busy = next(x for x in got["customers"] if x["customer_id"] == c)
    assert busy["difference"] == "4.87125" and busy["current_source"] == "invoice"
    assert got["totals"]["difference"] == "9.7425"
    human = cli("simulate", "--plan", str(draft), "--period", LAST_PERIOD, "--customers", c).stdout
    assert c in human and "DIFFERENCE" in human and busy["draft_total"] in human
    assert "input_tokens: usage [override0]" in human
    bad = cli("simulate", "--plan", str(tmp_path / "missing.yaml"), "--period", LAST_PERIOD, expect=2)
    assert "plan" in bad.stderr + bad.stdout
    bad = cli("simulate", "--plan", str(draft), "--period", "1999", expect=2)
    assert "period" in bad.stderr + bad.stdout


async def test_units_carried_in_by_rollover_count_in_the_draft(pg, redis, pipeline, make_customer):
    """P-2 leaves 6,000 of its 10,000 included requests unused: 5,000 (the cap) are carried into
    P-1, whose 17,000 requests are then 2,000 beyond its quota. A draft without rollover has none."""
    from datetime import timedelta  # noqa: PLC0415

    from tests.rater.test_rollover import LAST, plan_text, requests  # noqa: PLC0415

    before = (LAST.replace(day=1) - timedelta(days=1))
    text = plan_text("postpaid")
    c = await make_customer(text)
    res = await pipeline.process_raw(raw([requests(c, 4_000, before.strftime("%Y-%m-%dT12:00:00Z"))]))
    assert res.rated == 1 and not res.dead
    [out] = await periods.close_period(pg, redis, before.strftime("%Y%m"), customer_ids=[c])
    assert out.get("error") is None
    await pipeline.process_raw(raw([requests(c, 17_000, LAST_TS)]))
    [out] = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert out.get("error") is None

    got = await simulate(pg, plans.validate(yaml.safe_load(text)), LAST_PERIOD, [c])
    (x,) = got["customers"]
    assert x["current_total"] == x["draft_total"] == "4.40"  # 2,000 x 0.002, plus the 10 % fee
    no_rollover = yaml.safe_load(text)
    del no_rollover["charges"][0]["rollover"]
    (y,) = (await simulate(pg, plans.validate(no_rollover), LAST_PERIOD, [c]))["customers"]
    assert (y["draft_total"], y["difference"]) == ("15.40", "11.00")  # 7,000 beyond
