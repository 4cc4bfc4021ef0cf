import json

import httpx
import pytest

from control.http.app import create_app
from control.http.messages import MAX_BODY
from tests.control.conftest import TOKEN, plan_text, uid
from tollgate.config import Settings
from tollgate.keys import CustomerKeys, api_key_hash, api_key_record

AUTH = {"Authorization": f"Bearer {TOKEN}"}
YAML = {**AUTH, "Content-Type": "application/yaml"}


async def _plan(client) -> str:
    pid = uid("plan")
    r = await client.post("/admin/plans", content=plan_text(pid), headers=YAML)
    assert r.status_code == 201, r.text
    return pid


async def _customer(client, plan_id: str) -> str:
    r = await client.post("/admin/customers", json={"name": "Acme", "plan_id": plan_id}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}])
async def test_bad_or_missing_token_is_401(client, headers):
    for method, path in [("GET", "/admin/plans"), ("POST", "/admin/customers"), ("POST", "/admin/keys/k/revoke")]:
        r = await client.request(method, path, headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "authorization"
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_no_token_configured_disables_every_route(pg_dsn, redis_server, pg, redis):
    app = create_app(Settings(database_url=pg_dsn, redis_url=redis_server.url, admin_token=""), db=pg, redis=redis)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as c:
        for method, path in [("GET", "/admin/plans"), ("POST", "/admin/plans"), ("GET", "/admin/customers/x/wallet")]:
            r = await c.request(method, path, headers={"Authorization": "Bearer "})
            assert r.status_code == 503
            assert r.json()["error"] == "admin API disabled: set TOLLGATE_ADMIN_TOKEN"


async def test_plans(client):
    pid = uid("plan")
    r = await client.post("/admin/plans", content=plan_text(pid), headers=YAML)
    assert r.status_code == 201 and r.json()["version"] == 1
    r = await client.post("/admin/plans", content=plan_text(pid), headers=YAML)
    assert r.status_code == 200 and r.json()["changed"] is False
    import yaml

    doc = yaml.safe_load(plan_text(pid))
    doc["limits"]["tokens_per_minute"] = 5000
    r = await client.post("/admin/plans", json=doc, headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = await client.get(f"/admin/plans/{pid}", headers=AUTH)
    assert r.status_code == 200 and r.json()["document"]["limits"]["tokens_per_minute"] == 5000
    assert pid in [p["id"] for p in (await client.get("/admin/plans", headers=AUTH)).json()["plans"]]
    r = await client.get("/admin/plans/nope", headers=AUTH)
    assert r.status_code == 404 and r.json()["field"] == "plan_id"


@pytest.mark.parametrize(("body", "ctype", "status", "field"), [
    ('{"id": "x", ', "application/json", 400, "body"),
    ("id: [unclosed", "application/yaml", 400, "document"),
    (b"\xff\xfe", "text/yaml", 400, "body"),
    ("id: x", "text/plain", 415, "content-type"),
    ("id: x", "", 415, "content-type"),
    ('["a"]', "application/json", 422, "document"),
    ("SAMPLE-float", "application/yaml", 422, "charges[0].unit_price"),
    ("SAMPLE-tiers", "application/x-yaml", 422, "tiers[2].multiplier"),
])
async def test_bad_plans_are_4xx_naming_the_field(client, body, ctype, status, field):
    if body == "SAMPLE-float":
        body = plan_text(uid("plan"), {'unit_price: "0.000003"': "unit_price: 0.000003"})
    elif body == "SAMPLE-tiers":
        body = plan_text(uid("plan"), {"multiplier: 10}": "multiplier: -3}"})
    r = await client.post("/admin/plans", content=body, headers={**AUTH, "Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


async def test_body_over_one_mib_is_413(client):
    big = "# " + "x" * MAX_BODY + "\n"
    r = await client.post("/admin/plans", content=big, headers=YAML)
    assert r.status_code == 413 and r.json()["field"] == "body"

    async def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(5):
            yield b"#" * (MAX_BODY // 4)
    r = await client.post("/admin/plans", content=chunks(), headers=YAML)
    assert r.status_code == 413


async def test_customers(client):
    pid = await _plan(client)
    cid = uid("cust")
    r = await client.post("/admin/customers", headers=AUTH,
                          json={"id": cid, "name": "Beta", "plan_id": pid, "billing_mode": "hybrid", "spend_cap": "20"})
    assert r.status_code == 201, r.text
    assert r.json()["spend_cap"] == "20.00" and r.json()["billing_mode"] == "hybrid"
    r = await client.post("/admin/customers", headers=AUTH, json={"id": cid, "name": "Again", "plan_id": pid})
    assert r.status_code == 409 and r.json()["field"] == "id"
    r = await client.get(f"/admin/customers/{cid}", headers=AUTH)
    assert r.status_code == 200 and r.json()["wallet"]["balance"] == "0.00"
    r = await client.get("/admin/customers", params={"plan_id": pid}, headers=AUTH)
    assert [c["id"] for c in r.json()["customers"]] == [cid]
    assert (await client.get("/admin/customers/cus_nobody", headers=AUTH)).status_code == 404


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"name": "A", "plan_id": "no_such_plan"}, 422, "plan_id"),
    ({"name": "A"}, 422, "plan_id"),
    ({"plan_id": "PLAN"}, 422, "name"),
    ({"name": "A", "plan_id": "PLAN", "spend_cap": 10.5}, 422, "spend_cap"),
    ({"name": "A", "plan_id": "PLAN", "billing_mode": 3}, 422, "billing_mode"),
    ({"name": "A", "plan_id": "PLAN", "colour": "red"}, 422, "colour"),
    ({"name": ["A"], "plan_id": "PLAN"}, 422, "name"),
    ([1, 2], 400, "body"),
    ("not json", 400, "body"),
])
async def test_bad_customers_are_4xx_naming_the_field(client, body, status, field):
    pid = await _plan(client)
    if isinstance(body, dict):
        body = {k: (pid if v == "PLAN" else v) for k, v in body.items()}
    raw = body if isinstance(body, str) else json.dumps(body)
    r = await client.post("/admin/customers", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


async def test_query_and_content_type_errors(client):
    r = await client.get("/admin/customers", params={"limit": "lots"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "limit"
    r = await client.get("/admin/customers", params={"limit": "5000"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "limit"
    r = await client.post("/admin/customers", content="name=a", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = await client.get("/admin/nothing-here", headers=AUTH)
    assert r.status_code == 404 and "error" in r.json()
    r = await client.delete("/admin/plans", headers=AUTH)
    assert r.status_code == 405 and "error" in r.json()


async def test_keys_and_wallet(client, redis):
    cid = await _customer(client, await _plan(client))
    r = await client.post(f"/admin/customers/{cid}/keys", headers=AUTH)
    assert r.status_code == 201
    key, key_id = r.json()["api_key"], r.json()["id"]
    assert await redis.hget(api_key_record(api_key_hash(key)), "status") == b"active"
    listed = (await client.get(f"/admin/customers/{cid}/keys", headers=AUTH)).json()["api_keys"]
    assert [k["id"] for k in listed] == [key_id] and key not in json.dumps(listed)

    r = await client.post(f"/admin/keys/{key_id}/revoke", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert await redis.hget(api_key_record(api_key_hash(key)), "status") == b"revoked"
    assert (await client.post("/admin/keys/key_nothing/revoke", headers=AUTH)).status_code == 404
    assert (await client.post("/admin/customers/cus_nobody/keys", headers=AUTH)).status_code == 404

    url = f"/admin/customers/{cid}/wallet/topups"
    r = await client.post(url, json={"amount": "12.50", "id": "t-1"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["balance"] == "12.50"
    r = await client.post(url, json={"amount": "12.50", "id": "t-1"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["credited"] is False
    r = await client.post(url, json={"amount": 1.25}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "amount"
    r = await client.post(url, json={"amount": "0"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "amount"
    r = await client.post(url, json={"amount": "1", "id": "t-1"}, headers=AUTH)
    assert r.status_code == 409 and r.json()["field"] == "id"
    assert await redis.get(CustomerKeys(cid).wallet) == b"12500000"
    r = await client.get(f"/admin/customers/{cid}/wallet", headers=AUTH)
    assert r.status_code == 200 and r.json()["balance"] == "12.50" and r.json()["topups_total"] == "12.50"
    assert (await client.post("/admin/customers/cus_nobody/wallet/topups", json={"amount": "1"}, headers=AUTH)).status_code == 404


async def test_unreachable_backend_is_503_not_500(pg_dsn, pg):
    from tollgate.local_services import free_port

    app = create_app(Settings(database_url=pg_dsn, redis_url=f"redis://127.0.0.1:{free_port()}/0", admin_token=TOKEN), db=pg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as c:
        r = await c.post("/admin/plans", content=plan_text(uid("plan")), headers=YAML)
        assert r.status_code == 503 and "backend unavailable" in r.json()["error"]
    await app.state.backends.close()
