"""Odd bytes in ids, names and query strings are 4xx, never a 500 from PostgreSQL."""
import pytest

from tests.control.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", [
    "/admin/customers/%00", "/admin/customers/a%00b/keys", "/admin/customers/%00/wallet",
    "/admin/plans/%00", "/admin/customers/" + "x" * 500, "/admin/customers/%F0%9F%92%B8/wallet",
])
async def test_odd_ids_in_paths_are_404(client, path):
    r = await client.get(path, headers=AUTH)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("path", ["/admin/keys/%00/revoke", "/admin/customers/%00/keys"])
async def test_odd_ids_in_post_paths_are_404(client, path):
    r = await client.post(path, headers=AUTH)
    assert r.status_code == 404, r.text


async def test_nul_in_topup_path_and_body(client, customer_id):
    r = await client.post("/admin/customers/%00/wallet/topups", json={"amount": "1"}, headers=AUTH)
    assert r.status_code == 404
    r = await client.post(f"/admin/customers/{customer_id}/wallet/topups", json={"amount": "1", "note": "a\u0000b"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "note"


async def test_nul_in_names_and_queries(client, plan_id):
    r = await client.post("/admin/customers", json={"name": "a\u0000b", "plan_id": plan_id}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "name"
    for q in ({"after": "\u0000"}, {"plan_id": "\u0000"}):
        r = await client.get("/admin/customers", params=q, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] in q
