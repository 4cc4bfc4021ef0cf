"""The lifecycle over the admin API (ETag / If-Match, 412/428, audit by token), and `suspended`
through the real enforcer: a suspended customer's checks are DENY, an archived one's keys 401."""
from __future__ import annotations

import hashlib

import httpx

from control.accounts import api_keys
from tests.control.conftest import TOKEN, plan_text, uid
from tests.tenants import check_body

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACTOR = "admin:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]


async def _etag(client, cid: str) -> str:
    r = await client.get(f"/admin/customers/{cid}", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{r.json()["version"]}"'
    return r.headers["etag"]


async def test_patch_needs_the_current_etag(client, customer_id):
    etag = await _etag(client, customer_id)
    r = await client.patch(f"/admin/customers/{customer_id}", json={"spend_cap": "75.5"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (428, "version")
    r = await client.patch(f"/admin/customers/{customer_id}", json={"spend_cap": "75.5"},
                           headers={**AUTH, "If-Match": etag})
    assert r.status_code == 200, r.text
    assert (r.json()["spend_cap"], r.headers["etag"]) == ("75.50", '"2"')
    # the second operator, with what it read before: 412, naming the field
    r = await client.patch(f"/admin/customers/{customer_id}", json={"name": "Other"}, headers={**AUTH, "If-Match": etag})
    assert (r.status_code, r.json()["field"]) == (412, "version")
    # `version` in the body works too; both given must agree
    r = await client.patch(f"/admin/customers/{customer_id}", json={"name": "Acme Ltd", "version": 2}, headers=AUTH)
    assert (r.status_code, r.json()["name"]) == (200, "Acme Ltd")
    r = await client.patch(f"/admin/customers/{customer_id}", json={"name": "X", "version": 3},
                           headers={**AUTH, "If-Match": '"2"'})
    assert (r.status_code, r.json()["field"]) == (422, "version")
    r = await client.patch(f"/admin/customers/{customer_id}", json={"billing_mode": "barter", "version": 3}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, "billing_mode")

    r = await client.get(f"/admin/customers/{customer_id}/audit", headers=AUTH)
    entries = r.json()["entries"]
    assert [(e["action"], e["version"], e["actor"]) for e in entries] == [("update", 3, ACTOR), ("update", 2, ACTOR)]
    r = await client.get(f"/admin/customers/{customer_id}/audit?limit=1&before_id={entries[0]['id']}", headers=AUTH)
    assert [e["version"] for e in r.json()["entries"]] == [2]


async def test_plan_change_over_http(client, pg, redis, plan_id, customer_id):
    new = uid("plan")
    r = await client.post("/admin/plans", content=plan_text(new),
                          headers={**AUTH, "Content-Type": "application/yaml"})
    assert r.status_code == 201
    r = await client.post(f"/admin/customers/{customer_id}/plan-change", json={"plan_id": new},
                          headers={**AUTH, "If-Match": '"1"'})
    assert r.status_code == 200, r.text
    assert (r.json()["plan_id"], r.json()["pending_plan_change"]["plan_id"]) == (plan_id, new)
    r = await client.post(f"/admin/customers/{customer_id}/plan-change",
                          json={"plan_id": new, "effective": "now", "version": 2}, headers=AUTH)
    assert (r.status_code, r.json()["plan_id"], r.json()["pending_plan_change"]) == (200, new, None)
    r = await client.post(f"/admin/customers/{customer_id}/plan-change", json={"plan_id": new, "effective": "soon"},
                          headers={**AUTH, "If-Match": '"3"'})
    assert (r.status_code, r.json()["field"]) == (422, "effective")


async def test_suspended_checks_are_denied_by_the_real_enforcer(client, pg, redis, enforcer, customer_id):
    http = httpx.AsyncClient(timeout=10)
    key = (await api_keys.create_api_key(pg, redis, customer_id))["api_key"]
    await client.post(f"/admin/customers/{customer_id}/wallet/topups", json={"amount": "5"}, headers=AUTH)

    async def check():
        return await http.post(f"{enforcer.url}/v1/check", json=check_body(key, requests=1, input_tokens=10))

    assert (await check()).status_code == 200
    r = await client.post(f"/admin/customers/{customer_id}/suspend", headers={**AUTH, "If-Match": '"1"'})
    assert (r.status_code, r.json()["status"], r.headers["etag"]) == (200, "suspended", '"2"')
    r = await check()
    assert (r.status_code, r.json()["decision"], r.json()["reason"]) == (429, "DENY", "suspended")
    assert r.headers["x-tollgate-reason"] == "suspended" and "retry-after" not in r.headers
    r = await client.post(f"/admin/customers/{customer_id}/reactivate", headers={**AUTH, "If-Match": '"2"'})
    assert r.status_code == 200
    assert (await check()).status_code == 200
    r = await client.post(f"/admin/customers/{customer_id}/archive", json={"version": 3}, headers=AUTH)
    assert (r.status_code, r.json()["status"]) == (200, "archived")
    assert (await check()).status_code == 401  # its keys were revoked
    r = await client.post(f"/admin/customers/{customer_id}/suspend", headers={**AUTH, "If-Match": '"4"'})
    assert (r.status_code, r.json()["field"]) == (409, "status")
    r = await client.get("/admin/customers", headers=AUTH)
    assert customer_id not in [c["id"] for c in r.json()["customers"]]
    await http.aclose()
